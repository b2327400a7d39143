"""The ``qoqmed`` command line: data, model, train, eval and the quickstart."""

from __future__ import annotations

import inspect
import json
import os
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
experiment_app = typer.Typer(help="Controlled experiments on CLIMB-mini (estimator comparison).",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
console = Console()
err = Console(stderr=True)
# Deprecation notices raised inside transformers/TRL about their own arguments; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
AllowOutsidePaths = Annotated[bool, typer.Option(
    "--allow-outside-paths",
    help="Accept rows whose file paths leave the jsonl's folder (\"../\"); refused by default.")]


@app.callback()
def limits(
    max_image_pixels: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse images (DICOM included) with more pixels; default 50,000,000.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse GIF/TIFF/WebP clips with more frames; default 2,000.")] = None,
    max_volume_voxels: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse volumes and clips with more voxels; default 300,000,000.")] = None,
    max_array_values: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse .npy arrays with more values; default 16,000,000.")] = None,
    max_ecg_samples: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse WFDB, DICOM and CSV ECGs with more samples over all channels (from the header); "
                    "default 16,000,000.")] = None,
    max_request_bytes: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse a request (a query's inputs, a row's files) that decodes to more bytes in all; "
                    "default 1,500,000,000.")] = None,
) -> None:
    """Decoded-size limits for every command; each is checked from a file's header before it is decoded."""
    from .data.limits import ENV_PREFIX

    # the readers take the limits from the environment, so they apply to every thread (the server's included)
    for name, value in (("max_image_pixels", max_image_pixels), ("max_frames", max_frames),
                        ("max_volume_voxels", max_volume_voxels), ("max_array_values", max_array_values),
                        ("max_ecg_samples", max_ecg_samples), ("max_request_bytes", max_request_bytes)):
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)


def bundled_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package (quickstart, smoke)."""
    return Path(str(resources.files("qoqmed") / "configs" / f"{name}.yaml"))


def _fail(message: str) -> None:
    from rich.markup import escape

    from .data.errors import printable

    # A message quotes file names and contents: printed literally (no markup), control characters escaped.
    err.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    raise typer.Exit(code=2)


def _run(config: Path, out: Path, overwrite: bool = False, resume: bool = False) -> dict:
    from .data.errors import DataError
    from .train.recipe import RecipeConfig, run_recipe

    try:
        cfg = RecipeConfig.from_yaml(config)
        cfg.resume = resume or cfg.resume
        return run_recipe(cfg, out, overwrite=overwrite)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(str(exc))


Overwrite = Annotated[bool, typer.Option(
    help="Replace the outputs of an earlier run in OUT (only those: other files there are kept).")]


@app.command()
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
    if overwrite and resume:
        _fail("--overwrite and --resume exclude each other: replace the earlier run or continue it")
    _run(config or bundled_config("smoke" if smoke else "quickstart"), out, overwrite=overwrite, resume=resume)


@app.command()
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
    from .data.errors import DataError
    from .train.recipe import RecipeConfig, run_recipe

    if overwrite and resume:
        _fail("--overwrite and --resume exclude each other: replace the earlier run or continue it")
    try:
        cfg = RecipeConfig.from_yaml(config)
        cfg.resume = resume or cfg.resume
        run_recipe(cfg, out, overwrite=overwrite)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(str(exc))


@app.command()
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
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Supervised warm start with TRL's SFTTrainer: learn the answer format (<think>, boxes, \\boxed{})."""
    from .data.errors import DataError
    from .data.schema import load_records
    from .modeling import QoQMedForConditionalGeneration, QoQMedProcessor
    from .train.sft import SFTSettings, warm_start

    try:
        records = load_records(data, allow_outside=allow_outside_paths)
        val_records = load_records(val, allow_outside=allow_outside_paths) if val else None
        settings = SFTSettings(epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                               learning_rate=learning_rate, eval_steps=eval_steps, seed=seed,
                               logging_steps=logging_steps,
                               report_to=[x for x in (report_to or "").split(",") if x])
        if model == "tiny":
            from .modeling.tiny import build_tiny

            processor, net = build_tiny([r.problem for r in records] + [r.answer for r in records], seed=seed)
        elif (Path(model) / "config.json").exists():
            processor = QoQMedProcessor.from_pretrained(model)
            net = QoQMedForConditionalGeneration.from_pretrained(model)
        else:
            _fail(f"--model {model}: no config.json there; pass a folder written by save_pretrained or 'tiny'")
        history = warm_start(net, processor, records, out / "trainer", settings, eval_records=val_records)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    net.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    (out / "sft_logs.json").write_text(json.dumps({"records": len(records), "history": history}, indent=1))
    last = history[-1]["loss"] if history else float("nan")
    console.print(f"saved {out / 'model'} after {len(history)} logged steps (last loss {last:.3f})")


