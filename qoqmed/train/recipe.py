"""The end-to-end recipe a YAML config describes: data -> model -> warm start -> RL -> evaluation -> report.

Every stage writes into one run folder, so a run can be inspected afterwards. Under ``accelerate launch``
(several processes) the training stages run in every process and the rest (data generation, evaluation,
report) on the main process only.

    run/
      data/                      the synthetic benchmark (when the config asks for one)
      sft_model/                 model after the supervised warm start
      rl/                        RL logs (rl_logs.json, rl_metrics.csv, checkpoints); rl/model is the final model
                                 (under LoRA an adapter folder; rl/merged with lora.merge)
      eval_sft/, eval/           predictions.jsonl of the warm-started and the final model on the test split
      report.md, metrics.json, *.png
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ..data.climb_mini import generate_climb_mini
from ..data.domains import DOMAINS
from ..data.schema import Record, load_records
from ..eval.curves import plot_probe_curves, plot_rl_curves
from ..eval.evaluate import evaluate
from ..eval.report import print_summary, write_report
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from ..modeling.lora import load_model_and_processor
from ..modeling.tiny import build_tiny
from .settings import DataSection, EvalSection, LoRASettings, ModelSettings, RLSettings, SFTSettings, section
from .sharding import is_sharded

console = Console(stderr=True)


def read_config(path: str | Path) -> dict:
    """A YAML config file as a mapping of sections; unreadable or malformed files are clear ValueErrors."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections")
    return raw


