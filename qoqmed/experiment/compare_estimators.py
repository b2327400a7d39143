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
    report.md, results.json, *.png

A unit whose result file exists with the same settings is reused, so an interrupted run can be continued by running
the same command again. Units run side by side in ``workers`` processes (default one per CPU core); a seed's
variants start once its warm start is saved. Each unit fixes its own seeds, so the order units finish in does not
change any number.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import shutil
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.schema import DOMAINS, Record, load_records
from ..train.recipe import RecipeConfig, read_config

console = Console(stderr=True)

# Variants compared by default; an estimator the installed trainer does not know is skipped and listed in the report.
DEFAULT_VARIANTS: dict[str, dict] = {
    "grpo": {"estimator": "grpo"},
    "drgrpo": {"estimator": "drgrpo"},
    "rloo": {"estimator": "rloo"},
    "disco": {"estimator": "disco"},
    "drpo-paper": {"estimator": "drpo", "drpo_mode": "paper", "drpo_history": None},
    "drpo-reference": {"estimator": "drpo", "drpo_mode": "reference"},
    "drpo-history256": {"estimator": "drpo", "drpo_mode": "paper", "drpo_history": 256},
}
METRICS = (("macro_f1", "macro-F1"), ("paper_balanced_accuracy", "paper balanced accuracy"),
           ("exact_match", "accuracy (exact match)"))
SPLITS = ("val", "test")
WARM = "warm start"


@dataclass
class ExperimentConfig:
    """A recipe (data, model, sft, rl, eval sections) plus the ``experiment`` section."""

    recipe: RecipeConfig
    seeds: int = 3
    baseline: str = "grpo"
    variants: dict[str, dict] = field(default_factory=lambda: copy.deepcopy(DEFAULT_VARIANTS))
    rare_share: float = 0.05        # a domain is "rare" when its share of training rows is below this
    val: str | None = None          # validation jsonl when the data are files (generated data carry their own)
    # share of the training rows (stratified by domain) the warm start trains on; RL trains on the disjoint rest.
    # 1.0: both use every row (the warm start has then fitted every question RL sees)
    warm_start_share: float = 1.0
    # ECG token modes compared on the ECG domain: per mode and seed a warm start and one arm trained and evaluated
    # on ECG rows only (the same rows for every mode), so the modes differ in the ECG encoder's output alone
    ecg_token_modes: list[str] = field(default_factory=list)
    ecg_token_variant: str | None = None  # the arm run per token mode (default: the first DRPO variant)
    ecg_token_settings: dict = field(default_factory=dict)  # sft / rl overrides for those units
    raw: dict = field(default_factory=dict)

    def seed_list(self) -> list[int]:
        return [self.recipe.seed + k for k in range(self.seeds)]


_EXPERIMENT_KEYS = {"seeds", "baseline", "variants", "rare_share", "val", "quick", "warm_start_share",
                    "ecg_token_modes", "ecg_token_variant", "ecg_token_settings"}


def _merge(base: dict, over: dict) -> dict:
    """Recursive dict update (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_experiment_config(path: str | Path, quick: bool = False, seeds: int | None = None) -> ExperimentConfig:
    """Read the YAML; ``quick`` applies the file's ``experiment.quick`` overrides; ``seeds`` overrides the count."""
    raw = read_config(path)
    exp = dict(raw.get("experiment") or {})
    unknown = set(exp) - _EXPERIMENT_KEYS
    if unknown:
        raise ValueError(f"config section 'experiment': unknown key(s) {sorted(unknown)}; "
                         f"expected {sorted(_EXPERIMENT_KEYS)}")
    if quick:
        if not exp.get("quick"):
            raise ValueError(f"{path}: --quick needs an 'experiment.quick' section of overrides")
        raw = _merge(raw, exp["quick"])
        exp = dict(raw.get("experiment") or {})
    exp.pop("quick", None)
    recipe = RecipeConfig.from_dict({k: v for k, v in raw.items() if k != "experiment"})
    variants = exp.get("variants") or copy.deepcopy(DEFAULT_VARIANTS)
    if not isinstance(variants, dict) or not all(isinstance(v, dict) and "estimator" in v
                                                 for v in variants.values()):
        raise ValueError("experiment.variants must map a name to RL settings that include 'estimator'")
    _check_variants(variants, recipe.rl)
    modes = exp.get("ecg_token_modes") or []
    if not isinstance(modes, list):
        raise ValueError(f"experiment.ecg_token_modes must be a list of token modes, got {modes!r}")
    from ..modeling.ecg_encoder import TOKEN_MODES

    bad = [m for m in modes if m not in TOKEN_MODES]
    if bad:
        raise ValueError(f"experiment.ecg_token_modes: unknown mode(s) {bad}; choose from {list(TOKEN_MODES)}")
    token_variant = exp.get("ecg_token_variant")
    if token_variant is None and modes:
        token_variant = next((n for n, v in variants.items() if v["estimator"] == "drpo"), None)
        if token_variant is None:
            raise ValueError("experiment.ecg_token_modes needs a DRPO variant or experiment.ecg_token_variant")
    if token_variant is not None and token_variant not in variants:
        raise ValueError(f"experiment.ecg_token_variant={token_variant!r} is not one of the variants "
                         f"{list(variants)}")
    token_settings = exp.get("ecg_token_settings") or {}
    if not isinstance(token_settings, dict) or set(token_settings) - {"sft", "rl"} or not all(
            isinstance(v, dict) for v in token_settings.values()):
        raise ValueError(f"experiment.ecg_token_settings must map 'sft' and/or 'rl' to overrides, got "
                         f"{token_settings!r}")
    share = float(exp.get("warm_start_share", 1.0))
    if not 0.0 < share <= 1.0:
        raise ValueError(f"experiment.warm_start_share={share}: a share of the training rows in (0, 1]")
    cfg = ExperimentConfig(recipe=recipe, seeds=int(seeds if seeds is not None else exp.get("seeds", 3)),
                           baseline=str(exp.get("baseline", "grpo")), variants=variants,
                           rare_share=float(exp.get("rare_share", 0.05)), val=exp.get("val"),
                           warm_start_share=share, ecg_token_modes=list(modes), ecg_token_variant=token_variant,
                           ecg_token_settings=token_settings, raw=raw)
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    if cfg.baseline not in variants:
        raise ValueError(f"experiment.baseline={cfg.baseline!r} is not one of the variants {list(variants)}")
    if recipe.model.get("init", "tiny") != "tiny":
        raise ValueError("the comparison builds a tiny model per seed; model.init must be 'tiny'")
    return cfg


