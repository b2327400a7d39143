"""Which units a study needs, which of them an earlier run already finished, and running the rest side by side in
worker processes."""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..train.settings import RLSettings, SFTSettings
from .config import ExperimentConfig
from .units import (VARIANT_RESULT, WARM, WARM_RESULT, StudyData, console, finished, variant_unit,
                    warm_start_unit)

Key = tuple[int, str]  # (seed, group): the units that share one warm start


def default_workers() -> int:
    """One worker per CPU core this process may use: independent units, one torch thread each, keep every core
    busy, which one unit's small matrix products cannot (README, "DRPO vs GRPO on CLIMB-mini", has timings)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def group_folder(out: Path, seed: int, group: str) -> Path:
    return out / f"seed{seed}" / group if group else out / f"seed{seed}"


def unit_groups(cfg: ExperimentConfig, variants: dict[str, dict]) -> dict[str, tuple[dict, dict, list[str] | None]]:
    """Groups of units sharing one warm start per seed, as (model settings, arms, domains): "" the main comparison;
    "ecg-<mode>" a warm start with that ECG token mode and the token-mode arm, trained and evaluated on the ECG
    domain only."""
    r = cfg.recipe
    groups: dict[str, tuple[dict, dict, list[str] | None]] = {"": (r.model, variants, None)}
    tv = cfg.ecg_token_variant
    for mode in cfg.ecg_token_modes:
        if tv in variants:
            groups[f"ecg-{mode}"] = ({**r.model, "ecg_token_mode": mode}, {tv: variants[tv]}, ["ecg"])
    return groups


@dataclass
class UnitPlan:
    """Every unit of a study: the finished ones' results, and what is left to run."""

    out: Path
    groups: dict[str, tuple[dict, dict, list[str] | None]]
    runs: dict[str, dict[str, dict[int, dict]]]          # group -> arm -> seed -> result
    warm_settings: dict[Key, dict] = field(default_factory=dict)
    todo_warm: list[Key] = field(default_factory=list)
    todo_variants: dict[Key, list[tuple[str, dict]]] = field(default_factory=lambda: defaultdict(list))
    units: int = 0
    reused: int = 0

    def left(self) -> int:
        return len(self.todo_warm) + sum(len(v) for v in self.todo_variants.values())


def plan_units(cfg: ExperimentConfig, variants: dict[str, dict], out: Path, split_info: dict) -> UnitPlan:
    """What each unit is, and which are already done: a unit whose result file holds the same settings is reused,
    a variant only when its seed's warm start is reused too."""
    r = cfg.recipe
    seeds = cfg.seed_list()
    groups = unit_groups(cfg, variants)
    plan = UnitPlan(out=out, groups=groups, runs={g: defaultdict(dict) for g in groups},
                    units=sum(len(seeds) * (1 + len(g[1])) for g in groups.values()))
    for group, (model_cfg, gvariants, domains) in groups.items():
        extra = cfg.ecg_token_settings if group else {}
        for seed in seeds:
            key = (seed, group)
            sdir = group_folder(out, seed, group)
            sft = SFTSettings(**{**asdict(r.sft), **extra.get("sft", {}), "seed": seed})
            ws = {"sft": asdict(sft), "model": model_cfg, "data": r.data.synthetic or asdict(r.data)}
            if cfg.warm_start_share < 1.0:
                ws["split"] = split_info
            if domains:
                ws["domains"] = domains
            plan.warm_settings[key] = ws
            done = finished(sdir / WARM_RESULT, ws)
            if done is not None and (sdir / "warm_start" / "config.json").is_file():
                plan.runs[group][WARM][seed] = done
                plan.reused += 1
            else:
                plan.todo_warm.append(key)
            for name, overrides in gvariants.items():
                rl = RLSettings(**{**r.rl, **overrides, **extra.get("rl", {}), "seed": seed})
                settings = {"rl": asdict(rl), "warm_start": ws}
                if domains:
                    settings["domains"] = domains
                res = finished(sdir / name / VARIANT_RESULT, settings)
                if res is not None and key not in plan.todo_warm:
                    plan.runs[group][name][seed] = res
                    plan.reused += 1
                else:
                    plan.todo_variants[key].append((name, settings))
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Running units: in this process, or in spawned worker processes that each receive the study's data once

_WORKER_DATA: StudyData | None = None


def _worker_init(data: StudyData, threads: int) -> None:
    """Worker process start: keep the run's data, and use ``threads`` cores so the workers do not contend."""
    import torch

    global _WORKER_DATA
    _WORKER_DATA = data
    torch.set_num_threads(threads)


