"""Advantage time per RL step over a long simulated run, for every estimator and DRPO mode.

    python benchmarks/advantage_speed.py [--steps 500] [--prompts 512] [--rollouts 5] [--domains 30]
                                         [--out benchmarks/results/advantage_speed.json]

The stream: each step draws ``prompts`` questions (ids never repeat) whose domains follow a Zipf(1) law over
``domains`` domains (CLIMB is very imbalanced: the largest domain gets ~25% of questions here), and gives each
of its ``rollouts`` rollouts the reward ``0.6 * accuracy + 0.2 * IoU + 0.2 * format`` with a per-domain and
per-question difficulty, continuous IoU (so reward vectors rarely repeat, the hard case for clustering).

Every estimator except DRPO ``reference`` runs all steps and each call is timed. The reference mode refits
scikit-learn k-means on each domain's whole history at every step, so its call at step t is timed at sampled
steps only: its state before step t is exactly "every earlier question's reward vector, in order" (checked
against a real run at the first sampled step > 1), built directly, then the step-t call is timed. Times are
medians over a window of steps around each reported step (the machine is shared), and the JSON keeps every
per-step time of the full runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from qoqmed.algos import DRPO, disco_advantages, group_advantages, rloo_advantages


def simulate(steps: int, prompts: int, rollouts: int, domains: int, seed: int = 0):
    """Yield (rewards, question_ids, domains) per step."""
    rng = np.random.default_rng(seed)
    p_dom = 1.0 / np.arange(1, domains + 1)
    p_dom /= p_dom.sum()
    dom_skill = rng.uniform(0.1, 0.9, domains)
    for step in range(steps):
        d = rng.choice(domains, size=prompts, p=p_dom)
        skill = np.clip(dom_skill[d] + rng.normal(0, 0.2, prompts) + 0.0005 * step, 0.0, 1.0)
        acc = rng.random((prompts, rollouts)) < skill[:, None]
        iou = np.where(acc, rng.beta(4, 2, (prompts, rollouts)), rng.beta(1, 4, (prompts, rollouts)))
        fmt = rng.random((prompts, rollouts)) < 0.9
        r = 0.6 * acc + 0.2 * iou.round(3) + 0.2 * fmt
        qids = np.repeat([f"s{step}q{i}" for i in range(prompts)], rollouts)
        doms = np.repeat([f"domain{j:02d}" for j in d], rollouts)
        yield torch.from_numpy(r.reshape(-1)), qids.tolist(), doms.tolist()


def _timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def _window(times: list[float], step: int, half: int = 5) -> float:
    lo, hi = max(step - half, 1), min(step + half - 1, len(times))
    return statistics.median(times[lo - 1 : hi])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--rollouts", type=int, default=5)
    ap.add_argument("--domains", type=int, default=30)
    ap.add_argument("--history", type=int, default=256, help="bounded mode: questions kept per domain")
    ap.add_argument("--reference-steps", default="10,100,500")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/advantage_speed.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    G = a.rollouts
    report_steps = [s for s in (10, 100, 250, a.steps) if s <= a.steps]
    stream = list(simulate(a.steps, a.prompts, G, a.domains))
    domain_counts: dict[str, int] = {}
    for _, q, d in stream:
        for dom in d[::G]:
            domain_counts[dom] = domain_counts.get(dom, 0) + 1

    estimators = {
        "grpo": lambda r, q, d: group_advantages(r, q),
        "drgrpo": lambda r, q, d: group_advantages(r, q, scale=False),
        "rloo": lambda r, q, d: rloo_advantages(r, q),
        "disco": lambda r, q, d: disco_advantages(r, q, d, domain_counts=domain_counts),
        "drpo_paper": DRPO(G, mode="paper"),
        f"drpo_bounded_h{a.history}": DRPO(G, mode="bounded", history=a.history),
    }
    results: dict[str, dict] = {}
    for name, fn in estimators.items():
        times = []
        t0 = time.perf_counter()
        for r, q, d in stream:
            times.append(_timed(fn, r, q, d))
        at = {str(s): _window(times, s) for s in report_steps}
        results[name] = {"seconds_at_step": at, "ratio_last_to_step10": at[str(report_steps[-1])] / at["10"],
                         "total_seconds": time.perf_counter() - t0, "per_step_seconds": times}
        print(f"{name:22s} " + "  ".join(f"step {s}: {v * 1e3:8.2f} ms" for s, v in at.items())
              + f"  last/10 = {results[name]['ratio_last_to_step10']:.2f}", flush=True)

    # DRPO reference: sampled steps, state built from the stream.
    sample = [int(s) for s in a.reference_steps.split(",") if int(s) <= a.steps]
    check_step = sample[0]
    live = DRPO(G, mode="reference")
    for r, q, d in stream[: check_step - 1]:
        live(r, q, d)
    ref_times, histories = {}, {}
    for s in sample:
        hist: dict[str, list[np.ndarray]] = {}
        for r, q, d in stream[: s - 1]:
            vec = r.numpy().reshape(-1, G)
            for row, dom in zip(vec, d[::G]):
                hist.setdefault(dom, []).append(row)
        state = {"domains": {k: np.stack(v) for k, v in hist.items()}}
        if s == check_step:
            ours = live.state_dict()["domains"]
            assert set(ours) == set(state["domains"]) and all(
                np.array_equal(ours[k], state["domains"][k]) for k in ours), "reference state construction differs"
        est = DRPO(G, mode="reference")
        est.load_state_dict(state)
        r, q, d = stream[s - 1]
        ref_times[str(s)] = _timed(est, r, q, d)
        histories[str(s)] = max((len(v) for v in hist.values()), default=0)
        print(f"drpo_reference         step {s}: {ref_times[str(s)] * 1e3:10.1f} ms "
              f"(largest domain history {histories[str(s)]} questions)", flush=True)
    results["drpo_reference"] = {"seconds_at_step": ref_times, "largest_domain_history": histories,
                                 "method": "one timed call at each sampled step on the exact state it would have"}

    last = str(report_steps[-1])
    speedup = {n: ref_times[last] / v["seconds_at_step"][last] for n, v in results.items()
               if n.startswith("drpo_") and n != "drpo_reference" and last in ref_times}
    for n, x in speedup.items():
        print(f"speed-up of {n} over drpo_reference at step {last}: {x:.0f}x")
    out = {
        "benchmark": "advantage_speed",
        "config": vars(a) | {"out": str(a.out)},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "window": "median over steps s-5..s+4 (clipped to the run)",
        "results": results,
        "speedup_over_reference_at_last_step": speedup,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