def _check_variants(variants: dict[str, dict], rl: dict) -> None:
    """Every variant must name a known estimator and only RL settings the trainer has, with valid values."""
    from ..train.settings import ESTIMATORS, RLSettings

    known = {f.name for f in fields(RLSettings)}
    for name, over in variants.items():
        if over["estimator"] not in ESTIMATORS:
            raise ValueError(f"experiment.variants.{name}: unknown estimator {over['estimator']!r}; "
                             f"choose one of {list(ESTIMATORS)}")
        bad = sorted(set(over) - known)
        if bad:
            raise ValueError(f"experiment.variants.{name}: unknown RL key(s) {bad}")
        try:
            RLSettings(**{**rl, **over, "progress_bar": False})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"experiment.variants.{name}: {exc}") from None


def split_warm_rl(train: list[Record], share: float, seed: int) -> tuple[list[Record], list[Record]]:
    """The warm start's rows and RL's rows: per domain a ``share`` of the rows (at least one, and at least one
    left for RL when the domain has two or more) for the warm start, the disjoint rest for RL. ``share`` 1.0: both
    get every row. The split depends on the data seed only, so every seed's warm start sees the same rows."""
    if share >= 1.0:
        return list(train), list(train)
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[Record]] = defaultdict(list)
    for x in train:
        by_domain[x.domain].append(x)
    warm_ids: set[str] = set()
    for d in sorted(by_domain):
        rows = sorted(by_domain[d], key=lambda x: x.id)
        k = int(round(share * len(rows)))
        k = min(max(k, 1), len(rows) - 1) if len(rows) >= 2 else len(rows)
        warm_ids.update(rows[i].id for i in rng.permutation(len(rows))[:k])
    return [x for x in train if x.id in warm_ids], [x for x in train if x.id not in warm_ids]


# ---------------------------------------------------------------------------------------------------------------
# Running


def _same(path: Path, settings: dict) -> dict | None:
    """The JSON at ``path`` when it was written with exactly ``settings`` (so the unit can be reused)."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None
    return done if done.get("settings") == json.loads(json.dumps(settings, default=str)) else None


def _load_data(cfg: ExperimentConfig, out: Path) -> tuple[dict[str, list[Record]], dict | None]:
    r = cfg.recipe
    if r.data.synthetic is not None:
        from ..data.synthetic import generate_climb_mini

        settings = {"seed": r.seed, **r.data.synthetic}
        data_dir = out / "data"
        stats = _same(out / "data_settings.json", settings) and json.loads((data_dir / "stats.json").read_text())
        if not stats:
            with console.status("generating the CLIMB-mini benchmark"):
                stats = generate_climb_mini(data_dir, **settings, overwrite=True)
            (out / "data_settings.json").write_text(json.dumps({"settings": settings}, default=str))
        return {s: load_records(data_dir / f"{s}.jsonl") for s in ("train", "val", "test")}, stats
    if not r.data.train or not r.data.test:
        raise ValueError("config section 'data' needs either 'synthetic' or 'train' and 'test' jsonl paths")
    outside = r.data.allow_outside_paths
    data = {"train": load_records(r.data.train, allow_outside=outside),
            "test": load_records(r.data.test, allow_outside=outside),
            "val": load_records(cfg.val, allow_outside=outside) if cfg.val else []}
    return data, None


def _available_estimators() -> tuple[str, ...]:
    from ..train.settings import ESTIMATORS

    return tuple(ESTIMATORS)


def default_workers() -> int:
    """One worker per CPU core this process may use: independent units, one torch thread each, keep every core
    busy, which one unit's small matrix products cannot (README, "DRPO vs GRPO on CLIMB-mini", has timings)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class _Shared:
    """What every unit of a run needs; sent once to each worker process."""

    recipe: RecipeConfig
    train: list[Record]             # every training row (the tokenizer's corpus)
    splits: dict[str, list[Record]]
    label_sets: dict | None
    warm_train: list[Record] = field(default_factory=list)  # what the warm start fits
    rl_train: list[Record] = field(default_factory=list)    # what RL trains on (disjoint unless the share is 1)


def _rows(records: list[Record], domains: list[str] | None) -> list[Record]:
    return [x for x in records if x.domain in domains] if domains else records


def _evaluate_splits(shared: _Shared, model, processor, path: Path, domains: list[str] | None = None) -> dict:
    from ..eval.evaluate import evaluate

    ev = shared.recipe.eval
    res = {}
    for split, records in shared.splits.items():
        records = _rows(records, domains)
        expected = [d for d in DOMAINS if any(x.domain == d for x in records)]
        m, _ = evaluate(model, processor, records, path / f"eval_{split}", batch_size=ev.batch_size,
                        max_new_tokens=ev.max_new_tokens, preset=ev.reward_preset, iou_reduce=ev.iou_reduce,
                        expected_domains=expected, label_sets=shared.label_sets,
                        show_progress=False)
        res[split] = {"overall": m["overall"], "domains": m["domains"]}
    return res


