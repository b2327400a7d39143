"""The rl.rollout section and the vLLM plumbing that needs no vLLM: settings, weight-sync dispatch, ECG inputs.

The end-to-end run through a colocated vLLM engine is in tests/test_vllm_rl.py (the vLLM environment).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from trl.generation.vllm_generation import VLLMGeneration

from qoqmed.train.rl import make_grpo_config
from qoqmed.train.settings import RLSettings
from qoqmed.train.vllm_rollouts import attach_vllm, merge_features, placeholder_runs, sync_weights

ECG_START, ECG_PAD, IMAGE_PAD = 7, 8, 5
PADS = frozenset({ECG_PAD, IMAGE_PAD})


def test_rollout_section_maps_onto_trl_and_rejects_bad_values(tmp_path):
    hf = make_grpo_config(RLSettings(), tmp_path, suppress_tokens=[3, 4])
    assert not hf.use_vllm and hf.generation_kwargs == {"suppress_tokens": [3, 4]}
    s = RLSettings(rollout={"engine": "vllm", "vllm_mode": "server", "server_url": "http://h:9000",
                            "importance_sampling": "token_truncate", "importance_sampling_clip_max": 2.0})
    cfg = make_grpo_config(s, tmp_path, suppress_tokens=[3, 4])
    assert (cfg.use_vllm, cfg.vllm_mode, cfg.vllm_server_base_url) == (True, "server", "http://h:9000")
    assert (cfg.vllm_importance_sampling_correction, cfg.vllm_importance_sampling_mode,
            cfg.vllm_importance_sampling_clip_max) == (True, "token_truncate", 2.0)
    # vLLM's SamplingParams has no suppress_tokens: the placeholders get the lowest logit bias instead
    assert cfg.generation_kwargs == {"logit_bias": {3: -100.0, 4: -100.0}}
    off = make_grpo_config(RLSettings(rollout={"engine": "vllm", "importance_sampling": None}), tmp_path)
    assert off.use_vllm and not off.vllm_importance_sampling_correction
    for bad, match in [({"engine": "sglang"}, "engine"), ({"vllm_mode": "remote"}, "vllm_mode"),
                       ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
                       ({"importance_sampling": "token"}, "importance_sampling"),
                       ({"importance_sampling_clip_min": 2.0, "importance_sampling_clip_max": 1.0}, "clip_min"),
                       ({"engin": "vllm"}, "rl.rollout")]:
        with pytest.raises(ValueError, match=match):
            RLSettings(rollout=bad)


def test_the_trl_vllm_internals_relied_on_exist():
    """TRL 1.16's vLLM backend as vllm_rollouts uses it; an upgrade that changes it must fail here first."""
    import inspect

    from trl import GRPOConfig

    assert list(inspect.signature(VLLMGeneration.sync_weights).parameters) == ["self"]
    assert list(inspect.signature(VLLMGeneration._iter_named_params).parameters) == ["self"]
    # server mode: the client's generate takes the features TRL computed, and posts through _post
    from trl.generation.vllm_client import VLLMClient

    assert {"prompts", "features"} <= set(inspect.signature(VLLMClient.generate).parameters)
    assert list(inspect.signature(VLLMClient._post).parameters) == ["self", "url", "kwargs"]
    assert {"prompts", "images", "num_generations"} <= set(inspect.signature(VLLMGeneration.generate).parameters)
    fields = set(GRPOConfig.__dataclass_fields__)
    assert {"use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_max_model_length",
            "vllm_tensor_parallel_size", "vllm_enable_sleep_mode", "vllm_server_base_url", "vllm_server_timeout",
            "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
            "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min"} <= fields