@dataclass
class RecipeConfig:
    """A recipe, every section checked when it is built. ``model`` and ``rl`` keep the mappings the YAML gave (the
    estimator study layers its variants' overrides on them); :attr:`model_settings` and :meth:`rl_settings` are
    their typed forms."""

    seed: int = 0
    data: DataSection = field(default_factory=lambda: DataSection(synthetic={}))
    model: dict = field(default_factory=lambda: {"init": "tiny"})
    sft: SFTSettings = field(default_factory=SFTSettings)
    rl: dict = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    lora: LoRASettings | None = None   # adapters (peft) instead of full fine-tuning, in lora.stages
    resume: bool = False               # continue RL from the newest checkpoint in run/rl

    def __post_init__(self) -> None:
        self.model_settings = ModelSettings.from_dict(self.model)
        rl = section(RLSettings, self.rl, "rl")  # unknown keys and bad values fail here, before any work
        if self.lora is not None and "rl" in self.lora.stages:
            self.lora.check_freeze(rl.freeze)
        styles = {"sft": self.sft.prompt_style, "rl": rl.prompt_style, "eval": self.eval.prompt_style}
        if len(set(styles.values())) > 1:  # a model is evaluated with the prompt it was trained with
            raise ValueError("sft.prompt_style, rl.prompt_style and eval.prompt_style must agree, got "
                             + ", ".join(f"{k}: {v}" for k, v in styles.items()))

    def rl_settings(self) -> RLSettings:
        """The ``rl`` section as settings, seeded with the recipe's seed unless the section sets its own."""
        return RLSettings(**{"seed": self.seed, **self.rl})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RecipeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(
            seed=int(raw.get("seed", 0)),
            data=section(DataSection, raw.get("data"), "data"),
            model=dict(raw.get("model") or {"init": "tiny"}),
            sft=section(SFTSettings, raw.get("sft"), "sft"),
            rl=dict(raw.get("rl") or {}),
            eval=section(EvalSection, raw.get("eval"), "eval"),
            lora=section(LoRASettings, raw["lora"], "lora") if raw.get("lora") is not None else None,
            resume=bool(raw.get("resume", False)),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> RecipeConfig:
        return cls.from_dict(read_config(path))


def _load_data(cfg: RecipeConfig, run: Path) -> tuple[list[Record], list[Record], dict | None]:
    if cfg.data.synthetic is not None:
        info_path = run / "data" / "generation.json"
        # a resumed run keeps the data it was trained on; anything else there is a leftover of an interrupted run
        if _state().is_main_process and not (cfg.resume and info_path.exists()):
            with console.status("generating the CLIMB-mini benchmark"):
                info = generate_climb_mini(run / "data", overwrite=True, **{"seed": cfg.seed, **cfg.data.synthetic})
            info_path.write_text(json.dumps(info, default=str))
        _state().wait_for_everyone()
        info = json.loads(info_path.read_text())
        return load_records(run / "data" / "train.jsonl"), load_records(run / "data" / "test.jsonl"), info
    outside = cfg.data.allow_outside_paths
    return (load_records(cfg.data.train, allow_outside=outside), load_records(cfg.data.test, allow_outside=outside),
            None)


def _val_records(cfg: RecipeConfig, run: Path) -> list[Record] | None:
    """Validation records for periodic evaluation: data.val, or the synthetic benchmark's val split."""
    if cfg.data.val:
        return load_records(cfg.data.val, allow_outside=cfg.data.allow_outside_paths)
    if cfg.data.synthetic is not None and (run / "data" / "val.jsonl").exists():
        return load_records(run / "data" / "val.jsonl")
    return None


def _state():
    """The process group of this run: one process, or several under ``accelerate launch`` / torchrun."""
    from accelerate import PartialState

    # CPU processes join a gloo group only when asked to (as the trainers' use_cpu does): without it, processes
    # started by `accelerate launch` on a machine without GPUs would each take themselves for the main one
    return PartialState(cpu=not torch.cuda.is_available())


def end_distributed() -> None:
    """After the last collective step: every process waits for the others, then the process group is taken down.

    Processes that leave one by one with the group still up can abort in its teardown (a peer's connection closes
    under a pending read); taking it down together avoids that, and lets the main process evaluate alone for as
    long as it needs without the others waiting at a barrier that could time out."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# What a run writes into its folder; --overwrite removes exactly these, never anything else a user keeps there.
RUN_OUTPUTS = ("config.yaml", "data", "sft", "sft_model", "rl", "eval_sft", "eval", "metrics.json", "report.md",
               "per_domain_f1.png", "confusion_*.png", "rl_reward_by_domain.png", "rl_probe_reward.png")


def previous_run_outputs(run: Path) -> list[Path]:
    """The outputs of an earlier run (complete or interrupted) in ``run``, in RUN_OUTPUTS order."""
    return [p for pattern in RUN_OUTPUTS for p in sorted(run.glob(pattern))] if run.is_dir() else []


def _prepare_run_folder(cfg: RecipeConfig, run: Path, overwrite: bool, remove: bool) -> None:
    """A folder with an earlier run is continued (``cfg.resume``), replaced (``overwrite``; the outputs are deleted
    where ``remove``, the main process) or refused in one line (in every process, so none waits for the others)."""
    previous = previous_run_outputs(run)
    if not previous or cfg.resume or (overwrite and not remove):
        return
    if not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in previous[:4])
        raise FileExistsError(f"{run} already holds a run ({names}{', ...' if len(previous) > 4 else ''}); pass "
                              "--overwrite to replace it, --resume to continue its RL from the last checkpoint, "
                              "or choose another --out")
    for path in previous:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---------------------------------------------------------------------------------------------------------------
# Stages a recipe runs in order; the estimator study (qoqmed.experiment) builds its units from the same ones.

def build_model(settings: ModelSettings, train: Sequence[Record], seed: int):
    """(processor, model) a run starts from: a fresh tiny model whose tokenizer is fitted on the training text, or
    the model saved in ``settings.init``."""
    if settings.init == "tiny":
        torch.manual_seed(seed)
        corpus = [r.problem for r in train] + [r.answer for r in train]
        return build_tiny(corpus, settings.tiny, seed=seed)
    dtype = settings.dtype
    processor = QoQMedProcessor.from_pretrained(settings.init)
    model = QoQMedForConditionalGeneration.from_pretrained(settings.init,
                                                           dtype=getattr(torch, dtype) if dtype else None)
    return processor, model


def load_trained(model_dir: str | Path):
    """(model, processor) saved by a training stage: a model folder, or a LoRA adapter merged into its base."""
    return load_model_and_processor(model_dir)


def label_sets_of(records: Sequence[Record], data_info: dict | None) -> dict | None:
    """Each dataset's label set, when the data come from the benchmark generator (``data_info``); with it, a
    predicted label outside a dataset's set is an error, not a new label."""
    if not data_info or "labels" not in data_info:
        return None
    return {r.dataset: data_info["labels"][r.domain] for r in records}


def evaluate_records(model, processor, records: Sequence[Record], out_dir: Path, ev: EvalSection,
                     label_sets: dict | None, show_progress: bool = True) -> tuple[dict, list[dict]]:
    """Greedy evaluation with the recipe's ``eval`` settings; every domain present in ``records`` is reported."""
    present = {r.domain for r in records}
    expected = [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))  # user domains after
    return evaluate(model, processor, records, out_dir, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                    preset=ev.reward_preset, iou_reduce=ev.iou_reduce, expected_domains=expected,
                    label_sets=label_sets, show_progress=show_progress, prompt_style=ev.prompt_style)