def _warm_start_unit(shared: _Shared, seed: int, sdir: Path, settings: dict) -> dict:
    """Build the tiny model, train the supervised warm start, save it to ``sdir/warm_start``, evaluate it."""
    import torch

    from ..modeling.tiny import TinySpec, build_tiny
    from ..train.sft import SFTSettings, warm_start

    r = shared.recipe
    t = time.perf_counter()
    torch.manual_seed(seed)
    corpus = [x.problem for x in shared.train] + [x.answer for x in shared.train]
    spec = TinySpec(**{k: v for k, v in settings["model"].items() if k != "init"})
    processor, model = build_tiny(corpus, spec, seed=seed)
    rows = _rows(shared.warm_train or shared.train, settings.get("domains"))
    history = warm_start(model, processor, rows, sdir / "sft", SFTSettings(**{**settings["sft"], "progress_bar": False}))
    model.save_pretrained(sdir / "warm_start")
    processor.save_pretrained(sdir / "warm_start")
    shutil.rmtree(sdir / "sft", ignore_errors=True)  # trainer scratch; the model is in warm_start/
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    done = {"settings": settings, "seconds": round(train_s, 1), "train_rows": len(rows),
            "final_loss": history[-1]["loss"] if history else None,
            "n_params": sum(p.numel() for p in model.parameters()),
            "metrics": _evaluate_splits(shared, model, processor, sdir / "warm_start_eval", settings.get("domains")),
            "eval_seconds": round(time.perf_counter() - t, 1)}
    (sdir / "warm_start_eval.json").write_text(json.dumps(done, indent=1, default=str))
    return done


def _variant_unit(shared: _Shared, model_dir: Path, vdir: Path, settings: dict) -> dict:
    """RL from the seed's warm start with one estimator variant, then evaluate the final model."""
    from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
    from ..train.rl import train_rl
    from ..train.settings import RLSettings

    t = time.perf_counter()
    rows = _rows(shared.rl_train or shared.train, settings.get("domains"))
    logs = train_rl(model_dir, rows, vdir / "rl", RLSettings(**{**settings["rl"], "progress_bar": False}))
    rl_s = time.perf_counter() - t
    t = time.perf_counter()
    final = vdir / "rl" / "model"
    model = QoQMedForConditionalGeneration.from_pretrained(final)
    processor = QoQMedProcessor.from_pretrained(final)
    res = {"settings": settings, "seconds": round(rl_s, 1), "train_rows": len(rows),
           "metrics": _evaluate_splits(shared, model, processor, vdir, settings.get("domains")),
           "eval_seconds": round(time.perf_counter() - t, 1), "curves": logs.get("domains", []),
           "probe": logs.get("probe_domains", [])}
    (vdir / "result.json").write_text(json.dumps(res, indent=1, default=str))
    return res


_WORKER_SHARED: _Shared | None = None


def _worker_init(shared: _Shared, threads: int) -> None:
    """Worker process start: keep the run's data, and use ``threads`` cores so the workers do not contend."""
    import torch

    global _WORKER_SHARED
    _WORKER_SHARED = shared
    torch.set_num_threads(threads)


