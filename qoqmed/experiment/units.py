"""The study's units of work, each built from the recipe's stages: a seed's supervised warm start, and RL from it
with one estimator variant; each writes its settings, timings and metrics to a JSON file in its folder."""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from ..data.schema import Record, load_records
from ..data.climb_mini import generate_climb_mini
from ..train.recipe import RecipeConfig, build_model, evaluate_records, label_sets_of, load_trained
from ..train.settings import ModelSettings, RLSettings, SFTSettings
from .config import ExperimentConfig

console = Console(stderr=True)

WARM = "warm start"           # the name the warm start goes by among the arms
SPLITS = ("val", "test")
WARM_RESULT = "warm_start_eval.json"   # in seed<k>/[ecg-<mode>/]
VARIANT_RESULT = "result.json"         # in seed<k>/[ecg-<mode>/]<variant>/


@dataclass
class StudyData:
    """What every unit of a run needs; sent once to each worker process."""

    recipe: RecipeConfig
    train: list[Record]             # every training row (the tokenizer's corpus)
    splits: dict[str, list[Record]]
    label_sets: dict | None
    warm_train: list[Record] = field(default_factory=list)  # what the warm start fits
    rl_train: list[Record] = field(default_factory=list)    # what RL trains on (disjoint unless the share is 1)


def finished(path: Path, settings: dict) -> dict | None:
    """The JSON at ``path`` when it was written with exactly ``settings`` (so the unit can be reused)."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None
    return done if done.get("settings") == json.loads(json.dumps(settings, default=str)) else None


def load_study_data(cfg: ExperimentConfig, out: Path) -> tuple[dict[str, list[Record]], dict | None]:
    """The train / val / test rows; the benchmark is generated once per data setting and reused after that."""
    r = cfg.recipe
    if r.data.synthetic is not None:
        settings = {"seed": r.seed, **r.data.synthetic}
        data_dir = out / "data"
        stats = finished(out / "data_settings.json", settings) and json.loads((data_dir / "stats.json").read_text())
        if not stats:
            with console.status("generating the CLIMB-mini benchmark"):
                stats = generate_climb_mini(data_dir, **settings, overwrite=True)
            (out / "data_settings.json").write_text(json.dumps({"settings": settings}, default=str))
        return {s: load_records(data_dir / f"{s}.jsonl") for s in ("train", "val", "test")}, stats
    outside = r.data.allow_outside_paths
    data = {"train": load_records(r.data.train, allow_outside=outside),
            "test": load_records(r.data.test, allow_outside=outside),
            "val": load_records(cfg.val, allow_outside=outside) if cfg.val else []}
    return data, None


def study_data(cfg: ExperimentConfig, data: dict[str, list[Record]], stats: dict | None) -> StudyData:
    splits = {s: data[s] for s in SPLITS if data[s]}
    warm_train, rl_train = split_warm_rl(data["train"], cfg.warm_start_share, cfg.recipe.seed)
    return StudyData(recipe=cfg.recipe, train=data["train"], splits=splits,
                     label_sets=label_sets_of([r for s in splits.values() for r in s], stats),
                     warm_train=warm_train, rl_train=rl_train)


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


def _rows(records: list[Record], domains: list[str] | None) -> list[Record]:
    return [x for x in records if x.domain in domains] if domains else records


def _evaluate_splits(data: StudyData, model, processor, path: Path, domains: list[str] | None = None) -> dict:
    res = {}
    for split, records in data.splits.items():
        m, _ = evaluate_records(model, processor, _rows(records, domains), path / f"eval_{split}", data.recipe.eval,
                                data.label_sets, show_progress=False)
        res[split] = {"overall": m["overall"], "domains": m["domains"]}
    return res


def warm_start_unit(data: StudyData, seed: int, sdir: Path, settings: dict) -> dict:
    """Build the tiny model, train the supervised warm start, save it to ``sdir/warm_start``, evaluate it."""
    from ..train.sft import warm_start  # the trainer (and TRL) only in the process that trains

    t = time.perf_counter()
    processor, model = build_model(ModelSettings.from_dict(settings["model"]), data.train, seed)
    rows = _rows(data.warm_train or data.train, settings.get("domains"))
    history = warm_start(model, processor, rows, sdir / "sft", SFTSettings(**{**settings["sft"], "progress_bar": False}))
    model.save_pretrained(sdir / "warm_start")
    processor.save_pretrained(sdir / "warm_start")
    shutil.rmtree(sdir / "sft", ignore_errors=True)  # trainer scratch; the model is in warm_start/
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    done = {"settings": settings, "seconds": round(train_s, 1), "train_rows": len(rows),
            "final_loss": history[-1]["loss"] if history else None,
            "n_params": sum(p.numel() for p in model.parameters()),
            "metrics": _evaluate_splits(data, model, processor, sdir / "warm_start_eval", settings.get("domains")),
            "eval_seconds": round(time.perf_counter() - t, 1)}
    (sdir / WARM_RESULT).write_text(json.dumps(done, indent=1, default=str))
    return done


def variant_unit(data: StudyData, model_dir: Path, vdir: Path, settings: dict) -> dict:
    """RL from the seed's warm start with one estimator variant, then evaluate the final model."""
    from ..train.rl import train_rl

    t = time.perf_counter()
    rows = _rows(data.rl_train or data.train, settings.get("domains"))
    logs = train_rl(model_dir, rows, vdir / "rl", RLSettings(**{**settings["rl"], "progress_bar": False}))
    rl_s = time.perf_counter() - t
    t = time.perf_counter()
    model, processor = load_trained(vdir / "rl" / "model")
    res = {"settings": settings, "seconds": round(rl_s, 1), "train_rows": len(rows),
           "metrics": _evaluate_splits(data, model, processor, vdir, settings.get("domains")),
           "eval_seconds": round(time.perf_counter() - t, 1), "curves": logs.get("domains", []),
           "probe": logs.get("probe_domains", [])}
    (vdir / VARIANT_RESULT).write_text(json.dumps(res, indent=1, default=str))
    return res
