"""Evaluation commands: eval (a model on records or a public benchmark) and compare (runs side by side)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AllowOutsidePaths, console, fail


def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="Folder with a saved QoQ-Med model and processor, or a LoRA "
                                             "adapter folder.")],
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
    inputs: Annotated[Optional[str], typer.Option(
        help="Compare input sets on the same rows: comma-separated sets of ecg, image, text joined by '+' (e.g. "
             "'ecg,image,text,ecg+image+text'; 'table4' for that list). Each set is evaluated with the other "
             "modalities dropped from every row; writes inputs.md with macro-F1, balanced accuracy and "
             "AUROC per set.")] = None,
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
    from ..data.schema import load_records

    if benchmark is not None:
        return _eval_benchmark(model, data, out, benchmark, split, protocol, prompt_style,
                               1024 if max_new_tokens is None else max_new_tokens, batch_size, max_images)
    max_new_tokens = 128 if max_new_tokens is None else max_new_tokens
    from ..eval.evaluate import evaluate
    from ..eval.report import print_summary, write_report
    from ..rewards.scores import make_scorer

    _check_sampling(samples, temperature, top_p, seed)
    records = load_records(data, allow_outside=allow_outside_paths)
    table = _read_synonyms(synonyms)
    make_scorer(preset, iou_reduce=iou_reduce, synonyms=table)
    if label_parser not in ("qoqmed", "reference"):
        fail(f"--label-parser must be qoqmed or reference, got {label_parser!r}")
    if prompt_style not in ("qoqmed", "released"):
        fail(f"--prompt-style must be qoqmed or released, got {prompt_style!r}")
    if inputs is not None:
        return _eval_inputs(model, records, out, inputs, samples, dict(
            batch_size=batch_size, max_new_tokens=max_new_tokens, preset=preset, iou_reduce=iou_reduce,
            synonyms=table, label_parser=label_parser, prompt_style=prompt_style))
    net, proc = _load(model)
    metrics, rows = evaluate(net, proc, records, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             preset=preset, iou_reduce=iou_reduce, synonyms=table, label_parser=label_parser,
                             prompt_style=prompt_style)
    context = {"model": str(model), "data": str(data), "records": len(records), "reward preset": preset,
               "label parser": label_parser, "prompt style": prompt_style,
               "decoding": f"greedy, {max_new_tokens} new tokens"}
    if samples:
        from ..eval.evaluate import evaluate_sampled

        metrics["sampled"], _ = evaluate_sampled(net, proc, records, k=samples, temperature=temperature,
                                                 top_p=top_p, seed=seed, out_dir=out, batch_size=batch_size,
                                                 max_new_tokens=max_new_tokens, preset=preset,
                                                 iou_reduce=iou_reduce, synonyms=table,
                                                 prompt_style=prompt_style)
        context["sampled decoding"] = (f"{samples} samples per record, temperature {temperature:g}, top_p "
                                       f"{top_p:g}, seed {seed}, {max_new_tokens} new tokens")
    write_report(metrics, out, title=f"qoqmed evaluation of {model.name}", context=context, rows=rows)
    print_summary(metrics)


def _eval_inputs(model: Path, records: list, out: Path, inputs: str, samples: int, settings: dict) -> None:
    from ..data.modalities import parse_input_sets
    from ..eval.ablation import evaluate_input_sets, format_input_table

    if samples:
        fail("--inputs and --samples do not combine: compare input sets with greedy answers")
    try:
        sets = parse_input_sets(inputs)
    except ValueError as exc:
        fail(f"--inputs: {exc}")
    net, proc = _load(model)
    results = evaluate_input_sets(net, proc, records, sets, out, title=f"qoqmed evaluation of {model.name}",
                                  **settings)
    console.print(format_input_table(results), markup=False)
    console.print(f"wrote {out / 'inputs.md'}, {out / 'inputs.json'} and one report per input set")


def _load(model: Path):
    """(model, processor) of a model or LoRA adapter folder; one that cannot be loaded ends the command."""
    from ..modeling.lora import load_model_and_processor

    try:
        return load_model_and_processor(model)
    except (OSError, ValueError) as exc:
        fail(str(exc))


def _check_sampling(samples: int, temperature: float, top_p: float, seed: int) -> None:
    """The --samples options, each refused in one line when out of range."""
    if samples < 0:
        fail(f"--samples must be >= 0 (0 turns sampling off), got {samples}")
    if samples and not (math.isfinite(temperature) and temperature > 0):
        fail(f"--temperature must be > 0 with --samples (greedy answers are the default pass), got {temperature}")
    if samples and not 0 < top_p <= 1:
        fail(f"--top-p must be in (0, 1] with --samples, got {top_p}")
    if samples and not 0 <= seed < 2**63:
        fail(f"--seed must be in [0, 2**63), got {seed}")


def _read_synonyms(path: Path | None) -> dict[str, str] | None:
    """The --synonyms table (alias -> label), or None without the option."""
    if path is None:
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{path}: cannot read synonyms: {exc}")
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        fail(f"{path}: synonyms must be a JSON object of alias -> label strings")
    return table


def _eval_benchmark(model: Path, data: Path, out: Path, benchmark: str, split: Optional[str], protocol: str,
                    prompt_style: str, max_new_tokens: int, batch_size: int, max_images: int) -> None:
    from ..eval.benchmarks import get_benchmark
    from ..eval.benchmarks.run import Settings, evaluate_benchmark

    bench = get_benchmark(benchmark)
    Settings(benchmark, split or bench.splits[0], protocol, prompt_style, max_new_tokens, max_images,
             batch_size=batch_size)
    net, proc = _load(model)
    results = evaluate_benchmark(net, proc, benchmark, data, out, split=split, protocol=protocol,
                                 prompt_style=prompt_style, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, max_images=max_images, model_name=model.name)
    o = results["overall"]
    console.print(f"{results['title']} ({results['settings']['split']}, {results['questions']} questions): "
                  f"accuracy {100 * o['accuracy']:.1f}%, unparseable {100 * o['unparseable_rate']:.1f}%; "
                  f"wrote {out / 'report.md'}", markup=False)


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or metrics.json files); the first is the baseline.")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md and compare.png.")] = Path("compare_out"),
    names: Annotated[Optional[str], typer.Option(help="Comma-separated display names, one per run.")] = None,
) -> None:
    """Side-by-side per-domain macro-F1 and paper balanced accuracy of runs, with change vs the first run.

    Benchmark runs (eval --benchmark) are compared by their headline numbers and the settings that differ."""
    from ..eval.benchmarks.report import (
        compare_benchmark_runs,
        format_benchmark_comparison,
        is_benchmark_run,
    )
    from ..eval.compare import compare_runs, format_compare_table

    labels = names.split(",") if names else None
    kinds = {is_benchmark_run(r) for r in runs}
    if kinds == {True}:
        result = compare_benchmark_runs(runs, names=labels, out_dir=out)
        console.print(format_benchmark_comparison(result), markup=False)
        console.print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}")
        return
    if len(kinds) > 1:
        fail("cannot compare benchmark runs (results.json) with recipe runs (metrics.json)")
    result = compare_runs(runs, names=labels, out_dir=out)
    console.print(format_compare_table(result), markup=False)
    console.print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
