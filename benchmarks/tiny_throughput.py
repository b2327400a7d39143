"""Throughput of the tiny QoQ-Med on this machine: supervised steps, greedy generation, RL steps.

    python benchmarks/tiny_throughput.py [--out benchmarks/results/tiny_throughput.json]

Uses CLIMB-mini records (all 9 domains, images, volumes and ECGs) and the quickstart's model size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from qoqmed.data.prompts import encode_batch, load_record
from qoqmed.data.schema import load_records
from qoqmed.data.climb_mini import generate_climb_mini
from qoqmed.modeling.tiny import build_tiny
from qoqmed.train.rl import train_rl
from qoqmed.train.settings import RLSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/tiny_throughput.json")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                     "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_climb_mini(tmp / "data", n_train=144, n_val=36, n_test=36, seed=0)
        train = load_records(tmp / "data" / "train.jsonl")
        processor, model = build_tiny([r.problem for r in train] + [r.answer for r in train])
        results["parameters"] = sum(p.numel() for p in model.parameters())
        loaded = [load_record(r) for r in train]

        # supervised: forward + backward + AdamW step on batches of 8 records
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        batches = [encode_batch(processor, loaded[i:i + 8], with_targets=True)
                   for i in range(0, len(loaded) - 7, 8)][:args.steps]
        t0 = time.perf_counter()
        for b in batches:
            loss = model(**b).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        results["sft_records_per_s"] = round(8 * len(batches) / dt, 1)

        # greedy generation, 64 new tokens, batch 32, EOS disabled so every row generates all tokens
        model.eval()
        enc = encode_batch(processor, loaded[:32])
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(**enc, max_new_tokens=64, min_new_tokens=64, do_sample=False)
            dt = time.perf_counter() - t0
        results["generate_tokens_per_s_batch32"] = round(32 * 64 / dt, 1)

        # RL: full DRPO steps through TRL (generation of 16 rollouts x 96 tokens, reference and policy passes)
        model.save_pretrained(tmp / "m")
        processor.save_pretrained(tmp / "m")
        t0 = time.perf_counter()
        logs = train_rl(tmp / "m", train, tmp / "rl", RLSettings(max_steps=args.steps, logging_steps=1))
        dt = time.perf_counter() - t0
        step_times = [h["step_time"] for h in logs["log_history"] if "step_time" in h]
        results["rl_seconds_per_step_16_rollouts"] = round(sum(step_times) / len(step_times), 3)
        results["rl_wall_seconds"] = round(dt, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
