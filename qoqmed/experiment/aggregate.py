"""Numbers over seeds: mean and sample std of every metric per split, domain and arm; rare vs abundant domains;
changes against the baseline and against the warm start, paired by seed; probe curves; the ECG token modes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ..data.domains import DOMAINS
from ..data.schema import Record
from .units import SPLITS, WARM

METRICS = (("macro_f1", "macro-F1"), ("paper_balanced_accuracy", "paper balanced accuracy"),
           ("exact_match", "accuracy (exact match)"))


def _stat(values: list[float | None]) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0, "values": values}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v),
            "values": values}


def _rel(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None or base == 0 else 100.0 * (value - base) / base


def aggregate(runs: dict[str, dict[int, dict]], shares: dict[str, float], rare_share: float, baseline: str,
              context: dict) -> dict:
    """Mean +- std over seeds of every metric per split, domain and variant; rare vs abundant; paired deltas."""
    domains = sorted(shares, key=lambda d: (-shares[d], d))
    rare = [d for d in domains if shares[d] < rare_share]
    abundant = [d for d in domains if shares[d] >= rare_share]
    names = list(runs)
    seeds = context["seeds"]
    out: dict[str, Any] = {"context": context, "domains": domains, "train_share": shares, "rare_domains": rare,
                           "abundant_domains": abundant, "rare_share_threshold": rare_share, "variants": names,
                           "splits": {}}
    for split in SPLITS:
        if not all(split in runs[n][s]["metrics"] for n in names for s in seeds):
            continue
        table = {n: _arm_entry([runs[n][s]["metrics"][split] for s in seeds], domains, rare, abundant)
                 for n in names}
        _add_baseline_changes(table, baseline, domains)
        out["splits"][split] = table
    out["drpo_scale"] = _drpo_scales(runs, names, domains)
    out["identical_results"] = _identical_arms(runs, names, seeds)
    out["paired_vs_warm"] = {split: _paired_vs_warm(table, names, seeds) for split, table in out["splits"].items()}
    out["probe"] = {n: probe_summary([runs[n][s].get("probe", []) for s in seeds], seeds)
                    for n in names if n != WARM and any(runs[n][s].get("probe") for s in seeds)}
    selected = _select_drpo(runs, names, seeds, out["splits"].get("val"))
    if selected:
        out["selected_drpo"] = selected
    return out


def _arm_entry(per: list[dict], domains: list[str], rare: list[str], abundant: list[str]) -> dict:
    """One arm's statistics on one split, from its per-seed metrics ``per``."""
    entry: dict[str, Any] = {}
    for key, _ in METRICS:
        entry[key] = {"overall": _stat([m["overall"].get(key) for m in per]),
                      "domains": {d: _stat([m["domains"].get(d, {}).get(key) for m in per]) for d in domains}}
        # group summaries: per seed, the unweighted mean over the group's domains
        for group, members in (("rare", rare), ("abundant", abundant)):
            vals = []
            for m in per:
                xs = [m["domains"].get(d, {}).get(key) for d in members]
                xs = [x for x in xs if x is not None]
                vals.append(float(np.mean(xs)) if xs else None)
            entry[key][group] = _stat(vals)
    for key in ("iou_mean", "boxes_per_answer", "format_rate"):
        entry[key] = _stat([m["overall"].get(key) for m in per])
    return entry


def _add_baseline_changes(table: dict, baseline: str, domains: list[str]) -> None:
    """Relative change vs the baseline (of the seed means) and seed-paired differences in overall macro-F1."""
    for n in table:
        for key, _ in METRICS:
            e, b = table[n][key], table[baseline][key]
            e["rel_vs_baseline"] = {
                "overall": _rel(e["overall"]["mean"], b["overall"]["mean"]),
                "rare": _rel(e["rare"]["mean"], b["rare"]["mean"]),
                "abundant": _rel(e["abundant"]["mean"], b["abundant"]["mean"]),
                "domains": {d: _rel(e["domains"][d]["mean"], b["domains"][d]["mean"]) for d in domains}}
        diffs = _paired(table[n]["macro_f1"]["overall"]["values"], table[baseline]["macro_f1"]["overall"]["values"])
        table[n]["paired_f1_diff"] = {**_stat(diffs), "wins": sum(1 for x in diffs if x is not None and x > 0)}


def _paired(values: list, base: list) -> list:
    return [None if x is None or y is None else x - y for x, y in zip(values, base)]


def _drpo_scales(runs: dict, names: list[str], domains: list[str]) -> dict:
    """DRPO's per-domain factor on the GRPO score, averaged over the steps that held the domain and over seeds."""
    scales = {}
    for n in names:
        if n == WARM:
            continue
        s = metric_series(runs, n, "mean_abs_scale/")
        if s:
            scales[n] = {d: float(np.mean([v for _, v in s[d]])) if s.get(d) else None for d in domains}
    return scales


def _identical_arms(runs: dict, names: list[str], seeds: list[int]) -> list[list[str]]:
    """Arms whose every evaluation came out exactly the same (e.g. RLOO's advantage is Dr.GRPO's times G/(G-1), a
    constant Adam normalises away), so a reader does not take two bars for two results."""
    same = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if all(runs[a][s]["metrics"] == runs[b][s]["metrics"] for s in seeds):
                same.append([a, b])
    return same


