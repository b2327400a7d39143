"""DRPO with rollouts from a colocated vLLM engine (TRL's use_vllm) on CPU: ECG and image prompts, weights synced
after every optimiser step, vLLM's log-probs of the sampled tokens within 1e-2 of the training pass at every step.

Runs in the vLLM environment (``make test-vllm``); skipped where vLLM is not installed.
"""

import os

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: the tiny model needs little

from vllm import SamplingParams

from qoqmed.data.schema import load_records
from qoqmed.modeling import QoQMedForConditionalGeneration
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.modeling.vllm_plugin import register
from qoqmed.train.rl import QoQMedRLTrainer, build_rl_dataset, make_grpo_config
from qoqmed.train.settings import RLSettings

register()  # the entry point does this where qoqmed is installed

pytestmark = pytest.mark.vllm

# head size 32: vLLM's CPU attention takes 32, 64, 80, ... (not the suite's usual 16)
SPEC = TinySpec(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, vision_depth=1,
                vision_hidden=32)
GAP = "sampling/sampling_logp_difference/max"


def _length_reward(completions, **_):
    """Differs between the rollouts of a prompt, so an untrained model gets non-zero advantages."""
    return [len(c[0]["content"]) / 64 for c in completions]


def _logprob_gap(llm, model, prompt_ids: list[int]) -> float:
    """Largest |vLLM log-prob - model log-prob| over 8 greedy tokens of a text prompt."""
    out = llm.generate([{"prompt_token_ids": prompt_ids}], SamplingParams(max_tokens=8, temperature=0, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    tokens = list(out.token_ids)
    sampled = torch.tensor([lp[t].logprob for lp, t in zip(out.logprobs, tokens)])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0, len(prompt_ids) - 1:-1]
    trained = logits.float().log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
    return float((trained - sampled).abs().max())


def test_drpo_with_colocated_vllm_trains_on_synced_weights(mini_records_path, tmp_path):
    records = load_records(mini_records_path)
    ecg = [r for r in records if r.ecg][:2]
    image = [r for r in records if r.images][:2]
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    # 4 questions x 2 rollouts: every step samples every question, so each sync is checked on ECG and image rows
    settings = RLSettings(estimator="drpo", num_generations=2, batch_size=8, max_steps=3, logging_steps=1,
                          learning_rate=2e-2, beta=0.0, max_completion_length=12, progress_bar=False,
                          rollout={"engine": "vllm", "max_model_length": 512})
    dataset, facts = build_rl_dataset(ecg + image, processor)
    model = QoQMedForConditionalGeneration.from_pretrained(tmp_path / "start")
    args = make_grpo_config(settings, tmp_path / "rl", suppress_tokens=model.placeholder_token_ids())
    trainer = QoQMedRLTrainer(model=model, reward_funcs=_length_reward, args=args, train_dataset=dataset,
                              processing_class=processor, settings=settings, facts=facts)
    llm = trainer.vllm_generation.llm._llm
    sent = []
    generate = llm.generate
    llm.generate = lambda prompts, *a, **k: sent.append(prompts) or generate(prompts, *a, **k)
    trainer.train()

    gaps = [h[GAP] for h in trainer.state.log_history if GAP in h]
    print("max |log-prob(vLLM) - log-prob(training pass)| per step:", gaps)
    assert len(gaps) == 3 and max(gaps) < 1e-2, gaps
    assert len(sent) == 3 and all(sum("ecg" in p.get("multi_modal_data", {}) for p in batch) == 4 and
                                  sum("image" in p.get("multi_modal_data", {}) for p in batch) == 4
                                  for batch in sent)
    # the weights moved far enough that an engine left on the start weights would fail the same bound
    trainer.vllm_generation.sync_weights()
    prompt = processor.tokenizer("<|im_start|>user\nWhich findings are present?<|im_end|>\n<|im_start|>assistant\n"
                                 )["input_ids"]
    start = QoQMedForConditionalGeneration.from_pretrained(tmp_path / "start").eval()
    trained = trainer.model.eval()
    synced, stale = _logprob_gap(llm, trained, prompt), _logprob_gap(llm, start, prompt)
    print(f"after training: engine vs trained model {synced:.2e}, vs start model {stale:.2e}")
    assert synced < 1e-2 < stale