@app.command("eval")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="Folder with a saved QoQ-Med model and processor.")],
    data: Annotated[Path, typer.Option(help="jsonl records to evaluate on; with --benchmark, the folder of "
                                           "the benchmark's published release.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json (with --benchmark: results.json), "
                                           "predictions.jsonl, report.md, plots.")],
    batch_size: Annotated[int, typer.Option(help="Records per generate() call (with --samples K: answers, "
                                                 "so batch-size // K records).")] = 16,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Answer length limit in tokens [default: 128; "
                                                                "1024 with --benchmark].")] = None,
    preset: Annotated[str, typer.Option(help="Reward scorer: paper, or reference (the released scorer, "
                                             "exactly, for comparing with old runs).")] = "paper",
    iou_reduce: Annotated[Optional[str], typer.Option(help="IoU over predicted boxes: max (paper default) or "
                                                         "mean; paper preset only.")] = None,
    synonyms: Annotated[Optional[Path], typer.Option(help="JSON file mapping alias -> canonical label "
                                                         "(e.g. {\"AF\": \"A. Fib/Aflutter\"}).")] = None,
    label_parser: Annotated[str, typer.Option(help="How predicted labels are read: qoqmed, or reference "
                                                   "(as the released evaluation script did).")] = "qoqmed",
    prompt_style: Annotated[str, typer.Option(help="Prompt: qoqmed, or released (the prompt, format suffix and "
                                                   "slice selection the released weights were trained "
                                                   "with).")] = "qoqmed",
    samples: Annotated[int, typer.Option(
        "--samples", metavar="K",
        help="After the greedy pass, also sample K answers per record and report mean reward, accuracy, "
             "pass@1, pass@K and the share of questions whose K samples all score the same accuracy, as RL "
             "sees them. 0: off.")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature for --samples, > 0 (use the RL "
                                                    "one).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus (top-p) cutoff for --samples, in (0, 1]; 1: "
                                              "off.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the --samples draws: the same seed gives the same "
                                           "samples.")] = 0,
    allow_outside_paths: AllowOutsidePaths = False,
    benchmark: Annotated[Optional[str], typer.Option(
        help="A public benchmark read from --data in its published layout: vqa-rad, slake, pathvqa, pmc-vqa, "
             "omnimedvqa, mmmu-med or medxpertqa-mm (greedy, seed 42, at most --max-images images; "
             "--prompt-style may also be plain). See the README for the layouts.")] = None,
    protocol: Annotated[str, typer.Option(help="With --benchmark: answer extraction and scoring, qoqmed or "
                                               "medevalkit.")] = "qoqmed",
    split: Annotated[Optional[str], typer.Option(help="With --benchmark: the split [default: the one "
                                                      "published numbers use].")] = None,
    max_images: Annotated[int, typer.Option(help="With --benchmark: images shown per question.")] = 6,
) -> None:
    """Generate answers with greedy decoding and report per-label, per-dataset, per-domain metrics.

    Writes metrics.json, predictions.jsonl, report.md and PNG plots to --out.

    Decoding is greedy, so the same model and data give the same metrics on every run.

    --samples K then draws K answers per record at --temperature and scores them as RL scores its rollouts.

    They go to sampled_predictions.jsonl and to a 'sampled' section of metrics.json and report.md.
    """
    import math

    from .data.errors import DataError
    from .data.schema import load_records

    if benchmark is not None:
        return _eval_benchmark(model, data, out, benchmark, split, protocol, prompt_style,
                               1024 if max_new_tokens is None else max_new_tokens, batch_size, max_images)
    max_new_tokens = 128 if max_new_tokens is None else max_new_tokens
    from .eval.evaluate import evaluate
    from .eval.report import print_summary, write_report
    from .modeling import QoQMedForConditionalGeneration, QoQMedProcessor
    from .rewards.scores import make_scorer

    if samples < 0:
        _fail(f"--samples must be >= 0 (0 turns sampling off), got {samples}")
    if samples and not (math.isfinite(temperature) and temperature > 0):
        _fail(f"--temperature must be > 0 with --samples (greedy answers are the default pass), got {temperature}")
    if samples and not 0 < top_p <= 1:
        _fail(f"--top-p must be in (0, 1] with --samples, got {top_p}")
    if samples and not 0 <= seed < 2**63:
        _fail(f"--seed must be in [0, 2**63), got {seed}")
    try:
        records = load_records(data, allow_outside=allow_outside_paths)
    except DataError as exc:
        _fail(str(exc))
    if not (model / "config.json").exists():
        _fail(f"{model}: no config.json; pass a folder written by save_pretrained (e.g. a run's rl/model)")
    table = None
    if synonyms is not None:
        try:
            table = json.loads(synonyms.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"{synonyms}: cannot read synonyms: {exc}")
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            _fail(f"{synonyms}: synonyms must be a JSON object of alias -> label strings")
    try:
        make_scorer(preset, iou_reduce=iou_reduce, synonyms=table)
    except ValueError as exc:
        _fail(str(exc))
    if label_parser not in ("qoqmed", "reference"):
        _fail(f"--label-parser must be qoqmed or reference, got {label_parser!r}")
    if prompt_style not in ("qoqmed", "released"):
        _fail(f"--prompt-style must be qoqmed or released, got {prompt_style!r}")
    proc = QoQMedProcessor.from_pretrained(model)
    net = QoQMedForConditionalGeneration.from_pretrained(model)
    metrics, rows = evaluate(net, proc, records, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             preset=preset, iou_reduce=iou_reduce, synonyms=table, label_parser=label_parser,
                             prompt_style=prompt_style)
    context = {"model": str(model), "data": str(data), "records": len(records), "reward preset": preset,
               "label parser": label_parser, "decoding": f"greedy, {max_new_tokens} new tokens"}
    if samples:
        from .eval.evaluate import evaluate_sampled

        metrics["sampled"], _ = evaluate_sampled(net, proc, records, k=samples, temperature=temperature,
                                                 top_p=top_p, seed=seed, out_dir=out, batch_size=batch_size,
                                                 max_new_tokens=max_new_tokens, preset=preset,
                                                 iou_reduce=iou_reduce, synonyms=table)
        context["sampled decoding"] = (f"{samples} samples per record, temperature {temperature:g}, top_p "
                                       f"{top_p:g}, seed {seed}, {max_new_tokens} new tokens")
    write_report(metrics, out, title=f"qoqmed evaluation of {model.name}", context=context, rows=rows)
    print_summary(metrics)