def _run_unit(shared: _Shared, name: str, args: tuple) -> dict:
    """One unit, quietly: the run's own bar shows progress; what the trainers print goes to the unit's train.log."""
    from transformers.utils import logging as hf_logging

    log_path = args[1] / ("warm_start.log" if name == WARM else "train.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            return (_warm_start_unit if name == WARM else _variant_unit)(shared, *args)
    finally:
        hf_logging.enable_progress_bar()


def _in_worker(name: str, args: tuple) -> dict:
    return _run_unit(_WORKER_SHARED, name, args)


def run_compare_estimators(cfg: ExperimentConfig, out_dir: str | Path, show_progress: bool = True,
                           workers: int | None = None) -> dict:
    """Run every (seed, variant) unit, aggregate, write the report; return the ``results.json`` dict.

    ``workers`` processes run units side by side (default: one per CPU core), each with ``cores // workers``
    torch threads; a seed's variants start as soon as its warm start is saved. Every unit fixes its own seeds, so
    the numbers do not depend on the order units finish in.
    """
    import torch

    from ..train.settings import RLSettings
    from ..train.sft import SFTSettings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    known = _available_estimators()
    # the baseline first, then the config's order: tables and plots read left to right from it
    order = [cfg.baseline, *[n for n in cfg.variants if n != cfg.baseline]]
    variants = {n: cfg.variants[n] for n in order if cfg.variants[n]["estimator"] in known}
    skipped = {n: v["estimator"] for n, v in cfg.variants.items() if v["estimator"] not in known}
    if cfg.baseline not in variants:
        raise ValueError(f"baseline {cfg.baseline!r} uses an estimator this install lacks ({known})")
    for name in skipped:
        console.print(f"[yellow]skipping[/] {name}: estimator {skipped[name]!r} is not available (have {known})")

    t = time.perf_counter()
    data, stats = _load_data(cfg, out)
    data_seconds = time.perf_counter() - t
    train = data["train"]
    splits = {s: data[s] for s in SPLITS if data[s]}
    label_sets = ({r.dataset: stats["labels"][r.domain] for s in splits.values() for r in s}
                  if stats and "labels" in stats else None)
    r = cfg.recipe
    warm_train, rl_train = split_warm_rl(train, cfg.warm_start_share, r.seed)
    shared = _Shared(recipe=r, train=train, splits=splits, label_sets=label_sets, warm_train=warm_train,
                     rl_train=rl_train)

    from ..modeling.tiny import TinySpec

    seeds = cfg.seed_list()
    main_mode = r.model.get("ecg_token_mode", TinySpec.ecg_token_mode)
    # groups of units sharing one warm start per seed: "" the main comparison; "ecg-<mode>" a warm start with that
    # ECG token mode and the token-mode arm, trained and evaluated on the ECG domain only
    groups: dict[str, tuple[dict, dict, list[str] | None]] = {"": (r.model, variants, None)}
    tv = cfg.ecg_token_variant
    for mode in cfg.ecg_token_modes:
        if tv in variants:
            groups[f"ecg-{mode}"] = ({**r.model, "ecg_token_mode": mode}, {tv: variants[tv]}, ["ecg"])
    units = sum(len(seeds) * (1 + len(g[1])) for g in groups.values())
    gruns: dict[str, dict[str, dict[int, dict]]] = {g: defaultdict(dict) for g in groups}
    runs = gruns[""]
    reused = 0
    split_info = {"warm_start_share": cfg.warm_start_share, "warm_rows": len(warm_train), "rl_rows": len(rl_train),
                  "disjoint": cfg.warm_start_share < 1.0}

    def gdir(seed: int, group: str) -> Path:
        return out / f"seed{seed}" / group if group else out / f"seed{seed}"

    # what each unit is, and which are already done (same settings on disk)
    ws_settings, todo_warm, todo_variants = {}, [], defaultdict(list)
    for group, (model_cfg, gvariants, domains) in groups.items():
        extra = cfg.ecg_token_settings if group else {}
        for seed in seeds:
            key = (seed, group)
            sdir = gdir(seed, group)
            sft = SFTSettings(**{**asdict(r.sft), **extra.get("sft", {}), "seed": seed})
            ws = {"sft": asdict(sft), "model": model_cfg, "data": r.data.synthetic or asdict(r.data)}
            if cfg.warm_start_share < 1.0:
                ws["split"] = split_info
            if domains:
                ws["domains"] = domains
            ws_settings[key] = ws
            done = _same(sdir / "warm_start_eval.json", ws)
            if done is not None and (sdir / "warm_start" / "config.json").is_file():
                gruns[group][WARM][seed] = done
                reused += 1
            else:
                todo_warm.append(key)
            for name, overrides in gvariants.items():
                rl = RLSettings(**{**r.rl, **overrides, **extra.get("rl", {}), "seed": seed})
                settings = {"rl": asdict(rl), "warm_start": ws}
                if domains:
                    settings["domains"] = domains
                res = _same(sdir / name / "result.json", settings)
                if res is not None and key not in todo_warm:
                    gruns[group][name][seed] = res
                    reused += 1
                else:
                    todo_variants[key].append((name, settings))

    todo = len(todo_warm) + sum(len(v) for v in todo_variants.values())
    workers = max(1, min(workers or default_workers(), todo or 1))
    threads = max(1, default_workers() // workers) if workers > 1 else torch.get_num_threads()
    # main warm starts first, then the token-mode ones (their arms can wait)
    queue: list[tuple[tuple, str, tuple]] = [(key, WARM, (key[0], gdir(*key), ws_settings[key]))
                                             for key in todo_warm]

    def queue_variants(key: tuple) -> None:
        sdir = gdir(*key)
        queue.extend((key, name, (sdir / "warm_start", sdir / name, settings))
                     for name, settings in todo_variants.pop(key, []))

    for key in ws_settings:
        if key not in todo_warm:
            queue_variants(key)

    def label(key: tuple, name: str) -> str:
        return f"seed {key[0]}{' ' + key[1] if key[1] else ''} {name}"

    pool = None
    if workers > 1:
        import multiprocessing

        # spawn: a fresh interpreter per worker; forking a process that has used torch threads can hang
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(shared, threads))
    pending: dict[Future, tuple[tuple, str]] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress) as bar:
        task = bar.add_task("compare-estimators", total=units, completed=reused)

        def finish(key: tuple, name: str, res: dict) -> None:
            gruns[key[1]][name][key[0]] = res
            _log(label(key, name), res)
            bar.advance(task)
            if name == WARM:
                queue_variants(key)  # its variants can start now; main-group units go first
                queue.sort(key=lambda item: bool(item[0][1]))

        try:
            while queue or pending:
                if pool is None:  # one unit at a time in this process: simplest to debug, no start-up cost
                    key, name, args = queue.pop(0)
                    bar.update(task, description=label(key, name))
                    finish(key, name, _run_unit(shared, name, args))
                    continue
                while queue:  # the pool queues what exceeds its workers, in this order
                    key, name, args = queue.pop(0)
                    pending[pool.submit(_in_worker, name, args)] = (key, name)
                bar.update(task, description=f"{workers} workers, {len(pending)} units queued or running")
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    key, name = pending.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as exc:
                        raise RuntimeError(f"{label(key, name)} failed: {exc} (finished units are kept; run the "
                                           f"same command again to continue)") from exc
                    finish(key, name, res)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    wall = time.perf_counter() - t_start
    timings = {name: [runs[name][s]["seconds"] for s in seeds] for name in [WARM, *variants]}
    n_params = runs[WARM][seeds[0]].get("n_params")
    context = {
        "seeds": seeds, "variants": {n: variants[n] for n in variants}, "skipped_variants": skipped,
        "baseline": cfg.baseline, "rl": {k: v for k, v in r.rl.items()}, "sft": asdict(r.sft), "model": r.model,
        "n_params": n_params, "data": r.data.synthetic or asdict(r.data),
        "train_rows": len(train), "split_rows": {s: len(v) for s, v in splits.items()},
        "warm_start_share": cfg.warm_start_share, "warm_start_rows": len(warm_train), "rl_rows": len(rl_train),
        "warm_rl_disjoint": not ({x.id for x in warm_train} & {x.id for x in rl_train}),
        "warm_start_rows_per_domain": _counts(warm_train), "rl_rows_per_domain": _counts(rl_train),
        "model_ecg_token_mode": main_mode,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        "workers": workers, "threads_per_worker": threads,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(wall, 1), "data_seconds": round(data_seconds, 1), "units": units,
        "units_reused": reused,
        "units_seconds_total": round(sum(u["seconds"] + u.get("eval_seconds", 0.0)
                                         for by_seed in runs.values() for u in by_seed.values()), 1),
        "mean_seconds": {k: round(float(np.mean(v)), 1) for k, v in timings.items()},
    }
    if len(groups) > 1:
        context["token_mode_mean_seconds"] = {
            g: {n: round(float(np.mean([u["seconds"] for u in by_seed.values()])), 1)
                for n, by_seed in gruns[g].items()} for g in groups if g}
        context["units_seconds_total"] = round(sum(u["seconds"] + u.get("eval_seconds", 0.0)
                                                   for g in gruns.values() for by_seed in g.values()
                                                   for u in by_seed.values()), 1)
    shares = _train_shares(train)
    runs = {n: runs[n] for n in (WARM, *variants)}  # the report's order, whatever order units finished in
    results = aggregate(runs, shares, cfg.rare_share, cfg.baseline, context)
    if cfg.ecg_token_modes:
        results["ecg_token_modes"] = _token_mode_summary(gruns, cfg.ecg_token_modes, main_mode, tv, seeds)
    write_outputs(results, runs, out)
    console.print(f"[bold green]done[/] in {wall:.0f} s: {out / 'report.md'}")
    return results


