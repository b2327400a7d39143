"""Runs ``train_rl`` for the multi-process and kill-and-resume tests, recording every step's advantages.

    python tests/rl_worker.py MODEL_DIR RECORDS.jsonl OUT_DIR [--max-steps 3] [--kill-after-step 2] [--resume]
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/rl_worker.py ...
    accelerate launch --config_file configs/accelerate/fsdp2_cpu_2proc.yaml tests/rl_worker.py ... --split-ecg

Each process appends one JSON line per generation step to ``OUT_DIR/advantages_rank{RANK}.jsonl``: the gathered
rewards, group ids and advantages, and the advantages this process kept for its own rows. ``--kill-after-step N``
ends the process with ``os._exit(17)`` right after checkpoint N is written, like a job killed by a scheduler.
The reward is the completion length (see ``length_reward``) so that advantages carry signal.

``--split-ecg`` feeds the questions in a fixed order, two ECG questions then two without ECG, so that with 2
processes and 2 questions per process the first process's micro-batch holds only ECG rows and the second's none
(each process checks this; one process takes all four questions in the same order). ``--replay DIR`` samples nothing: each step's completions are those recorded in DIR by
another run (every process's, in process order), so a run with another process count scores the same rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from transformers import TrainerCallback

from qoqmed.data.schema import load_records
from qoqmed.modeling import QoQMedProcessor
from qoqmed.train import rl
from qoqmed.train.recipe import end_distributed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("records")
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--kill-after-step", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--estimator", default="drpo")
    ap.add_argument("--mode", default="bounded")
    ap.add_argument("--history", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--split-ecg", action="store_true")
    ap.add_argument("--replay", type=Path, default=None)
    ap.add_argument("--eos-bias", type=float, default=None)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / f"advantages_rank{os.environ.get('RANK', '0')}.jsonl"

    compute = rl.QoQMedRLTrainer._generate_and_score_completions
    advantages = rl.QoQMedRLTrainer.estimate_advantages

    def record_global(self, rewards, groups, domains, kl=None):
        adv = advantages(self, rewards, groups, domains, kl)
        self._recorded = {"step": self.state.global_step, "rewards": rewards.tolist(), "groups": groups,
                          "domains": domains, "advantages": adv.tolist()}
        return adv

    def record_local(self, inputs):
        if a.split_ecg and self.accelerator.num_processes > 1:
            has_ecg = {bool(self.facts[x["id"]].ecg_paths) for x in inputs}
            assert has_ecg == {self.accelerator.process_index == 0}, (self.accelerator.process_index, has_ecg)
        if a.replay and self.model.training:
            replayed = [i for rank in recorded for r in rank if r["step"] == self.state.global_step for i in r["ids"]]
            assert [x["id"] for x in inputs] == replayed, "the replayed completions belong to other questions"
        out = compute(self, inputs)
        if self.model.training:
            completions = [c[m.bool()].tolist() for c, m in zip(out["completion_ids"], out["completion_mask"])]
            with open(log, "a") as f:
                f.write(json.dumps({**self._recorded, "local": out["advantages"].tolist(),
                                    "ids": [x["id"] for x in inputs], "completions": completions,
                                    "completion_ids": out["completion_ids"].tolist(),
                                    "param_sum": param_sum(self.model),
                                    "rank": self.accelerator.process_index}) + "\n")
        return out

    def length_reward(completions, **_):
        # An untrained tiny model scores 0 on the real reward; completion length varies between rollouts, so
        # the advantages are non-zero and a mismatch after resuming would show.
        return [len(c[0]["content"]) / 64 for c in completions]

    rl.make_reward_function = lambda facts, *args, **kwargs: length_reward
    make_config = rl.make_grpo_config

    def configure(*args, **kwargs):
        config = make_config(*args, **kwargs)
        config.shuffle_dataset = not a.split_ecg
        if a.eos_bias:
            # completions of different lengths: with equal lengths the first (on-policy) loss is exactly 0
            eos = QoQMedProcessor.from_pretrained(a.model).tokenizer.eos_token_id
            config.generation_kwargs = {**(config.generation_kwargs or {}), "sequence_bias": [[[eos], a.eos_bias]]}
        return config

    rl.make_grpo_config = configure
    if a.replay:
        recorded = [read_steps(path) for path in sorted(a.replay.glob("advantages_rank*.jsonl"))]

        def replay(self, prompt_ids, *args, **kwargs):
            rows = [r for rank in recorded for r in rank if r["step"] == self.state.global_step]
            assert len(prompt_ids) == sum(len(r["completions"]) for r in rows), "replayed another batch geometry"
            return [c for r in rows for c in r["completions"]], None

        rl.QoQMedRLTrainer._generate_single_turn = replay
    rl.QoQMedRLTrainer.estimate_advantages = record_global
    rl.QoQMedRLTrainer._generate_and_score_completions = record_local

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == a.kill_after_step:
                os._exit(17)

    settings = rl.RLSettings(estimator=a.estimator, drpo_mode=a.mode, drpo_history=a.history, num_generations=2,
                               batch_size=a.batch_size, max_steps=a.max_steps, max_completion_length=8, save_steps=1,
                               logging_steps=1, learning_rate=1e-2, temperature=1.5, beta=0.1,
                               progress_bar=False)
    callbacks = [KillAfterCheckpoint()] if a.kill_after_step else None
    records = load_records(a.records)
    if a.split_ecg:
        ecg = [r for r in records if r.ecg]
        other = [r for r in records if not r.ecg]
        records = [r for i in range(0, min(len(ecg), len(other)), 2) for r in ecg[i:i + 2] + other[i:i + 2]]
    rl.train_rl(a.model, records, a.out, settings, resume_from="latest" if a.resume else None,
                  callbacks=callbacks)
    end_distributed()


def param_sum(model) -> float:
    # FSDP holds each process's shard of a parameter; the sum is over the whole (gathered) parameter
    full = (p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters())
    return float(sum(p.detach().double().sum() for p in full))


def read_steps(path) -> list[dict]:
    """The per-step records a worker wrote to ``path``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


if __name__ == "__main__":
    main()
