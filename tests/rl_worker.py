"""Runs ``train_rl`` for the multi-process and kill-and-resume tests, recording every step's advantages.

    python tests/rl_worker.py MODEL_DIR RECORDS.jsonl OUT_DIR [--max-steps 3] [--kill-after-step 2] [--resume]
    torchrun --nproc_per_node 2 tests/rl_worker.py ...

Each process appends one JSON line per generation step to ``OUT_DIR/advantages_rank{RANK}.jsonl``: the gathered
rewards, group ids and advantages, and the advantages this process kept for its own rows. ``--kill-after-step N``
ends the process with ``os._exit(17)`` right after checkpoint N is written, like a job killed by a scheduler.
The reward is the completion length (see ``length_reward``) so that advantages carry signal.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from transformers import TrainerCallback

from qoqmed.data.schema import load_records
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
        out = compute(self, inputs)
        if self.model.training:
            with open(log, "a") as f:
                f.write(json.dumps({**self._recorded, "local": out["advantages"].tolist(),
                                    "completion_ids": out["completion_ids"].tolist(),
                                    "param_sum": float(sum(p.detach().double().sum() for p in self.model.parameters())),
                                    "rank": self.accelerator.process_index}) + "\n")
        return out

    def length_reward(completions, **_):
        # An untrained tiny model scores 0 on the real reward; completion length varies between rollouts, so
        # the advantages are non-zero and a mismatch after resuming would show.
        return [len(c[0]["content"]) / 64 for c in completions]

    rl.make_reward_function = lambda facts, *args, **kwargs: length_reward
    rl.QoQMedRLTrainer.estimate_advantages = record_global
    rl.QoQMedRLTrainer._generate_and_score_completions = record_local

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == a.kill_after_step:
                os._exit(17)

    settings = rl.RLSettings(estimator=a.estimator, drpo_mode=a.mode, drpo_history=a.history, num_generations=2,
                               batch_size=4, max_steps=a.max_steps, max_completion_length=8, save_steps=1,
                               logging_steps=1, learning_rate=1e-2, temperature=1.5, beta=0.1,
                               progress_bar=False)
    callbacks = [KillAfterCheckpoint()] if a.kill_after_step else None
    rl.train_rl(a.model, load_records(a.records), a.out, settings, resume_from="latest" if a.resume else None,
                  callbacks=callbacks)
    end_distributed()


if __name__ == "__main__":
    main()
