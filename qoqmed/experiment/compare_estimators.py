"""GRPO vs DRPO (each mode) vs other baselines on CLIMB-mini, from one shared warm start per seed.

What one run does (``qoqmed experiment compare-estimators CONFIG --seeds N --out DIR``):

1. generate the benchmark once (or load the jsonl files the config names); the data are the same for every seed;
2. per seed: build the tiny model, train ONE supervised warm start, evaluate it on val and test;
3. per seed and estimator variant: RL from that warm start with the same budget (steps, rollouts, learning rate),
   then greedy evaluation on the validation and the held-out test split;
4. aggregate over seeds (mean +- sample std) and write ``report.md``, ``results.json`` and PNG plots.

Test numbers are only reported; any choice (the default DRPO variant) is made on the validation split.

Layout of DIR::

    data/                           the benchmark (when generated)
    seed<k>/warm_start/             model after the warm start (shared by all variants of that seed)
    seed<k>/warm_start_eval.json    its val/test metrics (warm_start.log: what the trainer printed)
    seed<k>/<variant>/rl/           RL logs (rl_logs.json) and the final model
    seed<k>/<variant>/result.json   settings, timings, val/test metrics (train.log: what the trainer printed)
    seed<k>/ecg-<mode>/...          the same for each ECG token mode (a warm start and one arm, ECG rows only)
    report.md, results.json, *.png

Re-reporting an existing DIR (:func:`report_compare_estimators`) re-aggregates its unit files and rewrites
``report.md``, ``results.json`` and the plots; the run-time facts (timings, load, workers) come from its
``results.json``.

The modules: ``config`` (settings, checked at load), ``units`` (a warm start, an RL arm, from the recipe's stages),
``runner`` (which units are left, worker processes), ``aggregate`` (numbers over seeds), ``report`` and ``plots``.

A unit whose result file exists with the same settings is reused, so an interrupted run can be continued by running
the same command again. Units run side by side in ``workers`` processes (default one per CPU core); a seed's
variants start once its warm start is saved. Each unit fixes its own seeds, so the order units finish in does not
change any number.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from .aggregate import aggregate, domain_counts, token_mode_summary, train_shares
from .config import ExperimentConfig, load_experiment_config
from .report import write_outputs
from .runner import UnitPlan, default_workers, load_finished_runs, plan_units, run_units, unit_groups, worker_layout
from .units import WARM, StudyData, console, load_study_data, study_data

__all__ = ["run_compare_estimators", "report_compare_estimators", "default_workers"]


def run_compare_estimators(cfg: ExperimentConfig, out_dir: str | Path, show_progress: bool = True,
                           workers: int | None = None) -> dict:
    """Run every (seed, variant) unit, aggregate, write the report; return the ``results.json`` dict.

    ``workers`` processes run units side by side (default: one per CPU core), each with ``cores // workers``
    torch threads; a seed's variants start as soon as its warm start is saved. Every unit fixes its own seeds, so
    the numbers do not depend on the order units finish in.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    variants = cfg.ordered_variants()

    t = time.perf_counter()
    data = study_data(cfg, *load_study_data(cfg, out))
    data_seconds = time.perf_counter() - t

    plan = plan_units(cfg, variants, out, {"warm_start_share": cfg.warm_start_share,
                                           "warm_rows": len(data.warm_train), "rl_rows": len(data.rl_train),
                                           "disjoint": cfg.warm_start_share < 1.0})
    workers, threads = worker_layout(plan, workers)
    run_units(plan, data, workers, threads, show_progress)

    context = _context(cfg, variants, data, plan, {
        "workers": workers, "threads_per_worker": threads,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - t_start, 1), "data_seconds": round(data_seconds, 1)})
    results = _report(cfg, plan.runs, train_shares(data.train), context, out)
    console.print(f"[bold green]done[/] in {context['wall_seconds']:.0f} s: {out / 'report.md'}")
    return results


