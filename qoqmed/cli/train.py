"""Training commands: quickstart, train (a recipe) and sft (the supervised warm start)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AllowOutsidePaths, Overwrite, bundled_config, console, fail


def _run(config: Path, out: Path, overwrite: bool = False, resume: bool = False) -> dict:
    from ..train.recipe import RecipeConfig, run_recipe

    if overwrite and resume:
        fail("--overwrite and --resume exclude each other: replace the earlier run or continue it")
    cfg = RecipeConfig.from_yaml(config)
    cfg.resume = resume or cfg.resume
    return run_recipe(cfg, out, overwrite=overwrite)


def quickstart(
    out: Annotated[Path, typer.Option(help="Run folder for data, models, report.md, metrics.json and plots.")]
    = Path("quickstart_out"),
    smoke: Annotated[bool, typer.Option(help="A one-minute run at toy sizes, to check an install.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="Use this YAML recipe instead of the bundled one.")] = None,
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT: its data, then RL from the "
                                              "newest checkpoint in OUT/rl.")] = False,
) -> None:
    """Generate CLIMB-mini, warm-start a tiny model, train it with DRPO, evaluate it and write a report.

    Takes under 10 minutes on 2 CPU cores. Look at OUT/report.md, OUT/metrics.json and the PNG plots.
    """
    _run(config or bundled_config("smoke" if smoke else "quickstart"), out, overwrite=overwrite, resume=resume)


def train(
    config: Annotated[Path, typer.Argument(help="YAML recipe: data, model, sft, rl, eval sections.")],
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/latest"),
    resume: Annotated[bool, typer.Option(help="Continue RL from the newest checkpoint in OUT/rl.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Run a training recipe: warm start, RL with the chosen estimator, evaluation, report.

    Estimators: grpo, drgrpo, rloo, disco, drpo (modes paper, bounded, reference). For several GPUs or nodes,
    start it with `accelerate launch --config_file configs/accelerate/<setup>.yaml -m qoqmed.cli train ...`.
    """
    _run(config, out, overwrite=overwrite, resume=resume)


def sft(
    data: Annotated[Path, typer.Option(help="jsonl records whose reference answers are the targets.")],
    out: Annotated[Path, typer.Option(help="Folder: model/ (the fine-tuned model), sft_logs.json.")],
    model: Annotated[str, typer.Option(help="Folder with a saved QoQ-Med model, or 'tiny' for a new tiny one.")]
    = "tiny",
    val: Annotated[Optional[Path], typer.Option(help="jsonl records for the periodic eval loss.")] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 3.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (-1: use epochs).")] = -1,
    batch_size: Annotated[int, typer.Option(help="Records per device per step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-3,
    eval_steps: Annotated[Optional[int], typer.Option(help="Evaluate on --val every N steps.")] = None,
    report_to: Annotated[Optional[str], typer.Option(help="Comma-separated: tensorboard, wandb.")] = None,
    logging_steps: Annotated[int, typer.Option(help="Log the loss every N steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the tiny model's init and the data order.")] = 0,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters on the language model (peft); model/ is then "
                                            "an adapter folder.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (updates scaled by alpha / rank).")] = 32.0,
    merge: Annotated[bool, typer.Option(help="With --lora, also write merged/: the model with the adapters "
                                             "merged in.")] = False,
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Supervised warm start with TRL's SFTTrainer: learn the answer format (<think>, boxes, \\boxed{}).

    With --lora only adapters train (the ECG projector in full); OUT/model holds them, and base/ the starting
    model when it was a new tiny one, so the adapter folder always names a base on disk."""
    from ..data.schema import load_records
    from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
    from ..train.settings import LoRASettings
    from ..train.sft import SFTSettings, warm_start

    records = load_records(data, allow_outside=allow_outside_paths)
    val_records = load_records(val, allow_outside=allow_outside_paths) if val else None
    settings = SFTSettings(epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                           learning_rate=learning_rate, eval_steps=eval_steps, seed=seed,
                           logging_steps=logging_steps,
                           report_to=[x for x in (report_to or "").split(",") if x])
    if model == "tiny":
        from ..modeling.tiny import build_tiny

        processor, net = build_tiny([r.problem for r in records] + [r.answer for r in records], seed=seed)
    elif (Path(model) / "config.json").exists():
        processor = QoQMedProcessor.from_pretrained(model)
        net = QoQMedForConditionalGeneration.from_pretrained(model)
    else:
        fail(f"--model {model}: no config.json there; pass a folder written by save_pretrained or 'tiny'")
    if merge and not lora:
        fail("--merge merges LoRA adapters; add --lora")
    try:
        adapters = LoRASettings(r=lora_r, alpha=lora_alpha, stages=["sft"]) if lora else None
    except ValueError as exc:
        fail(f"--lora-r/--lora-alpha: {exc}")
    if adapters and model == "tiny":  # an adapter names its base by folder
        net.save_pretrained(out / "base")
        processor.save_pretrained(out / "base")
        net.name_or_path = net.config._name_or_path = str((out / "base").resolve())
    elif adapters:
        net.name_or_path = net.config._name_or_path = str(Path(model).resolve())
    # the trainer writes the model (under FSDP gathered from every process); with --lora, merged on request
    history = warm_start(net, processor, records, out / "trainer", settings, eval_records=val_records,
                         lora=adapters, adapter_dir=out / "model" if adapters else None,
                         model_dir=out / ("merged" if adapters else "model") if adapters is None or merge else None)
    (out / "sft_logs.json").write_text(json.dumps({"records": len(records), "history": history}, indent=1))
    last = history[-1]["loss"] if history else float("nan")
    console.print(f"saved {out / 'model'} after {len(history)} logged steps (last loss {last:.3f})")