def _log(what: str, res: dict) -> None:
    m = res["metrics"].get("test") or next(iter(res["metrics"].values()))
    f1 = m["overall"].get("macro_f1")
    console.print(f"{what}: {res['seconds']:.0f} s train, {res['eval_seconds']:.0f} s eval; "
                  f"test macro-F1 {'-' if f1 is None else f'{f1:.3f}'}", highlight=False)


def _counts(records: list[Record]) -> dict[str, int]:
    c = defaultdict(int)
    for x in records:
        c[x.domain] += 1
    return {d: c[d] for d in DOMAINS if c[d]}


def _train_shares(train: list[Record]) -> dict[str, float]:
    counts = defaultdict(int)
    for x in train:
        counts[x.domain] += 1
    return {d: counts[d] / len(train) for d in DOMAINS if counts[d]}


# ---------------------------------------------------------------------------------------------------------------
# Aggregation


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
        table: dict[str, Any] = {}
        for n in names:
            per = [runs[n][s]["metrics"][split] for s in seeds]
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
            table[n] = entry
        # relative change vs the baseline (of the seed means) and seed-paired differences in overall macro-F1
        for n in names:
            for key, _ in METRICS:
                e, b = table[n][key], table[baseline][key]
                e["rel_vs_baseline"] = {
                    "overall": _rel(e["overall"]["mean"], b["overall"]["mean"]),
                    "rare": _rel(e["rare"]["mean"], b["rare"]["mean"]),
                    "abundant": _rel(e["abundant"]["mean"], b["abundant"]["mean"]),
                    "domains": {d: _rel(e["domains"][d]["mean"], b["domains"][d]["mean"]) for d in domains}}
            diffs = [None if x is None or y is None else x - y
                     for x, y in zip(table[n]["macro_f1"]["overall"]["values"],
                                     table[baseline]["macro_f1"]["overall"]["values"])]
            table[n]["paired_f1_diff"] = {**_stat(diffs),
                                          "wins": sum(1 for x in diffs if x is not None and x > 0)}
        out["splits"][split] = table
    # DRPO's per-domain factor on the GRPO score, averaged over the steps that held the domain and over seeds
    scales = {}
    for n in names:
        if n == WARM:
            continue
        s = _series(runs, n, "mean_abs_scale/")
        if s:
            scales[n] = {d: float(np.mean([v for _, v in s[d]])) if s.get(d) else None for d in domains}
    out["drpo_scale"] = scales
    # variants whose every evaluation came out exactly the same (e.g. RLOO's advantage is Dr.GRPO's times
    # G/(G-1), a constant Adam normalises away), so a reader does not take two bars for two results
    same = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if all(runs[a][s]["metrics"] == runs[b][s]["metrics"] for s in seeds):
                same.append([a, b])
    out["identical_results"] = same
    # every arm against the warm start it started from: per seed, overall macro-F1 after RL minus before
    out["paired_vs_warm"] = {}
    for split, table in out["splits"].items():
        base = table[WARM]["macro_f1"]["overall"]["values"]
        per = {}
        for n in names:
            if n == WARM:
                continue
            diffs = [None if x is None or y is None else x - y
                     for x, y in zip(table[n]["macro_f1"]["overall"]["values"], base)]
            per[n] = {**_stat(diffs), "wins": sum(1 for x in diffs if x is not None and x > 0), "seeds": seeds}
        out["paired_vs_warm"][split] = per
    out["probe"] = {n: probe_summary([runs[n][s].get("probe", []) for s in seeds], seeds)
                    for n in names if n != WARM and any(runs[n][s].get("probe") for s in seeds)}
    # the default DRPO variant is chosen on validation macro-F1 only
    val = out["splits"].get("val")
    drpo = [n for n in names if n != WARM and runs[n][seeds[0]]["settings"]["rl"]["estimator"] == "drpo"]
    if val and drpo:
        best = max(drpo, key=lambda n: val[n]["macro_f1"]["overall"]["mean"] or -1.0)
        out["selected_drpo"] = {"variant": best, "by": "mean overall macro-F1 on the validation split",
                                "val": {n: val[n]["macro_f1"]["overall"]["mean"] for n in drpo},
                                "val_std": {n: val[n]["macro_f1"]["overall"]["std"] for n in drpo},
                                "val_rare": {n: val[n]["macro_f1"]["rare"]["mean"] for n in drpo}}
    return out


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