def _start_run(cfg: RecipeConfig, run: Path, overwrite: bool, main: bool) -> None:
    _prepare_run_folder(cfg, run, overwrite, remove=main)
    _state().wait_for_everyone()
    run.mkdir(parents=True, exist_ok=True)
    if main:
        (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))


def _warm_start_stage(cfg: RecipeConfig, run: Path, processor, model, train: list[Record],
                      val: list[Record] | None, main: bool) -> tuple[list[dict], Path]:
    """The supervised warm start (when enabled); returns its history and the folder RL starts from."""
    from .sft import warm_start  # the trainer (and TRL) only when a recipe runs, not when it is loaded

    # RL starts from the warm-started model; without a warm start, a model on disk is used as it is
    init = cfg.model_settings.init
    rl_start = Path(init) if not cfg.sft.enabled and init != "tiny" else run / "sft_model"
    sft_history: list[dict] = []
    if cfg.sft.enabled:
        console.rule("supervised warm start")
        sft_eval = val if cfg.sft.eval_steps else None
        # written by the trainer: under FSDP each process holds a shard, gathered into rl_start
        sft_history = warm_start(model, processor, train, run / "sft", cfg.sft, eval_records=sft_eval,
                                 lora=_lora_for(cfg, "sft"), model_dir=rl_start)
    elif main and rl_start == run / "sft_model":
        model.save_pretrained(rl_start)
        processor.save_pretrained(rl_start)
    _state().wait_for_everyone()
    return sft_history, rl_start


def _lora_for(cfg: RecipeConfig, stage: str) -> LoRASettings | None:
    return cfg.lora if cfg.lora is not None and stage in cfg.lora.stages else None


def _rl_stage(cfg: RecipeConfig, run: Path, rl_start: Path, train: list[Record],
              val: list[Record] | None) -> tuple[RLSettings, dict]:
    from .rl import train_rl

    console.rule("RL")
    rl_settings = cfg.rl_settings()
    rl_logs = train_rl(rl_start, train, run / "rl", rl_settings, resume_from="latest" if cfg.resume else None,
                       eval_records=val if rl_settings.eval_steps else None, lora=_lora_for(cfg, "rl"))
    return rl_settings, rl_logs