def test_without_vllm_the_dtype_patch_steps_aside():
    """Where vLLM is not installed the user gets TRL's message that it is missing, not an AttributeError here."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    from qoqmed.train.vllm_rollouts import engine_dtype

    with engine_dtype(torch.float32):
        pass


class _Runner:
    def __init__(self):
        self.reloads = []

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        self.reloads.append(([name for name, _ in weights_iterator], is_checkpoint_format))


class _LLM:
    def __init__(self):
        self.runner = _Runner()
        self.encoder_resets = 0
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=self.runner)), reset_encoder_cache=self._reset_encoder)
        self.cache_resets = 0
        self.prompts = None

    def reset_prefix_cache(self):
        self.cache_resets += 1

    def _reset_encoder(self):
        self.encoder_resets += 1

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        self.prompts = prompts
        return ["out"] * len(prompts)


class _Session:
    def __init__(self):
        self.posted = []

    def post(self, url):
        self.posted.append(url)
        return SimpleNamespace(raise_for_status=lambda: None)


def _generation(device: str, mode: str = "colocate", tied: bool = False):
    embed = torch.nn.Embedding(4, 2)
    head = torch.nn.Linear(2, 4, bias=False)
    if tied:
        head.weight = embed.weight
    model = SimpleNamespace(get_input_embeddings=lambda: embed, get_output_embeddings=lambda: head)
    return SimpleNamespace(mode=mode, accelerator=SimpleNamespace(device=torch.device(device), is_main_process=True),
                           model=model, llm=_LLM(), vllm_client=SimpleNamespace(base_url="http://srv", session=_Session()),
                           _iter_named_params=lambda: iter([("lm_head.weight", torch.zeros(2))]))


def test_cpu_sync_reloads_in_place_and_drops_the_prefix_cache(monkeypatch):
    gen = _generation("cpu")
    attach_vllm(gen, lambda: None, ECG_START, ECG_PAD, PADS)
    gen.sync_weights()
    runner = gen.llm.llm_engine.model_executor.driver_worker.model_runner
    assert runner.reloads == [(["lm_head.weight"], True)]
    assert (gen.llm.cache_resets, gen.llm.encoder_resets) == (1, 1)
    # elsewhere (a GPU, or a server) TRL's own sync runs; the engine still drops its encoder outputs
    calls = []
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: calls.append(self.mode))
    for device, mode, encoder_resets in (("meta", "colocate", 1), ("cpu", "server", 0)):
        other = _generation(device, mode)
        sync_weights(other)
        assert other.llm.runner.reloads == [] and other.llm.encoder_resets == encoder_resets
        assert other.vllm_client.session.posted == ([] if mode == "colocate" else ["http://srv/reset_encoder_cache"])
    assert calls == ["colocate", "server"]


def test_tied_embeddings_are_refused_on_cpu_where_the_packed_lm_head_would_go_stale():
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        attach_vllm(_generation("cpu", tied=True), lambda: None, ECG_START, ECG_PAD, PADS)
    attach_vllm(_generation("meta", tied=True), lambda: None, ECG_START, ECG_PAD, PADS)  # GPU: TRL's sync keeps the tie


def test_ecg_records_reach_vllm_with_their_prompts_and_placeholder_runs_are_cut_to_one():
    rows = None
    gen = _generation("cpu")
    attach_vllm(gen, lambda: rows, ECG_START, ECG_PAD, PADS)
    llm = gen.llm._llm
    gen.llm.generate([{"prompt_token_ids": [1, 2]}])
    assert llm.prompts == [{"prompt_token_ids": [1, 2]}]  # outside a rollout nothing is added
    one, two = torch.randn(1, 8, 20), torch.randn(2, 8, 20)
    rows = [torch.empty(0, 8, 20), one, two]
    ecg_block = [ECG_START, ECG_PAD, ECG_PAD, ECG_PAD, 9]
    prompts = [{"prompt_token_ids": [1, 2, 2]}, {"prompt_token_ids": [3, *ecg_block, 4]},
               {"prompt_token_ids": [*ecg_block, IMAGE_PAD, IMAGE_PAD, 6, *ecg_block],
                "multi_modal_data": {"image": "img"}}]
    gen.llm.generate(prompts)
    sent = llm.prompts
    assert sent[0] == {"prompt_token_ids": [1, 2, 2]}  # only placeholder runs are cut
    assert sent[1]["prompt_token_ids"] == [3, ECG_START, ECG_PAD, 9, 4]
    assert sent[2]["prompt_token_ids"] == [ECG_START, ECG_PAD, 9, IMAGE_PAD, 6, ECG_START, ECG_PAD, 9]
    assert len(sent[1]["multi_modal_data"]["ecg"]) == 1
    np.testing.assert_array_equal(sent[1]["multi_modal_data"]["ecg"][0], one[0].numpy())
    assert sent[2]["multi_modal_data"]["image"] == "img" and len(sent[2]["multi_modal_data"]["ecg"]) == 2
    np.testing.assert_array_equal(sent[2]["multi_modal_data"]["ecg"][1], two[1].numpy())
    rows = [one, one, one]
    with pytest.raises(RuntimeError, match="ECG block"):
        gen.llm.generate(prompts)
    rows = [one]
    with pytest.raises(RuntimeError, match="tensor_parallel_size"):
        gen.llm.generate(prompts)


def test_server_features_find_each_placeholder_run_and_merge_modalities():
    assert placeholder_runs([1, ECG_PAD, ECG_PAD, 2, ECG_PAD, IMAGE_PAD, ECG_PAD], ECG_PAD) == [
        {"offset": 1, "length": 2}, {"offset": 4, "length": 1}, {"offset": 6, "length": 1}]
    image = {"mm_hashes": {"image": ["h1"]}, "mm_placeholders": {"image": [{"offset": 9, "length": 4}]},
             "kwargs_data": None, "mm_metadata": {"image": ["m1"]}}
    ecg = {"mm_hashes": {"ecg": ["e1", "e2"]}, "mm_placeholders": {"ecg": [{"offset": 1, "length": 2}] * 2},
           "kwargs_data": {"ecg": ["k1", "k2"]}}
    assert merge_features(image, None) is image and merge_features(None, ecg) is ecg
    both = merge_features(image, ecg)
    assert both["mm_hashes"] == {"image": ["h1"], "ecg": ["e1", "e2"]}
    assert both["mm_placeholders"]["ecg"] == ecg["mm_placeholders"]["ecg"]
    # a side without a payload gets None per item (the server's cached copy), so every modality has its entries
    assert both["kwargs_data"] == {"image": [None], "ecg": ["k1", "k2"]}
    assert both["mm_metadata"] == {"image": ["m1"], "ecg": [None, None]}


def test_server_log_probs_are_read_as_trl_parses_them():
    """vLLM 0.32's generate endpoint names tokens by integer id; TRL's parser then finds its "token_id:<id>"."""
    from trl.generation.vllm_client import parse_logprobs

    from qoqmed.train.vllm_rollouts import _post_with_token_names

    answer = {"choices": [{"logprobs": {"content": [
        {"token_id": 4, "logprob": -0.5, "top_logprobs": [{"token_id": 4, "logprob": -0.5},
                                                           {"token_id": 2, "logprob": -1.5}]}]}}]}
    got = _post_with_token_names(lambda url, **kw: answer, "http://srv/inference/v1/generate", json={})
    assert parse_logprobs([c["logprobs"] for c in got["choices"]]) == ([[[-0.5, -1.5]]], [[[4, 2]]])
    completions = {"choices": [{"logprobs": {"tokens": ["token_id:3"], "token_logprobs": [-0.1],
                                             "top_logprobs": [None]}}]}
    assert _post_with_token_names(lambda url, **kw: completions, "u") == completions  # the other shapes stay