def _eval_benchmark(model: Path, data: Path, out: Path, benchmark: str, split: Optional[str], protocol: str,
                    prompt_style: str, max_new_tokens: int, batch_size: int, max_images: int) -> None:
    from .data.errors import DataError
    from .eval.benchmarks.run import Settings, evaluate_benchmark
    from .eval.benchmarks import get_benchmark
    from .modeling import QoQMedForConditionalGeneration, QoQMedProcessor

    try:
        bench = get_benchmark(benchmark)
        Settings(benchmark, split or bench.splits[0], protocol, prompt_style, max_new_tokens, max_images,
                 batch_size=batch_size)
    except ValueError as exc:
        _fail(str(exc))
    if not (model / "config.json").exists():
        _fail(f"{model}: no config.json; pass a folder written by save_pretrained (e.g. a run's rl/model)")
    proc = QoQMedProcessor.from_pretrained(model)
    net = QoQMedForConditionalGeneration.from_pretrained(model)
    try:
        results = evaluate_benchmark(net, proc, benchmark, data, out, split=split, protocol=protocol,
                                     prompt_style=prompt_style, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, max_images=max_images, model_name=model.name)
    except DataError as exc:
        _fail(str(exc))
    o = results["overall"]
    console.print(f"{results['title']} ({results['settings']['split']}, {results['questions']} questions): "
                  f"accuracy {100 * o['accuracy']:.1f}%, unparseable {100 * o['unparseable_rate']:.1f}%; "
                  f"wrote {out / 'report.md'}", markup=False)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or metrics.json files); the first is the baseline.")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md and compare.png.")] = Path("compare_out"),
    names: Annotated[Optional[str], typer.Option(help="Comma-separated display names, one per run.")] = None,
) -> None:
    """Side-by-side per-domain macro-F1 and paper balanced accuracy of runs, with change vs the first run.

    Benchmark runs (eval --benchmark) are compared by their headline numbers and the settings that differ."""
    from .eval.benchmarks.report import compare_benchmark_runs, format_benchmark_comparison, is_benchmark_run
    from .eval.compare import compare_runs, format_compare_table

    labels = names.split(",") if names else None
    kinds = {is_benchmark_run(r) for r in runs}
    if kinds == {True}:
        try:
            result = compare_benchmark_runs(runs, names=labels, out_dir=out)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        console.print(format_benchmark_comparison(result), markup=False)
        console.print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}")
        return
    if len(kinds) > 1:
        _fail("cannot compare benchmark runs (results.json) with recipe runs (metrics.json)")
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
    mix: Annotated[Optional[str], typer.Option(help="Train domain mix as domain=weight pairs, e.g. "
                                                    "'ct=0.6,ecg=0.2,mri=0.01' (unlisted domains get 0 plus the "
                                                    "minimum); default: the paper's skew (ct dominant, three "
                                                    "domains under 1%); 'balanced' for equal weights.")] = None,
    min_per_domain: Annotated[int, typer.Option(help="Rows every domain gets in every split.")] = 4,
    hard_fraction: Annotated[float, typer.Option(help="Share of subtle rows (fainter, smaller evidence, a "
                                                      "distractor).")] = 0.3,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing benchmark in OUT.")] = False,
) -> None:
    """Write the synthetic CLIMB-mini benchmark: 9 clinical domains, real label names, boxes and masks.

    Also writes datasheet.md (counts per split, domain and label; how the evidence is drawn) and stats.json.
    Splits are fixed by --seed."""
    from .data.schema import DOMAINS
    from .data.synthetic import generate_climb_mini

    weights = None
    if mix == "balanced":
        weights = {d: 1.0 for d in DOMAINS}
    elif mix:
        try:
            weights = {k.strip(): float(v) for k, v in (pair.split("=", 1) for pair in mix.split(","))}
        except ValueError:
            _fail(f"--mix {mix!r}: expected domain=weight pairs separated by commas")
    try:
        with err.status("generating"):
            info = generate_climb_mini(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
                                       domain_weights=weights, min_per_domain=min_per_domain,
                                       hard_fraction=hard_fraction, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in _split_counts(info).items())})")


