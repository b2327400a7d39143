"""The ``qoqmed`` command line: data, model, train, eval and the quickstart."""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="qoqmed: multimodal clinical reasoning models (ECG, images, volumes, text) trained with DRPO.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Create, check and describe datasets (jsonl records + files).", no_args_is_help=True)
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
console = Console()
err = Console(stderr=True)
# Deprecation notices raised inside transformers/TRL about their own arguments; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)


def bundled_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package (quickstart, smoke)."""
    return Path(str(resources.files("qoqmed") / "configs" / f"{name}.yaml"))


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _run(config: Path, out: Path) -> dict:
    from .data.schema import DataError
    from .train.recipe import RecipeConfig, run_recipe

    try:
        cfg = RecipeConfig.from_yaml(config)
        return run_recipe(cfg, out)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Run folder for data, models, report.md, metrics.json and plots.")]
    = Path("quickstart_out"),
    smoke: Annotated[bool, typer.Option(help="A one-minute run at toy sizes, to check an install.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="Use this YAML recipe instead of the bundled one.")] = None,
) -> None:
    """Generate CLIMB-mini, warm-start a tiny model, train it with DRPO, evaluate it and write a report.

    Takes under 10 minutes on 2 CPU cores. Look at OUT/report.md, OUT/metrics.json and the PNG plots.
    """
    _run(config or bundled_config("smoke" if smoke else "quickstart"), out)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML recipe: data, model, sft, rl, eval sections.")],
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/latest"),
) -> None:
    """Run a training recipe: warm start, RL with the chosen estimator (grpo, drgrpo, drpo), evaluation."""
    _run(config, out)


@app.command("eval")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="Folder with a saved QoQ-Med model and processor.")],
    data: Annotated[Path, typer.Option(help="jsonl records to evaluate on.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, predictions.jsonl, report.md, plots.")],
    batch_size: Annotated[int, typer.Option(help="Records per generate() call.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens.")] = 128,
    preset: Annotated[str, typer.Option(help="Reward weights: paper or reference.")] = "paper",
) -> None:
    """Generate answers with greedy decoding and report per-label, per-dataset, per-domain metrics."""
    from .data.schema import DataError, load_records
    from .eval.evaluate import evaluate
    from .eval.report import print_summary, write_report
    from .modeling import QoQMedForConditionalGeneration, QoQMedProcessor

    try:
        records = load_records(data)
    except DataError as exc:
        _fail(str(exc))
    if not (model / "config.json").exists():
        _fail(f"{model}: no config.json; pass a folder written by save_pretrained (e.g. a run's rl/model)")
    proc = QoQMedProcessor.from_pretrained(model)
    net = QoQMedForConditionalGeneration.from_pretrained(model)
    metrics, rows = evaluate(net, proc, records, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             preset=preset)
    write_report(metrics, out, title=f"qoqmed evaluation of {model.name}",
                 context={"model": str(model), "data": str(data), "records": len(records)}, rows=rows)
    print_summary(metrics)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or metrics.json files); the first is the baseline.")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md and compare.png.")] = Path("compare_out"),
    names: Annotated[Optional[str], typer.Option(help="Comma-separated display names, one per run.")] = None,
) -> None:
    """Side-by-side per-domain macro-F1 and paper balanced accuracy of runs, with change vs the first run."""
    from .eval.compare import compare_runs, format_compare_table

    labels = names.split(",") if names else None
    try:
        result = compare_runs(runs, names=labels, out_dir=out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(format_compare_table(result), markup=False)
    console.print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Folder to write train/val/test.jsonl, files and datasheet.md.")],
    n_train: Annotated[int, typer.Option(help="Training records.")] = 720,
    n_val: Annotated[int, typer.Option(help="Validation records.")] = 90,
    n_test: Annotated[int, typer.Option(help="Test records.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
) -> None:
    """Write the synthetic CLIMB-mini benchmark: 9 clinical domains, real label names, boxes and masks."""
    from .data.synthetic import generate_climb_mini

    with err.status("generating"):
        info = generate_climb_mini(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    console.print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in _split_counts(info).items())})")


def _split_counts(info: dict) -> dict:
    counts = info.get("counts", info) if isinstance(info, dict) else {}
    return {k: (sum(v.values()) if isinstance(v, dict) else v) for k, v in counts.items()
            if k in ("train", "val", "test")}


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print problems as JSON.")] = False,
) -> None:
    """Check every row and every file it references; print one line per problem; exit 1 if any."""
    from .data.schema import DataError, load_records

    try:
        records = load_records(path)
    except DataError as exc:
        problems = list(getattr(exc, "problems", None) or [str(exc)])
        if as_json:
            console.print_json(json.dumps({"path": str(path), "ok": False, "problems": problems}))
        else:
            for p in problems:
                console.print(p, markup=False)
        raise typer.Exit(code=1)
    if as_json:
        console.print_json(json.dumps({"path": str(path), "ok": True, "records": len(records)}))
    else:
        console.print(f"{path}: {len(records)} records, no problems")


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    plot: Annotated[Optional[Path], typer.Option(help="Write a bar chart of rows per domain to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Rows per domain, dataset and label, and how imbalanced the domains are."""
    from rich.table import Table

    from .data.schema import DataError, load_records
    from .data.stats import plot_domain_counts, record_stats

    try:
        records = load_records(path, check_files=False)
    except DataError as exc:
        _fail(f"{exc}\n(run `qoqmed data validate {path}` for every problem)")
    stats = record_stats(records)
    if plot is not None:
        plot_domain_counts(stats, plot, title=path.name)
    if as_json:
        console.print_json(json.dumps(stats))
        return
    table = Table(title=f"{path} ({stats['n']} rows)")
    for col in ("domain", "rows", "share"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, v in stats["domains"].items():
        table.add_row(d, str(v["rows"]), f"{v['share']:.1%}")
    console.print(table)
    labels = Table(title="labels per dataset")
    labels.add_column("dataset")
    labels.add_column("label counts")
    for ds, v in stats["datasets"].items():
        labels.add_row(ds, ", ".join(f"{k}: {c}" for k, c in v["labels"].items()))
    console.print(labels)
    console.print(f"largest/smallest domain: {stats['imbalance_ratio']:.1f}x; rows with images "
                  f"{stats['with_images']}, with ECG {stats['with_ecg']}, with boxes {stats['with_boxes']}")


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to save the model, processor and tokenizer.")],
    corpus: Annotated[Optional[Path], typer.Option(help="jsonl records whose text trains the tokenizer.")] = None,
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
) -> None:
    """Build a tiny random-init QoQ-Med with a locally trained tokenizer (no downloads)."""
    from .data.schema import load_records
    from .modeling.tiny import build_tiny

    texts = []
    if corpus is not None:
        texts = [t for r in load_records(corpus, check_files=False) for t in (r.problem, r.answer)]
    processor, model = build_tiny(texts, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"saved a tiny QoQ-Med ({n / 1e6:.2f}M parameters) to {out}")


if __name__ == "__main__":
    app()