def run_recipe(cfg: RecipeConfig, run_dir: str | Path, overwrite: bool = False) -> dict:
    """Run every stage; return the metrics dict that is also written to ``run_dir/metrics.json``.

    A ``run_dir`` holding an earlier run is an error, unless ``overwrite`` (its outputs are removed first) or
    ``cfg.resume`` (RL continues from its newest checkpoint; the generated data is reused).
    """
    t_start = time.perf_counter()
    run = Path(run_dir)
    main = _state().is_main_process
    _start_run(cfg, run, overwrite, main)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    train, test, data_info = _load_data(cfg, run)
    timings["data"] = time.perf_counter() - t
    console.print(f"[bold]data[/] {len(train)} train / {len(test)} test records")

    t = time.perf_counter()
    processor, model = build_model(cfg.model_settings, train, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"[bold]model[/] {cfg.model_settings.init}: {n_params / 1e6:.2f}M parameters")
    val = _val_records(cfg, run)
    sft_history, rl_start = _warm_start_stage(cfg, run, processor, model, train, val, main)
    timings["warm_start"] = time.perf_counter() - t

    label_sets = label_sets_of(test, data_info)
    sft_metrics = None
    if cfg.eval.evaluate_warm_start and main:
        console.rule("evaluating the warm-started model")
        t = time.perf_counter()
        if is_sharded(model):  # the main process holds a shard only; the whole model is on disk
            model, processor = load_trained(rl_start)
        sft_metrics, _ = evaluate_records(model, processor, test, run / "eval_sft", cfg.eval, label_sets)
        timings["eval_warm_start"] = time.perf_counter() - t

    t = time.perf_counter()
    rl_settings, rl_logs = _rl_stage(cfg, run, rl_start, train, val)
    timings["rl"] = time.perf_counter() - t
    end_distributed()  # training was the only multi-process stage
    if not main:  # evaluation and the report run on the main process only
        return {}

    console.rule("evaluating the final model")
    t = time.perf_counter()
    final_dir = run / "rl" / "model"
    model, processor = load_trained(final_dir)
    metrics, rows = evaluate_records(model, processor, test, run / "eval", cfg.eval, label_sets)
    timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    _add_run_facts(metrics, timings, rl_settings, sft_metrics, final_dir, data_info)
    context = _report_context(cfg, metrics, n_params, len(train), len(test), rl_settings, sft_history,
                              sft_metrics, timings)
    report = _write_recipe_report(run, metrics, rows, context, sft_metrics, rl_logs)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print_summary(metrics)
    console.print(f"[bold green]done[/] in {timings['total']:.0f} s: {report}")
    return metrics


def _add_run_facts(metrics: dict, timings: dict[str, float], rl_settings: RLSettings, sft_metrics: dict | None,
                   final_dir: Path, data_info: dict | None) -> None:
    """Timings, the estimator, the warm start's numbers and the data's description, beside the final metrics."""
    metrics["wall_time_seconds"] = round(timings["total"], 1)
    metrics["stage_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["estimator"] = rl_settings.estimator if rl_settings.estimator != "drpo" else (
        f"drpo ({rl_settings.drpo_mode})")
    if sft_metrics is not None:
        metrics["warm_start"] = {"overall": sft_metrics["overall"],
                                 "domains": {d: {k: v.get(k) for k in ("macro_f1", "paper_balanced_accuracy",
                                                                        "iou_mean", "format_rate")}
                                             for d, v in sft_metrics["domains"].items()}}
    metrics["final_model"] = str(final_dir)
    if data_info is not None:
        metrics["data"] = data_info


def _report_context(cfg: RecipeConfig, metrics: dict, n_params: int, n_train: int, n_test: int,
                    rl_settings: RLSettings, sft_history: list[dict], sft_metrics: dict | None,
                    timings: dict[str, float]) -> dict:
    """The report's "what was run" lines."""
    context = {
        "model": f"{cfg.model_settings.init} ({n_params / 1e6:.2f}M parameters)", "train records": n_train,
        "test records": n_test, "estimator": metrics["estimator"], "RL steps": rl_settings.max_steps,
        "rollouts per question": rl_settings.num_generations,
        "warm start": f"{cfg.sft.epochs} epochs, final loss {sft_history[-1]['loss']:.3f}" if sft_history else "-",
        "wall time": f"{timings['total']:.0f} s ("
                     + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total") + ")",
    }
    if sft_metrics is not None:
        context["warm start → final macro-F1"] = (
            f"{_fmt(sft_metrics['overall'].get('macro_f1'))} → {_fmt(metrics['overall'].get('macro_f1'))}")
    return context