def _run_unit(data: StudyData, name: str, args: tuple) -> dict:
    """One unit, quietly: the run's own bar shows progress; what the trainers print goes to the unit's train.log."""
    from transformers.utils import logging as hf_logging

    log_path = args[1] / ("warm_start.log" if name == WARM else "train.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            return (warm_start_unit if name == WARM else variant_unit)(data, *args)
    finally:
        hf_logging.enable_progress_bar()


def _in_worker(name: str, args: tuple) -> dict:
    return _run_unit(_WORKER_DATA, name, args)


def _label(key: Key, name: str) -> str:
    return f"seed {key[0]}{' ' + key[1] if key[1] else ''} {name}"


def _log(what: str, res: dict) -> None:
    m = res["metrics"].get("test") or next(iter(res["metrics"].values()))
    f1 = m["overall"].get("macro_f1")
    console.print(f"{what}: {res['seconds']:.0f} s train, {res['eval_seconds']:.0f} s eval; "
                  f"test macro-F1 {'-' if f1 is None else f'{f1:.3f}'}", highlight=False)


def worker_layout(plan: UnitPlan, workers: int | None) -> tuple[int, int]:
    """(worker processes, torch threads each): at most one worker per unit left, the cores shared between them."""
    import torch

    workers = max(1, min(workers or default_workers(), plan.left() or 1))
    threads = max(1, default_workers() // workers) if workers > 1 else torch.get_num_threads()
    return workers, threads


def run_units(plan: UnitPlan, data: StudyData, workers: int, threads: int, show_progress: bool = True) -> None:
    """Run what ``plan`` has left, filling ``plan.runs``; a seed's variants start once its warm start is saved.

    Every unit fixes its own seeds, so the numbers do not depend on the order units finish in.
    """
    # main warm starts first, then the token-mode ones (their arms can wait)
    queue: list[tuple[Key, str, tuple]] = [(key, WARM, (key[0], group_folder(plan.out, *key), plan.warm_settings[key]))
                                           for key in plan.todo_warm]

    def queue_variants(key: Key) -> None:
        sdir = group_folder(plan.out, *key)
        queue.extend((key, name, (sdir / "warm_start", sdir / name, settings))
                     for name, settings in plan.todo_variants.pop(key, []))

    for key in plan.warm_settings:
        if key not in plan.todo_warm:
            queue_variants(key)

    pool = None
    if workers > 1:
        import multiprocessing

        # spawn: a fresh interpreter per worker; forking a process that has used torch threads can hang
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(data, threads))
    pending: dict[Future, tuple[Key, str]] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress) as bar:
        task = bar.add_task("compare-estimators", total=plan.units, completed=plan.reused)

        def finish(key: Key, name: str, res: dict) -> None:
            plan.runs[key[1]][name][key[0]] = res
            _log(_label(key, name), res)
            bar.advance(task)
            if name == WARM:
                queue_variants(key)  # its variants can start now; main-group units go first
                queue.sort(key=lambda item: bool(item[0][1]))

        try:
            while queue or pending:
                if pool is None:  # one unit at a time in this process: simplest to debug, no start-up cost
                    key, name, args = queue.pop(0)
                    bar.update(task, description=_label(key, name))
                    finish(key, name, _run_unit(data, name, args))
                    continue
                while queue:  # the pool queues what exceeds its workers, in this order
                    key, name, args = queue.pop(0)
                    pending[pool.submit(_in_worker, name, args)] = (key, name)
                bar.update(task, description=f"{workers} workers, {len(pending)} units queued or running")
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    key, name = pending.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as exc:
                        raise RuntimeError(f"{_label(key, name)} failed: {exc} (finished units are kept; run the "
                                           f"same command again to continue)") from exc
                    finish(key, name, res)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def load_finished_runs(out: Path, groups: dict[str, tuple[dict, dict, list[str] | None]], seeds: list[int]
                       ) -> dict[str, dict[str, dict[int, dict]]]:
    """The result files a finished study left in ``out``, as group -> arm -> seed -> result."""
    runs: dict[str, dict[str, dict[int, dict]]] = {}
    for group, (_, gvariants, _) in groups.items():
        runs[group] = defaultdict(dict)
        for seed in seeds:
            sdir = group_folder(out, seed, group)
            paths = {WARM: sdir / WARM_RESULT, **{n: sdir / n / VARIANT_RESULT for n in gvariants}}
            for name, path in paths.items():
                if path.is_file():
                    runs[group][name][seed] = json.loads(path.read_text())
    return runs