def report_compare_estimators(out_dir: str | Path) -> dict:
    """Aggregate the units an earlier run left in ``out_dir`` again and rewrite its report, results and plots.

    The settings come from the run's ``config.yaml`` and ``results.json``; the run-time facts (timings, machine
    load, workers) stay those of the run that wrote ``results.json``.
    """
    out = Path(out_dir)
    previous = json.loads((out / "results.json").read_text())
    context = previous["context"]
    cfg = load_experiment_config(out / "config.yaml", seeds=len(context["seeds"]))
    if cfg.seed_list() != context["seeds"]:
        raise ValueError(f"{out}: results.json lists seeds {context['seeds']}, config.yaml gives {cfg.seed_list()}")
    runs = load_finished_runs(out, unit_groups(cfg, cfg.ordered_variants()), context["seeds"])
    return _report(cfg, runs, previous["train_share"], context, out)


def _report(cfg: ExperimentConfig, gruns: dict, shares: dict[str, float], context: dict, out: Path) -> dict:
    """The report step: aggregate the units' results, write results.json, report.md and the plots."""
    runs = {n: gruns[""][n] for n in (WARM, *context["variants"])}  # the report's order, whatever order units finished in
    results = aggregate(runs, shares, cfg.rare_share, cfg.baseline, context)
    if cfg.ecg_token_modes:
        results["ecg_token_modes"] = token_mode_summary(gruns, cfg.ecg_token_modes, context["model_ecg_token_mode"],
                                                        cfg.ecg_token_variant, context["seeds"])
    write_outputs(results, runs, out)
    return results


def _context(cfg: ExperimentConfig, variants: dict[str, dict], data: StudyData, plan: UnitPlan,
             run_facts: dict) -> dict:
    """What was run, on what, and how long it took: the report's first section."""
    from ..modeling.tiny import TinySpec

    r = cfg.recipe
    seeds = cfg.seed_list()
    runs = plan.runs[""]
    timings = {name: [runs[name][s]["seconds"] for s in seeds] for name in [WARM, *variants]}
    units_seconds = round(sum(u["seconds"] + u.get("eval_seconds", 0.0) for g in plan.runs.values()
                              for by_seed in g.values() for u in by_seed.values()), 1)
    warm_train, rl_train = data.warm_train, data.rl_train
    context = {
        "seeds": seeds, "variants": dict(variants),
        "skipped_variants": {},  # kept for the format: every estimator is checked when the config is loaded
        "baseline": cfg.baseline, "rl": dict(r.rl), "sft": asdict(r.sft), "model": r.model,
        "n_params": runs[WARM][seeds[0]].get("n_params"), "data": r.data.synthetic or asdict(r.data),
        "train_rows": len(data.train), "split_rows": {s: len(v) for s, v in data.splits.items()},
        "warm_start_share": cfg.warm_start_share, "warm_start_rows": len(warm_train), "rl_rows": len(rl_train),
        "warm_rl_disjoint": not ({x.id for x in warm_train} & {x.id for x in rl_train}),
        "warm_start_rows_per_domain": domain_counts(warm_train), "rl_rows_per_domain": domain_counts(rl_train),
        "model_ecg_token_mode": r.model.get("ecg_token_mode", TinySpec.ecg_token_mode),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        "workers": run_facts["workers"], "threads_per_worker": run_facts["threads_per_worker"],
        "load_average_start": run_facts["load_average_start"], "load_average_end": run_facts["load_average_end"],
        "wall_seconds": run_facts["wall_seconds"], "data_seconds": run_facts["data_seconds"], "units": plan.units,
        "units_reused": plan.reused, "units_seconds_total": units_seconds,
        "mean_seconds": {k: round(float(np.mean(v)), 1) for k, v in timings.items()},
    }
    if len(plan.groups) > 1:
        context["token_mode_mean_seconds"] = {
            g: {n: round(float(np.mean([u["seconds"] for u in by_seed.values()])), 1)
                for n, by_seed in plan.runs[g].items()} for g in plan.groups if g}
    return context