def _token_mode_summary(gruns: dict, modes: list[str], main_mode: str, variant: str, seeds: list[int]) -> dict:
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


# ---------------------------------------------------------------------------------------------------------------
# Report and plots


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def _metric_table(res: dict, split: str, key: str) -> list[str]:
    t = res["splits"][split]
    doms = res["domains"]
    head = ["estimator", *[f"{d} ({res['train_share'][d]:.1%})" for d in doms], "rare", "abundant", "**overall**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in res["variants"]:
        e = t[n][key]
        lines.append("| " + " | ".join([n, *[_ms(e["domains"][d]) for d in doms], _ms(e["rare"]), _ms(e["abundant"]),
                                        f"**{_ms(e['overall'])}**"]) + " |")
    return lines


def _rel_table(res: dict, split: str, key: str) -> list[str]:
    t = res["splits"][split]
    doms = res["domains"]
    head = ["estimator", *doms, "rare", "abundant", "**overall**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in res["variants"]:
        rel = t[n][key]["rel_vs_baseline"]
        lines.append("| " + " | ".join([n, *[_pct(rel["domains"][d]) for d in doms], _pct(rel["rare"]),
                                        _pct(rel["abundant"]), f"**{_pct(rel['overall'])}**"]) + " |")
    return lines


def _summary_table(res: dict, split: str) -> list[str]:
    t = res["splits"][split]
    base = res["context"]["baseline"]
    lines = [f"| estimator | overall macro-F1 | rare-domain macro-F1 | abundant-domain macro-F1 | "
             f"overall change vs {base} | rare change vs {base} | paired Δ overall F1 vs {base} (seeds won) | "
             f"paper bal. acc. | accuracy | mean IoU | boxes per answer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in res["variants"]:
        e = t[n]["macro_f1"]
        p = t[n]["paired_f1_diff"]
        paired = "-" if n == base or p["mean"] is None else (
            f"{p['mean']:+.3f}" + (f" ± {p['std']:.3f}" if p["std"] is not None else "") + f" ({p['wins']}/{p['n']})")
        lines.append(f"| {n} | {_ms(e['overall'])} | {_ms(e['rare'])} | {_ms(e['abundant'])} | "
                     f"{_pct(e['rel_vs_baseline']['overall'])} | {_pct(e['rel_vs_baseline']['rare'])} | {paired} | "
                     f"{_ms(t[n]['paper_balanced_accuracy']['overall'])} | {_ms(t[n]['exact_match']['overall'])} | "
                     f"{_ms(t[n]['iou_mean'])} | {_ms(t[n]['boxes_per_answer'])} |")
    return lines


def _paired_warm_section(res: dict, split: str) -> list[str]:
    per = res.get("paired_vs_warm", {}).get(split)
    if not per:
        return []
    seeds = res["context"]["seeds"]
    lines = [f"## After RL minus the warm start ({split} split, overall macro-F1, paired by seed)", "",
             "| arm | paired Δ mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds above |",
             "|" + "---|" * (len(seeds) + 3)]
    for n, p in per.items():
        lines.append(f"| {n} | " + ("-" if p["mean"] is None else f"{p['mean']:+.3f}"
                                     + (f" ± {p['std']:.3f}" if p["std"] is not None else ""))
                     + " | " + " | ".join("-" if v is None else f"{v:+.3f}" for v in p["values"])
                     + f" | {p['wins']}/{p['n']} |")
    return lines + [""]


def _probe_section(res: dict) -> list[str]:
    probe = res.get("probe")
    if not probe:
        return []
    seeds = [str(s) for s in res["context"]["seeds"]]
    lines = ["## Probe reward at step 0 vs last step, per arm and seed", "",
             "The probe set: a fixed set of RL training questions per domain, sampled as in RL (rollouts, "
             "temperature) at step 0 (the warm start) and every `probe_steps`; reward = unweighted mean over "
             "domains.", "",
             "| arm | " + " | ".join(f"seed {s}: start → end" for s in seeds) + " | mean rise | rises on every "
             "seed? |", "|" + "---|" * (len(seeds) + 3)]
    for n, p in probe.items():
        cells = []
        for s in seeds:
            e = p["per_seed"].get(s)
            cells.append("-" if e is None else f"{e['start']:.3f} → {e['end']:.3f} (step {e['end_step']})")
        r = p["rise"]
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + ("-" if r["mean"] is None else f"{r['mean']:+.3f}")
                     + f" | {'yes' if p['rises_every_seed'] else 'no'} |")
    return lines + [""]


def _token_rows(tm: dict) -> str:
    rows = next((e.get("train_rows") for e in tm["modes"].values() if e.get("train_rows")), None) or {}
    return f"warm start {rows.get(WARM, '-')}, RL {rows.get(tm['variant'], '-')}"


def _token_mode_section(res: dict, split: str) -> list[str]:
    tm = res.get("ecg_token_modes")
    if not tm or not tm["modes"]:
        return []
    v = tm["variant"]
    lines = [f"## ECG token modes (ECG domain only, {split} split, macro-F1)", "",
             f"Per mode and seed a warm start and the {v} arm, both trained on the ECG rows only (the same rows "
             f"for every mode: {_token_rows(tm)}), so the modes differ in the ECG encoder alone; the main "
             f"comparison's model uses {res['context'].get('model_ecg_token_mode')}.", "",
             f"| ECG token mode | tokens per record | warm start | {v} | paired RL gain | train s (warm / RL) |",
             "|---|---|---|---|---|---|"]
    for mode, e in tm["modes"].items():
        if split not in e:
            continue
        t = e[split]
        sec = e["seconds"]
        lines.append(f"| {mode}{' (main)' if e['main_model_mode'] else ''} | {e['tokens']} | {_ms(t[WARM])} | "
                     f"{_ms(t[v])} | " + ("-" if t["paired_rl_gain"]["mean"] is None
                                           else f"{t['paired_rl_gain']['mean']:+.3f}")
                     + f" | {_f(sec.get(WARM), 0)} / {_f(sec.get(v), 0)} |")
    return lines + [""]


def write_outputs(res: dict, runs: dict, out: Path) -> dict[str, Path]:
    """results.json, report.md and the plots."""
    paths = {"results": out / "results.json", "report": out / "report.md"}
    plots = {"f1_by_domain": plot_f1_by_domain(res, out / "f1_by_domain.png"),
             "learning_curves": plot_learning_curves(runs, res, out / "learning_curves.png"),
             "drpo_scales": plot_drpo_scales(runs, res, out / "drpo_scales.png"),
             "probe_curves": plot_probe_curves(res, out / "probe_curves.png")}
    res["plots"] = {k: v.name for k, v in plots.items() if v is not None}
    paths["results"].write_text(json.dumps(res, indent=1, default=str))
    c = res["context"]
    split = "test" if "test" in res["splits"] else next(iter(res["splits"]))
    lines = [
        "# qoqmed: estimator comparison on CLIMB-mini", "",
        "Synthetic data and a tiny model: this checks the *mechanism* of DRPO against GRPO and other baselines at "
        "laptop scale. It says nothing about clinical ability.", "",
        "## What was run", "",
        f"- seeds: {', '.join(map(str, c['seeds']))}; one supervised warm start per seed, shared by every "
        f"estimator of that seed; each estimator then gets the same RL budget from it",
        f"- estimators: {', '.join(f'{n} ({json.dumps(v)})' for n, v in c['variants'].items())}",
    ]
    if c["skipped_variants"]:
        lines.append(f"- skipped (estimator not available in this install): {c['skipped_variants']}")
    lines += [
        f"- RL budget (common to all): {json.dumps(c['rl'])}",
        f"- warm start: {json.dumps({k: c['sft'][k] for k in ('epochs', 'batch_size', 'learning_rate')})}; "
        f"model {json.dumps(c['model'])} ({_f((c['n_params'] or 0) / 1e6, 2)}M parameters)",
        f"- data: {json.dumps(c['data'])}: {c['train_rows']} train rows; evaluation rows "
        f"{json.dumps(c['split_rows'])} (val/test have equal rows per domain)",
        f"- warm start / RL rows: warm_start_share {c.get('warm_start_share', 1.0)}: the warm start fits "
        f"{c.get('warm_start_rows', c['train_rows'])} rows, RL trains on {c.get('rl_rows', c['train_rows'])} "
        + ("disjoint rows (stratified by domain)" if c.get("warm_rl_disjoint") and c.get('warm_start_share', 1) < 1
           else "rows (the same rows)")
        + f"; per domain warm {json.dumps(c.get('warm_start_rows_per_domain', {}))}, "
          f"RL {json.dumps(c.get('rl_rows_per_domain', {}))}",
        f"- rare domains (train share < {res['rare_share_threshold']:.0%}): {', '.join(res['rare_domains']) or '-'}; "
        f"abundant: {', '.join(res['abundant_domains'])}",
        f"- machine: {c['machine']}; load average at start {c['load_average_start']}, at end "
        f"{c['load_average_end']} (other processes may have shared the CPU); {c.get('workers', 1)} worker "
        f"process(es) with {c.get('threads_per_worker', '?')} torch thread(s) each",
        f"- time: training + evaluation of all {c['units']} units {c['units_seconds_total']:.0f} s "
        f"({c['units_seconds_total'] / 60:.1f} min; mean training time per unit: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in c["mean_seconds"].items()) + "); this invocation "
        f"{c['wall_seconds']:.0f} s wall ({c['wall_seconds'] / 60:.1f} min), {c['units_reused']} of {c['units']} "
        "units reused from an earlier one",
        "",
        "Values are mean ± sample standard deviation over seeds. Rare / abundant: per seed the unweighted mean over "
        "the group's domains. Relative change: 100 × (estimator − baseline) / baseline of the seed means. Paired Δ: "
        "per seed, the estimator's overall macro-F1 minus the baseline's, from the same warm start.", "",
        *([f"Identical evaluations (every seed and split): "
           + "; ".join(" = ".join(pair) for pair in res["identical_results"])
           + ". A constant factor on all advantages (RLOO's is Dr.GRPO's times G/(G-1)) does not change an "
             "Adam update, so such runs coincide.", ""] if res.get("identical_results") else []),
        f"## Summary ({split} split)", "", *_summary_table(res, split), "",
        *_paired_warm_section(res, split), *_probe_section(res), *_token_mode_section(res, split),
    ]
    sel = res.get("selected_drpo")
    if sel:
        t = res["splits"][split][sel["variant"]]["macro_f1"]["overall"]
        lines += ["## Choosing the default DRPO variant (validation split only)", "",
                  "| DRPO variant | val overall macro-F1 (mean ± std) | val rare-domain macro-F1 |", "|---|---|---|",
                  *[f"| {n} | {_f(v)}" + (f" ± {sel['val_std'][n]:.3f}" if sel["val_std"].get(n) is not None
                                          else "") + f" | {_f(sel['val_rare'].get(n))} |"
                    for n, v in sel["val"].items()], "",
                  f"Selected by {sel['by']}: **{sel['variant']}** (its {split} overall macro-F1: {_ms(t)}).", ""]
    if res.get("drpo_scale"):
        doms = res["domains"]
        lines += ["## DRPO per-domain scale (mean |A / s| over training: the factor DRPO puts on the GRPO score)",
                  "", "| variant | " + " | ".join(f"{d} ({res['train_share'][d]:.1%})" for d in doms) + " |",
                  "|" + "---|" * (len(doms) + 1),
                  *[f"| {n} | " + " | ".join(_f(v.get(d), 2) for d in doms) + " |"
                    for n, v in res["drpo_scale"].items()], ""]
    for key, title in METRICS:
        lines += [f"## {title} per domain ({split} split; train share in brackets)", "",
                  *_metric_table(res, split, key), ""]
    lines += [f"## macro-F1 change vs {c['baseline']} per domain ({split} split)", "",
              *_rel_table(res, split, "macro_f1"), ""]
    if "val" in res["splits"] and split != "val":
        lines += ["## macro-F1 per domain (validation split)", "", *_metric_table(res, "val", "macro_f1"), ""]
    lines += ["## Plots", ""]
    captions = {"f1_by_domain": "Test macro-F1 per domain (mean ± std over seeds)",
                "learning_curves": "Training reward per domain over RL steps (mean over seeds, binned)",
                "drpo_scales": "DRPO mean |advantage scale| per domain over training",
                "probe_curves": "Probe-set reward over RL steps (mean over seeds and domains, per arm)"}
    for k, name in res["plots"].items():
        lines += [f"![{captions[k]}]({name})", ""]
    paths["report"].write_text("\n".join(lines) + "\n")
    return paths


def _binned(points: list[tuple[int, float]], n_bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per step bin (steps pooled over seeds); rare domains appear in few batches."""
    if not points:
        return np.array([]), np.array([])
    steps = np.array([p[0] for p in points], dtype=float)
    vals = np.array([p[1] for p in points], dtype=float)
    edges = np.linspace(steps.min(), steps.max() + 1e-9, n_bins + 1)
    idx = np.clip(np.digitize(steps, edges) - 1, 0, n_bins - 1)
    xs, ys = [], []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            xs.append(steps[sel].mean())
            ys.append(vals[sel].mean())
    return np.array(xs), np.array(ys)


def _series(runs: dict, name: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for res in runs[name].values():
        for entry in res.get("curves", []):
            for key, value in entry.items():
                if key.startswith(prefix) and value is not None:
                    out[key.split("/", 1)[1]].append((entry["step"], float(value)))
    return out


def _grid(n: int):
    from matplotlib.figure import Figure

    cols = 3
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=110)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def plot_f1_by_domain(res: dict, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    split = "test" if "test" in res["splits"] else next(iter(res["splits"]), None)
    if split is None:
        return None
    t = res["splits"][split]
    doms = [*res["domains"], "rare", "abundant", "overall"]
    names = res["variants"]
    fig = Figure(figsize=(max(9, 1.3 * len(doms)), 4.5), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(len(doms))
    for i, n in enumerate(names):
        e = t[n]["macro_f1"]
        stats = [e["domains"][d] if d in e["domains"] else e[d] for d in doms]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        errs = [s["std"] or 0.0 for s in stats]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=n)
    ax.set_xticks(x, [f"{d}\n{res['train_share'][d]:.1%}" if d in res["train_share"] else d for d in doms],
                  fontsize=7)
    ax.set_ylabel(f"{split} macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"macro-F1 per domain ({split}; domains by train share; mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(names)))
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_learning_curves(runs: dict, res: dict, path: Path) -> Path | None:
    names = [n for n in res["variants"] if n != WARM]
    series = {n: _series(runs, n, "reward/") for n in names}
    doms = [d for d in res["domains"] if any(d in s for s in series.values())]
    if not doms:
        return None
    fig, axes = _grid(len(doms))
    for ax, d in zip(axes, doms):
        for n in names:
            xs, ys = _binned(series[n].get(d, []))
            if len(xs):
                ax.plot(xs, ys, marker=".", label=n)
        ax.set_title(f"{d} ({res['train_share'][d]:.1%} of train)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel("batch reward", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.suptitle("training reward per domain (mean over seeds, binned by step)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_probe_curves(res: dict, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    probe = res.get("probe")
    if not probe:
        return None
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    for n, p in probe.items():
        if p["curve"]:
            xs, ys = zip(*[(c[0], c[1]) for c in p["curve"]])
            ax.plot(xs, ys, marker=".", label=n, linestyle="--" if n.startswith("drpo") else "-")
    ax.set_xlabel("RL step")
    ax.set_ylabel("probe reward (mean over domains)")
    ax.set_title("probe-set reward per arm (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_drpo_scales(runs: dict, res: dict, path: Path) -> Path | None:
    names = [n for n in res["variants"] if n != WARM and _series(runs, n, "mean_abs_scale/")]
    if not names:
        return None
    fig, axes = _grid(len(names))
    for ax, n in zip(axes, names):
        s = _series(runs, n, "mean_abs_scale/")
        for d in res["domains"]:
            xs, ys = _binned(s.get(d, []))
            if len(xs):
                ax.plot(xs, ys, marker=".", label=f"{d} ({res['train_share'][d]:.1%})")
        ax.set_yscale("log")
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel("mean |A / s| (factor on GRPO score)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("DRPO per-domain advantage scale over training (mean over seeds, binned)")
    fig.tight_layout()
    fig.savefig(path)
    return path