def _write_recipe_report(run: Path, metrics: dict, rows: list[dict], context: dict, sft_metrics: dict | None,
                         rl_logs: dict) -> Path:
    """report.md with its plots, and the section on what RL changed; returns the report's path."""
    paths = write_report(metrics, run, title="qoqmed quickstart: CLIMB-mini, tiny model, warm start + RL",
                         context=context, rows=rows)
    curve = plot_rl_curves(rl_logs, run / "rl_reward_by_domain.png")
    probe = plot_probe_curves(rl_logs, run / "rl_probe_reward.png")
    report = paths.get("report", run / "report.md")
    _append_training_section(report, sft_metrics, metrics, curve, probe, rl_logs.get("probe_domains", []))
    return report


def _append_training_section(report: Path, before: dict | None, after: dict, curve: Path | None,
                             probe_plot: Path | None = None, probe: list[dict] | None = None) -> None:
    """Add what RL changed (warm start vs final, per domain), the probe-set curve and the reward curves."""
    lines = ["", "## Warm start vs after RL", ""]
    if before is not None:
        lines += ["| domain | macro-F1 warm start | macro-F1 final | change | mean IoU warm start | mean IoU final | "
                  "boxes per answer warm start → final |", "|---|---|---|---|---|---|---|"]
        for d, a in after["domains"].items():
            b = before["domains"].get(d, {})
            f0, f1 = b.get("macro_f1"), a.get("macro_f1")
            delta = "-" if f0 is None or f1 is None else f"{f1 - f0:+.3f}"
            lines.append(f"| {d} | {_fmt(f0)} | {_fmt(f1)} | {delta} | {_fmt(b.get('iou_mean'))} | "
                         f"{_fmt(a.get('iou_mean'))} | {_arrow(b.get('boxes_per_answer'), a.get('boxes_per_answer'))} |")
        o0, o1 = before["overall"].get("macro_f1"), after["overall"].get("macro_f1")
        lines.append(f"| **overall** | {_fmt(o0)} | {_fmt(o1)} | "
                     f"{'-' if o0 is None or o1 is None else f'{o1 - o0:+.3f}'} | "
                     f"{_fmt(before['overall'].get('iou_mean'))} | {_fmt(after['overall'].get('iou_mean'))} | "
                     f"{_arrow(before['overall'].get('boxes_per_answer'), after['overall'].get('boxes_per_answer'))} |")
    if probe:
        first, last = probe[0], probe[-1]
        lines += ["", f"## Probe set (fixed training questions, sampled as in RL): step {first['step']} → "
                  f"{last['step']}", "", "| domain | reward | accuracy | constant-accuracy groups |", "|---|---|---|---|"]
        for key in sorted(k for k in last if k.startswith("reward/")):
            d = key.split("/", 1)[1]
            lines.append(" | ".join([f"| {d}"] + [f"{_fmt(first.get(f'{m}/{d}'))} → {_fmt(last.get(f'{m}/{d}'))}"
                                                  for m in ("reward", "accuracy", "constant_accuracy")]) + " |")
    if probe_plot is not None:
        lines += ["", f"![Probe-set reward by domain]({probe_plot.name})"]
    if curve is not None:
        lines += ["", f"![RL reward by domain]({curve.name})"]
    with open(report, "a") as f:
        f.write("\n".join(lines) + "\n")


def _arrow(a, b) -> str:
    return "-" if a is None and b is None else f"{_fmt(a)} → {_fmt(b)}"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
