"""Rollouts through vLLM vs transformers ``generate``: tokens/s and one DRPO step's time, same model, same prompts.

    python benchmarks/vllm_rollouts.py [--out benchmarks/results/vllm_rollouts.json] [--kinds ecg,image]

Needs vLLM and the qoqmed vLLM model (the ``vllm`` extra). Builds the quickstart-size tiny QoQ-Med (head size 32,
which vLLM's CPU attention accepts) and CLIMB-mini records; per prompt kind (ECG + text, image + text) it samples
``--questions`` x 4 rollouts of exactly ``--tokens`` tokens with each engine, then runs ``--rl-steps`` DRPO steps
with each rollout engine (TRL colocate mode for vLLM) and reports the median step time after the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from qoqmed.data.climb_mini import generate_climb_mini
from qoqmed.data.prompts import encode_batch, load_record, messages_for
from qoqmed.data.schema import load_records
from qoqmed.modeling.tiny import build_tiny
from qoqmed.modeling.vllm_plugin import blocked_words, register, vllm_request
from qoqmed.train.rl import build_rl_trainer
from qoqmed.train.settings import RLSettings

register()  # the vllm.general_plugins entry point does this where qoqmed is installed

GENERATIONS = 4
KINDS = {"ecg": lambda r: bool(r.ecg) and not r.images, "image": lambda r: bool(r.images) and not r.ecg,
         "ecg+image": lambda r: bool(r.ecg) and bool(r.images)}


def vllm_prompt(processor, item) -> dict:
    """One vLLM request with the prompt ``generate`` gets (the same chat text, images and ECG records)."""
    text = processor.apply_chat_template(messages_for(item), add_generation_prompt=True)
    return vllm_request(text, item.images, item.ecgs)


def time_generate(model, processor, items, tokens: int, suppress: list[int]) -> float:
    enc = encode_batch(processor, items)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                             suppress_tokens=suppress)
        dt = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == tokens
    return dt


def time_vllm(llm, processor, items, tokens: int, blocked: list[str]) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=1.0, bad_words=blocked)
    prompts = [vllm_prompt(processor, item) for item in items]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == tokens for o in outs)
    return dt


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def median_step_after_first(trainer) -> float:
    """Median time of the trainer's steps after its first (the first one also warms up the engine)."""
    return statistics.median(logged(trainer, "step_time")[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/vllm_rollouts.json")
    ap.add_argument("--kinds", default="ecg,image", help=f"prompt kinds, from {sorted(KINDS)}")
    ap.add_argument("--questions", type=int, default=8, help="questions per kind (x4 rollouts each)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per rollout")
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating generate / vLLM rounds per kind")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                     "threads": torch.get_num_threads(), "rollouts_per_kind": args.questions * GENERATIONS,
                     "tokens_per_rollout": args.tokens, "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_climb_mini(tmp / "data", n_train=144, n_val=36, n_test=36, seed=0)
        train = load_records(tmp / "data" / "train.jsonl")
        processor, model = build_tiny([r.problem for r in train] + [r.answer for r in train])
        model.save_pretrained(tmp / "m")
        processor.save_pretrained(tmp / "m")
        model.eval()
        suppress = model.placeholder_token_ids()
        blocked = blocked_words(model.config, processor.tokenizer)
        results["parameters"] = sum(p.numel() for p in model.parameters())
        chosen = {k: [r for r in train if KINDS[k](r)][:args.questions] for k in kinds}
        rl_records = [r for k in kinds for r in chosen[k]]
        common = dict(batch_size=args.questions * GENERATIONS, num_generations=GENERATIONS,
                      max_completion_length=args.tokens, max_steps=args.rl_steps, logging_steps=1, beta=0.0,
                      progress_bar=False)

        # the vLLM trainer's colocated engine also serves the throughput runs: one engine start
        t0 = time.perf_counter()
        trainer = build_rl_trainer(tmp / "m", rl_records, tmp / "rl_vllm",
                                   RLSettings(**common, rollout={"engine": "vllm", "max_model_length": 1024}))
        results["vllm_engine_start_s"] = round(time.perf_counter() - t0, 1)
        llm = trainer.vllm_generation.llm
        for kind in kinds:
            items = [load_record(r) for r in chosen[kind] for _ in range(GENERATIONS)]
            time_vllm(llm, processor, items[:2], 4, blocked)  # warm-up of both engines
            time_generate(model, processor, items[:2], 4, suppress)
            n = len(items) * args.tokens
            # alternating rounds, medians: other work on a shared machine hits both engines alike
            hf, vl = [], []
            for _ in range(args.rounds):
                hf.append(n / time_generate(model, processor, items, args.tokens, suppress))
                vl.append(n / time_vllm(llm, processor, items, args.tokens, blocked))
            hf, vl = statistics.median(hf), statistics.median(vl)
            results[kind] = {"generate_tokens_per_s": round(hf, 1), "vllm_tokens_per_s": round(vl, 1),
                             "speedup": round(vl / hf, 2)}
            print(kind, results[kind], flush=True)
        trainer.train()
        vllm_step = median_step_after_first(trainer)
        gaps = logged(trainer, "sampling/sampling_logp_difference/max")
        hf_trainer = build_rl_trainer(tmp / "m", rl_records, tmp / "rl_hf", RLSettings(**common))
        hf_trainer.train()
        hf_step = median_step_after_first(hf_trainer)
        results["rl_step"] = {"rollouts": common["batch_size"], "generate_s": round(hf_step, 2),
                              "vllm_s": round(vllm_step, 2), "speedup": round(hf_step / vllm_step, 2),
                              "vllm_logp_gap_max_per_step": [round(g, 5) for g in gaps]}
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