def _split_counts(info: dict) -> dict:
    counts = info.get("counts", info) if isinstance(info, dict) else {}
    return {k: (sum(v.values()) if isinstance(v, dict) else v) for k, v in counts.items()
            if k in ("train", "val", "test")}


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result and every problem as JSON.")] = False,
    read_files: Annotated[bool, typer.Option(
        help="Read every referenced file (images incl. DICOM, volumes, ECGs, masks); --no-read-files only checks "
             "that they exist.")] = True,
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Check every row and every file it references; print one line per problem; exit 1 if any.

    Each problem line reads FILE.jsonl:LINE: FIELD: REFERENCED-FILE: REASON.
    Files are read with the readers training uses (DICOM decoding, volume slices and windows,
    ECG lead mapping and resampling, mask size), so a file that passes here loads in training.
    """
    from rich.progress import track

    from .data.errors import DataError, printable
    from .data.validate import validate_records

    def progress(items):
        items = list(items)
        if as_json or len(items) < 50:
            return items
        return track(items, description="reading files", console=err, transient=True)

    try:
        result = validate_records(path, read_files=read_files, progress=progress,
                                  allow_outside=allow_outside_paths)
    except DataError as exc:  # the jsonl file itself is missing or unreadable
        result = None
        problems = [str(exc)]
    if result is not None:
        problems = [str(p) for p in result.problems]
    if as_json:
        payload = result.to_dict() if result is not None else {"path": printable(str(path)), "ok": False,
                                                               "problems": [{"reason": p} for p in problems]}
        payload["path"] = printable(payload["path"])
        print(json.dumps(payload, indent=2))
    elif problems:
        for line in problems:
            console.print(printable(line), markup=False, soft_wrap=True)
        console.print(f"{len(problems)} problem(s)" + (f" in {result.rows} rows ({result.valid_rows} clean)"
                                                      if result is not None else ""), markup=False)
    else:
        console.print(printable(f"{path}: {result.rows} records, {result.files_checked} files read, no problems"),
                      markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(code=1)


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    plot: Annotated[Optional[Path], typer.Option(help="Write a bar chart of rows per domain to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Rows per domain, dataset and label, and how imbalanced the domains are."""
    from rich.table import Table

    from .data.errors import DataError
    from .data.schema import load_records
    from .data.stats import plot_domain_counts, record_stats

    try:
        records = load_records(path, check_files=False, allow_outside=allow_outside_paths)
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
    labels.add_column("max/min", justify="right")
    for ds, v in stats["datasets"].items():
        labels.add_row(ds, ", ".join(f"{k}: {c}" for k, c in v["labels"].items()),
                       f"{v['label_imbalance']:.1f}x" if v["label_imbalance"] else "-")
    console.print(labels)
    console.print(f"largest/smallest domain: {stats['imbalance_ratio']:.1f}x ({stats['largest_domain']} / "
                  f"{stats['smallest_domain']}); rows with images {stats['with_images']}, with volumes "
                  f"{stats['with_volumes']}, with ECG {stats['with_ecg']}, with boxes {stats['with_boxes']}")
    if stats["user_domains"]:
        console.print(f"user domains (not among the built-in nine): {', '.join(stats['user_domains'])}")


convert_app = typer.Typer(
    help="Convert existing datasets to qoqmed jsonl records (one <split>.jsonl per split).", no_args_is_help=True)
data_app.add_typer(convert_app, name="convert")


def _convert_progress(description: str):
    from rich.progress import track

    return lambda items: track(list(items), description=description, console=err, transient=True)


def _finish_conversion(conversion, out: Path, prefix: str = "") -> None:
    from .data.converters import write_splits
    from .data.errors import DataError

    for line in conversion.skipped:
        err.print(f"skipped: {line}", markup=False, soft_wrap=True)
    try:
        written = write_splits(conversion, out, prefix=prefix)
    except DataError as exc:
        _fail(str(exc))
    from .data.schema import leaves_folder

    counts = ", ".join(f"{split}: {len(conversion.splits[split])}" for split in written)
    outside = any(leaves_folder(os.path.relpath(record.resolve(rel), out))
                  for records in conversion.splits.values() for record in records for _, rel in record.files())
    flag = " --allow-outside-paths" if outside else ""
    console.print(f"wrote {', '.join(str(p) for p in written.values())} ({counts}; {len(conversion.skipped)} "
                  f"skipped). Check the files with `qoqmed data validate{flag}`.", markup=False, soft_wrap=True)
    if outside:
        console.print(f"The rows point at the source files outside {out} (../ paths): commands that read them need "
                      "--allow-outside-paths (a recipe: data.allow_outside_paths: true).", markup=False,
                      soft_wrap=True)