def _paired_vs_warm(table: dict, names: list[str], seeds: list[int]) -> dict:
    """Every arm against the warm start it started from: per seed, overall macro-F1 after RL minus before."""
    base = table[WARM]["macro_f1"]["overall"]["values"]
    per = {}
    for n in names:
        if n == WARM:
            continue
        diffs = _paired(table[n]["macro_f1"]["overall"]["values"], base)
        per[n] = {**_stat(diffs), "wins": sum(1 for x in diffs if x is not None and x > 0), "seeds": seeds}
    return per


def _select_drpo(runs: dict, names: list[str], seeds: list[int], val: dict | None) -> dict | None:
    """The default DRPO variant, chosen on validation macro-F1 only."""
    drpo = [n for n in names if n != WARM and runs[n][seeds[0]]["settings"]["rl"]["estimator"] == "drpo"]
    if not val or not drpo:
        return None
    best = max(drpo, key=lambda n: val[n]["macro_f1"]["overall"]["mean"] or -1.0)
    return {"variant": best, "by": "mean overall macro-F1 on the validation split",
            "val": {n: val[n]["macro_f1"]["overall"]["mean"] for n in drpo},
            "val_std": {n: val[n]["macro_f1"]["overall"]["std"] for n in drpo},
            "val_rare": {n: val[n]["macro_f1"]["rare"]["mean"] for n in drpo}}



def probe_reward(entry: dict, prefix: str = "reward/") -> float | None:
    """One probe evaluation's reward: the unweighted mean over its domains (each domain has the same questions)."""
    xs = [float(v) for k, v in entry.items() if k.startswith(prefix) and v is not None]
    return float(np.mean(xs)) if xs else None


def probe_summary(curves: list[list[dict]], seeds: list[int]) -> dict:
    """Probe reward at the first (step 0, the warm start) and the last evaluation, per seed; the mean curve."""
    per_seed = {}
    by_step: dict[int, list[float]] = defaultdict(list)
    for seed, curve in zip(seeds, curves):
        pts = sorted(((int(e["step"]), probe_reward(e), probe_reward(e, "accuracy/")) for e in curve),
                     key=lambda p: p[0])
        pts = [p for p in pts if p[1] is not None]
        for step, rew, _ in pts:
            by_step[step].append(rew)
        if len(pts) >= 1:
            first, last = pts[0], pts[-1]
            per_seed[str(seed)] = {"start_step": first[0], "end_step": last[0], "start": first[1], "end": last[1],
                                   "rise": last[1] - first[1], "start_accuracy": first[2],
                                   "end_accuracy": last[2],
                                   "constant_accuracy_start": probe_reward(curve[0], "constant_accuracy/"),
                                   "constant_accuracy_end": probe_reward(curve[-1], "constant_accuracy/")}
    rises = [v["rise"] for v in per_seed.values()]
    return {"per_seed": per_seed, "rise": _stat(rises),
            "rises_every_seed": bool(rises) and len(rises) == len(seeds) and all(x > 0 for x in rises),
            "curve": [[step, float(np.mean(v)), len(v)] for step, v in sorted(by_step.items())]}


TOKENS_PER_MODE = {"pooled": 1, "per_lead": 8, "patch": 400}


def token_mode_summary(gruns: dict, modes: list[str], main_mode: str, variant: str, seeds: list[int]) -> dict:
    """ECG-domain macro-F1 of the warm start and of ``variant`` per ECG token mode, per split; paired RL gain."""
    out: dict[str, Any] = {"variant": variant, "domain": "ecg", "modes": {}}
    for mode in modes:
        runs = gruns.get(f"ecg-{mode}", {})
        if variant not in runs or len(runs[variant]) < len(seeds):
            continue
        entry: dict[str, Any] = {"tokens": TOKENS_PER_MODE.get(mode), "main_model_mode": mode == main_mode,
                                 "seconds": {n: _stat([runs[n][s]["seconds"] for s in seeds])["mean"]
                                             for n in (WARM, variant)},
                                 "train_rows": {n: runs[n][seeds[0]].get("train_rows") for n in (WARM, variant)}}
        for split in SPLITS:
            if not all(split in runs[n][s]["metrics"] for n in (WARM, variant) for s in seeds):
                continue
            f1 = {n: [runs[n][s]["metrics"][split]["domains"].get("ecg", {}).get("macro_f1") for s in seeds]
                  for n in (WARM, variant)}
            diffs = [None if a is None or b is None else a - b for a, b in zip(f1[variant], f1[WARM])]
            entry[split] = {WARM: _stat(f1[WARM]), variant: _stat(f1[variant]), "paired_rl_gain": _stat(diffs)}
        out["modes"][mode] = entry
    return out


def metric_series(runs: dict, name: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for res in runs[name].values():
        for entry in res.get("curves", []):
            for key, value in entry.items():
                if key.startswith(prefix) and value is not None:
                    out[key.split("/", 1)[1]].append((entry["step"], float(value)))
    return out


def domain_counts(records: list[Record]) -> dict[str, int]:
    c = defaultdict(int)
    for x in records:
        c[x.domain] += 1
    return {d: c[d] for d in DOMAINS if c[d]}


def train_shares(train: list[Record]) -> dict[str, float]:
    counts = defaultdict(int)
    for x in train:
        counts[x.domain] += 1
    return {d: counts[d] / len(train) for d in DOMAINS if counts[d]}