@convert_app.command("climb")
def convert_climb_cmd(
    annotations: Annotated[list[Path], typer.Argument(help="CLIMB annotation files (.jsonl or a .json array).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    image_root: Annotated[Optional[Path], typer.Option(
        help="Folder the rows' image/video paths are relative to (default: each annotation file's folder).")] = None,
    domain: Annotated[Optional[str], typer.Option(
        help="Domain for every row (default: the row's, else from the first path component).")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset key for every row (default: the row's, else <domain>/<dataset> from the path).")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split for every row (default: the row's, else the file name's, else a seeded split).")] = None,
    val: Annotated[float, typer.Option(help="Fraction of unsplit rows for val.")] = 0.0,
    test: Annotated[float, typer.Option(help="Fraction of unsplit rows for test.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split of unsplit rows.")] = 0,
) -> None:
    """CLIMB's LLaVA-style rows (images/videos, conversations, label) or reference rows -> qoqmed records."""
    from .data.converters import convert_climb
    from .data.errors import DataError

    try:
        conversion = convert_climb(annotations, image_root=image_root, domain=domain, dataset=dataset, split=split,
                                   seed=seed, val=val, test=test, progress=_convert_progress("converting"))
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    _finish_conversion(conversion, out)


@convert_app.command("ptbxl")
def convert_ptbxl_cmd(
    table: Annotated[Path, typer.Argument(help="Label table CSV (PTB-XL: ptbxl_database.csv).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    records_root: Annotated[Optional[Path], typer.Option(
        help="Folder the record paths are relative to (default: the table's folder).")] = None,
    statements: Annotated[Optional[Path], typer.Option(
        help="PTB-XL scp_statements.csv, to map diagnostic codes to superclasses.")] = None,
    path_column: Annotated[str, typer.Option(help="Column with the WFDB record path (no suffix).")] = "filename_hr",
    label_column: Annotated[str, typer.Option(help="Column with the code dict, e.g. {'NORM': 100.0}.")] = "scp_codes",
    fold_column: Annotated[str, typer.Option(help="Fold column; '' for a seeded split instead.")] = "strat_fold",
    id_column: Annotated[str, typer.Option(help="Record id column; '' to number rows.")] = "ecg_id",
    val_folds: Annotated[str, typer.Option(help="Comma-separated folds for val.")] = "9",
    test_folds: Annotated[str, typer.Option(help="Comma-separated folds for test.")] = "10",
    min_likelihood: Annotated[float, typer.Option(help="Ignore codes with a lower likelihood.")] = 0.0,
    dataset: Annotated[str, typer.Option(help="Dataset key of the records.")] = "ptbxl",
    seed: Annotated[int, typer.Option(help="Seed of the split when there is no fold column.")] = 0,
) -> None:
    """PTB-XL-style WFDB records + CSV label table -> ECG records (labels: CLIMB's ECG superclass names)."""
    from .data.converters import convert_ptbxl
    from .data.errors import DataError

    try:
        folds = [[int(f) for f in text.split(",") if f.strip()] for text in (val_folds, test_folds)]
        conversion = convert_ptbxl(
            table, records_root=records_root, statements=statements, path_column=path_column,
            label_column=label_column, fold_column=fold_column or None, id_column=id_column or None,
            val_folds=folds[0], test_folds=folds[1], min_likelihood=min_likelihood, dataset=dataset, seed=seed,
            progress=_convert_progress("converting"))
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    _finish_conversion(conversion, out)


@convert_app.command("folder")
def convert_folder_cmd(
    root: Annotated[Path, typer.Argument(help="ROOT/<split>/<class>/<file> or ROOT/<class>/<file>.")],
    domain: Annotated[str, typer.Option(help="Domain of every record (e.g. dermoscopy, ct).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset key (default: <domain>/<ROOT name>).")] = None,
    val: Annotated[float, typer.Option(help="Fraction per class for val (class/file layout).")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction per class for test (class/file layout).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split (class/file layout).")] = 0,
    num_slices: Annotated[int, typer.Option(help="Slices sampled from each volume or video.")] = 4,
    window: Annotated[Optional[str], typer.Option(help="Window preset for volumes (lung, brain, bone, ...).")] = None,
) -> None:
    """One folder per class -> records whose answer is the folder name; volumes and videos become `volumes`."""
    from .data.converters import convert_folder
    from .data.errors import DataError

    try:
        conversion = convert_folder(root, domain=domain, dataset=dataset, seed=seed, val=val, test=test,
                                    num_slices=num_slices, window=window, progress=_convert_progress("converting"))
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    _finish_conversion(conversion, out)


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


@model_app.command("init")
def model_init(
    base: Annotated[str, typer.Option(help="Folder of a Qwen2.5-VL-7B/32B-Instruct or QoQ-Med-VL checkpoint (or "
                                           "a hub id already in the local Hugging Face cache).")],
    out: Annotated[Path, typer.Option(help="Folder to save the QoQ-Med model and processor.")],
    ecg_encoder: Annotated[Optional[Path], typer.Option(
        help="Official ECG-JEPA checkpoint (torch.load(path)['encoder']); omit for a random-init encoder.")] = None,
    ecg_tokens: Annotated[str, typer.Option(help="ECG tokens per record: pooled (1, reference), per_lead (8), "
                                                 "patch (400).")] = "pooled",
    projector: Annotated[str, typer.Option(help="ECG projector: linear (reference) or mlp.")] = "linear",
    ecg_width: Annotated[int, typer.Option(help="ECG encoder width (published ECG-JEPA: 768).")] = 768,
    ecg_depth: Annotated[int, typer.Option(help="ECG encoder blocks (published ECG-JEPA: 12).")] = 12,
    ecg_heads: Annotated[int, typer.Option(help="ECG encoder attention heads (published ECG-JEPA: 16).")] = 16,
    dtype: Annotated[str, typer.Option(help="Weights dtype: bfloat16 or float32 (float32 for CPU).")] = "bfloat16",
    attn: Annotated[str, typer.Option(help="Attention: sdpa, eager or flash_attention_2.")] = "sdpa",
    freeze_vision: Annotated[bool, typer.Option(help="Keep the vision tower frozen in training.")] = False,
    freeze_ecg: Annotated[bool, typer.Option(help="Keep the ECG encoder frozen in training.")] = False,
    freeze_llm: Annotated[bool, typer.Option(help="Keep the language model frozen in training.")] = False,
    min_pixels: Annotated[int, typer.Option(help="Image pixel budget, lower bound (reference 65536; 0 keeps "
                                                 "the base's).")] = 65_536,
    max_pixels: Annotated[int, typer.Option(help="Image pixel budget, upper bound (reference 524288; 0 keeps "
                                                 "the base's).")] = 524_288,
    trust_ecg_checkpoint: Annotated[bool, typer.Option(
        help="Allow full unpickling of the ECG checkpoint (only for files of trusted origin).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the new ECG encoder/projector weights.")] = 0,
) -> None:
    """Build a QoQ-Med model from local Qwen2.5-VL weights and ECG-JEPA weights (no downloads)."""
    import time

    from .modeling.build import BuildError, build_from_base, parameter_counts
    from .modeling.ecg_encoder import ECGCheckpointError

    start = time.perf_counter()
    try:
        _, model = build_from_base(
            base, out, ecg_encoder=ecg_encoder, ecg_token_mode=ecg_tokens, ecg_projector=projector, dtype=dtype,
            ecg_config=dict(hidden_size=ecg_width, num_layers=ecg_depth, num_heads=ecg_heads),
            attn_implementation=attn, freeze_vision=freeze_vision, freeze_ecg=freeze_ecg, freeze_llm=freeze_llm,
            min_pixels=min_pixels or None, max_pixels=max_pixels or None,
            trust_ecg_checkpoint=trust_ecg_checkpoint, seed=seed)
    except (BuildError, ECGCheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    counts = parameter_counts(model)
    console.print(f"saved a QoQ-Med model ({counts['total'] / 1e9:.3f}B parameters; ECG encoder "
                  f"{counts['ecg'] / 1e6:.1f}M, {'official weights' if ecg_encoder else 'random init'}) to {out} "
                  f"in {time.perf_counter() - start:.1f}s; frozen: {', '.join(model.config.frozen_modules) or 'none'}")


@model_app.command("convert-released")
def model_convert_released(
    model: Annotated[Path, typer.Argument(help="Folder of a QoQ-Med model with a linear projector and pooled ECG "
                                               "tokens (e.g. `qoqmed model init` from the released QoQ-Med-VL).")],
    checkpoint: Annotated[Path, typer.Argument(help="Released time-series checkpoint: a folder of *.safetensors, "
                                                    "a .safetensors file or a .pt/.bin state dict.")],
    out: Annotated[Path, typer.Option(help="Folder to save the model with the released ECG weights.")],
) -> None:
    """Load the released time-series weights (time_series_embedding.encoder.* and .linear.*) into a QoQ-Med
    model's ECG encoder and projector, strictly checked, and save it."""
    from .modeling.convert_released import load_released_time_series, read_released_time_series
    from .modeling.ecg_encoder import ECGCheckpointError
    from .modeling.modeling_qoqmed import QoQMedForConditionalGeneration
    from .modeling.processing_qoqmed import QoQMedProcessor

    if not (model / "config.json").is_file():
        _fail(f"{model}: no config.json; pass a folder written by save_pretrained")
    try:
        state = read_released_time_series(checkpoint)
        net = QoQMedForConditionalGeneration.from_pretrained(model)
        load_released_time_series(net, state, str(checkpoint))
    except (ECGCheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    net.save_pretrained(out)
    QoQMedProcessor.from_pretrained(model).save_pretrained(out)
    console.print(f"loaded {len(state)} released time-series tensors from {checkpoint} into {model}; saved to {out}")


@model_app.command("info")
def model_info_cmd(
    path: Annotated[Path, typer.Argument(help="Folder of a saved QoQ-Med model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameters per part and ECG settings of a saved QoQ-Med model (reads only its config)."""
    from .modeling.build import BuildError, model_info

    try:
        info = model_info(path)
    except BuildError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    params = info["parameters"]
    console.print(f"{path}: {params['total'] / 1e6:.2f}M parameters (LLM {params['llm'] / 1e6:.2f}M, vision "
                  f"{params['vision'] / 1e6:.2f}M, ECG encoder {params['ecg'] / 1e6:.2f}M, ECG projector "
                  f"{params['projector'] / 1e6:.3f}M); dtype {info['dtype']}")
    ecg = info["ecg"]
    console.print(f"ECG: {ecg['token_mode']} ({ecg['tokens_per_record']} tokens per record), {ecg['projector']} "
                  f"projector, token ids {ecg['token_ids']}; frozen: {', '.join(info['frozen_modules']) or 'none'}")


@experiment_app.command("compare-estimators")
def experiment_compare_estimators(
    config: Annotated[Path, typer.Argument(help="YAML: data/model/sft/rl/eval sections as a recipe, plus an "
                                                "'experiment' section (seeds, variants, baseline, quick); "
                                                "'default' for the bundled one.")],
    out: Annotated[Path, typer.Option(help="Folder for data, per-seed runs, report.md, results.json, PNGs.")]
    = Path("experiment_out"),
    seeds: Annotated[Optional[int], typer.Option(help="Number of seeds (overrides experiment.seeds).")] = None,
    quick: Annotated[bool, typer.Option(help="Apply the config's experiment.quick overrides (smaller data, "
                                             "shorter training): the minutes-long preset.")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Units trained side by side, each in its own "
                                                               "process (default: one per CPU core).")] = None,
) -> None:
    """Train GRPO, DRPO (each mode) and other baselines from one shared warm start per seed; compare them.

    Per seed, one supervised warm start is trained and every estimator variant then runs RL with the same
    budget from it. All are evaluated on the validation and the held-out test split; OUT/report.md gives
    per-domain macro-F1 and accuracy (mean +- std over seeds), change vs the baseline (GRPO), a rare- vs
    abundant-domain summary, the DRPO variant chosen on validation, learning curves and DRPO's per-domain
    scale factors (PNG). Units run side by side, one process per CPU core (--workers); re-running the same
    command reuses finished units. CONFIG may be `default` for
    the bundled configs/experiment.yaml (3 seeds in under an hour on 2 CPU cores; with --quick, minutes).
    """
    from .data.errors import DataError
    from .experiment import load_experiment_config, run_compare_estimators

    path = bundled_config("experiment") if str(config) == "default" else config
    try:
        cfg = load_experiment_config(path, quick=quick, seeds=seeds)
        run_compare_estimators(cfg, out, workers=workers)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


# ---- inference and serving (qoqmed/infer, qoqmed/serve) ----

def _load_pipeline(model: Path, device: Optional[str], max_new_tokens: int, num_slices: int = 4):
    from transformers.utils import logging as hf_logging

    from .infer import QoQMedPipeline

    hf_logging.disable_progress_bar()  # the spinner below says what is happening; no weight-loading bar
    try:
        with err.status(f"loading {model}"):
            return QoQMedPipeline.from_pretrained(model, device=device, max_new_tokens=max_new_tokens,
                                                  num_slices=num_slices)
    except (FileNotFoundError, OSError, ValueError) as exc:
        _fail(str(exc))


def _print_prediction(pred, overlay: Optional[Path]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    # Model text goes in as Text, never as markup: answers are full of brackets.
    diagnosis = Text(pred.diagnosis, style="bold green") if pred.diagnosis else \
        Text("(no \\boxed{} diagnosis in the answer)", style="yellow")
    console.print(Panel(diagnosis, title="diagnosis", expand=False))
    if pred.labels:
        console.print("labels: " + ", ".join(pred.labels), markup=False)
    console.print(Panel(Text(pred.reasoning or "(no <think> section)"), title="reasoning", title_align="left"))
    if pred.boxes:
        table = Table(title="evidence boxes (original image pixels)")
        for col in ("label", "x1", "y1", "x2", "y2", "image"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for b in pred.boxes:
            source = pred.images[b["image"]]["source"] if b.get("image") is not None else "-"
            table.add_row(Text(b["label"]), *(f"{v:g}" for v in b["bbox_2d"]), source)
        console.print(table)
    t = pred.timing
    console.print(f"[dim]{pred.prompt_tokens} prompt + {pred.completion_tokens} answer tokens ({pred.finish_reason}); "
                  f"inputs {t['prepare_s']:.2f} s, generation {t['generate_s']:.2f} s[/]")
    if overlay is not None:
        console.print(f"overlay: {overlay}")


@app.command()
def predict(
    question: Annotated[Optional[str], typer.Argument(help="The question; inputs are placed before it, or where "
                                                           "<image>, <volume>, <ecg> placeholders say.")] = None,
    model: Annotated[Path, typer.Option(help="Model folder (save_pretrained), e.g. quickstart_out/rl/model.")]
    = Path("quickstart_out/rl/model"),
    image: Annotated[Optional[list[Path]], typer.Option(
        "--image", help="Image file: PNG, JPEG, TIFF or DICOM. Repeat for several.")] = None,
    volume: Annotated[Optional[list[Path]], typer.Option(
        "--volume", help="NIfTI file, DICOM series folder or multi-frame DICOM; 4 slices are shown. Repeatable.")]
    = None,
    ecg: Annotated[Optional[list[Path]], typer.Option(
        "--ecg", help="ECG: WFDB .hea, DICOM waveform .dcm, .npy (8 x 2500, 250 Hz, mV), or with --ecg-fs a .csv "
                      "(header row naming the leads) or .npy at another rate. Repeatable.")] = None,
    ecg_fs: Annotated[Optional[float], typer.Option(
        help="Sampling rate in Hz of the .csv/.npy ECGs given with --ecg; they are resampled and lead-mapped "
             "(WFDB and DICOM carry their own rate).")] = None,
    ehr: Annotated[Optional[str], typer.Option(help="Clinical notes as text, or @FILE to read them from a file.")]
    = None,
    window: Annotated[Optional[str], typer.Option(help="CT window for volumes: a preset (lung, brain, bone, ...) "
                                                       "or CENTER,WIDTH.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction as JSON.")] = False,
    overlay: Annotated[Optional[Path], typer.Option(
        help="Where to write the first image with the boxes drawn (default: <image name>_boxes.png here).")] = None,
    no_overlay: Annotated[bool, typer.Option("--no-overlay", help="Do not write an overlay PNG.")] = False,
    batch: Annotated[Optional[Path], typer.Option(
        help="jsonl of rows {id, question, images, volumes, ecg, ehr} (paths relative to the file) to predict.")]
    = None,
    out: Annotated[Optional[Path], typer.Option(help="With --batch: folder for predictions.jsonl and overlays/; "
                                                     "a rerun skips rows already there.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="With --batch: redo rows that failed in an earlier run.")]
    = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate() call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 answers greedily (the same inputs, the same answer); "
                                                    "above 0 samples, e.g. 0.7.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="With --temperature > 0: sample from the smallest set of tokens "
                                              "whose probability reaches this.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="With --temperature > 0: makes the sampled answer "
                                                     "reproducible.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
    = None,
) -> None:
    """Ask a model about images, volumes, ECGs and notes; print the diagnosis, reasoning and evidence boxes.

    One question:  qoqmed predict --model DIR --image chest.dcm --ecg rec.hea "Which findings are present?"

    Many rows:     qoqmed predict --model DIR --batch rows.jsonl --out preds/   (one output row per input row)

    Boxes are reported in pixels of the original image and drawn on it in the overlay PNG.
    """
    from .data.windows import parse_window
    from .infer import Decoding, InputError, save_overlay

    try:
        decoding = Decoding(temperature, top_p, seed)
    except InputError as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc.reason}")
    if batch is not None:
        if out is None:
            _fail("--batch needs --out (the folder for predictions.jsonl)")
        if question or image or volume or ecg or ecg_fs or ehr:
            _fail("--batch takes its questions and inputs from the jsonl rows; drop the question and input options")
        from .infer.batch import run_batch

        pipe = _load_pipeline(model, device, max_new_tokens)
        try:
            s = run_batch(pipe, batch, out, batch_size=batch_size, overlays=not no_overlay,
                          retry_failed=retry_failed, show_progress=not as_json, decoding=decoding)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        summary = {"rows": s.rows, "skipped": s.skipped, "predicted": s.predicted, "failed": s.failed,
                   "failed_before": s.failed_before, "output": str(s.output)}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            earlier = f" ({s.failed_before} of them failed then; --retry-failed redoes them)" if s.failed_before else ""
            reasons = "; failed rows hold their reason (\"ok\": false)" if not s.ok else ""
            console.print(f"{s.rows} rows: {s.predicted} predicted, {s.skipped} already done{earlier}, {s.failed} "
                          f"failed -> {s.output}{reasons}", markup=False, soft_wrap=True)
        if not s.ok:
            raise typer.Exit(code=1)
        return

    if question is None:
        _fail("give a question, e.g. qoqmed predict --model DIR --image x.png \"Which findings are present?\"")
    if ehr and ehr.startswith("@"):
        try:
            ehr = Path(ehr[1:]).read_text()
        except OSError as exc:
            _fail(f"--ehr {ehr}: {exc}")
    try:
        vol_window = parse_window(window)
    except ValueError:
        _fail(f"--window {window!r}: use a preset name or CENTER,WIDTH")
    ecgs = [{"path": p, "fs": ecg_fs} if ecg_fs and p.suffix.lower() in (".csv", ".npy") else p for p in ecg or []]
    pipe = _load_pipeline(model, device, max_new_tokens)
    try:
        pred = pipe(question, images=image or None, volumes=volume or None, ecg=ecgs or None, ehr=ehr,
                    window=vol_window, temperature=decoding.temperature, top_p=decoding.top_p, seed=decoding.seed)
    except InputError as exc:
        _fail(str(exc))
    written = None
    if not no_overlay and pred.visuals:
        stem = (image or volume)[0].name.split(".")[0]
        written = save_overlay(pred, overlay or Path(f"{stem}_boxes.png"))
    if as_json:
        body = pred.to_dict()
        body["overlay"] = str(written) if written else None
        print(json.dumps(body, indent=2))
    else:
        _print_prediction(pred, written)


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model folder (save_pretrained), e.g. quickstart_out/rl/model.")]
    = Path("quickstart_out/rl/model"),
    host: Annotated[str, typer.Option(help="Interface to bind. The default serves this machine only; the API "
                                           "has no authentication, so put it behind an authenticating proxy "
                                           "before exposing it to a network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most requests answered by one generate() call.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its batch.")]
    = 5.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB; larger ones get 413.")] = 32.0,
    body_timeout_s: Annotated[float, typer.Option(help="Seconds a request's body may take to arrive; later, 408.")]
    = 60.0,
    head_timeout_s: Annotated[float, typer.Option(help="Seconds a connection may take to send a request's headers "
                                                       "before it is closed.")] = 10.0,
    max_connections: Annotated[int, typer.Option(help="Open connections and requests at once; beyond, 503.")]
    = 1000,
    max_new_tokens: Annotated[int, typer.Option(help="Default answer length limit in tokens.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model over HTTP: a web page at /, POST /v1/chat/completions (OpenAI-compatible), POST /v1/predict,
    GET /healthz. Concurrent requests are batched into shared generate() calls."""
    from .serve import create_app
    from .serve.server import run

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this port can use the model")
    pipe = _load_pipeline(model, device, max_new_tokens)
    application = create_app(pipe, max_body_bytes=int(max_body_mb * (1 << 20)), max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, max_new_tokens_limit=max_tokens_limit,
                             body_timeout_s=body_timeout_s)
    console.print(f"serving {model} on http://{host}:{port}/ (API docs at /docs)")
    run(application, host=host, port=port, log_level=log_level, head_timeout_s=head_timeout_s,
        max_connections=max_connections)



def _reflow(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line, so the terminal wraps help text at its own width; paragraphs
    (blank-line separated) and indented blocks keep their breaks."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        command.callback.__doc__ = _reflow(command.callback.__doc__)
    for sub in group.registered_groups:
        _reflow_help(sub.typer_instance)


_reflow_help(app)

if __name__ == "__main__":
    app()
