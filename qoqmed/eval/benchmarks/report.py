"""The report of a benchmark run (``report.md`` beside ``results.json``) and the comparison of several runs.

A comparison lists every run's headline numbers side by side and, above them, every setting in which the runs
differ (protocol, prompt style, split, answer length, image limit ...): the usual reasons two numbers of the same
model disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HEADLINE", "compare_benchmark_runs", "format_benchmark_comparison", "format_benchmark_report",
           "is_benchmark_run", "load_benchmark_results", "write_benchmark_report"]

# (column, key path in a summary, what it counts) of the headline numbers.
HEADLINE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("closed acc.", ("closed", "accuracy"), "closed questions answered right (yes/no read from the answer)"),
    ("open recall", ("open", "recall"), "mean share of the reference's tokens found in the answer"),
    ("open EM", ("open", "exact_match"), "open answers equal to the reference after normalisation"),
    ("choice acc.", ("choice", "accuracy"), "multiple-choice questions whose option letter is right"),
    ("accuracy", ("accuracy",), "all questions: closed and choice right, open exact match"),
    ("unparseable", ("unparseable_rate",), "answers from which no yes/no, letter or text could be read"),
)


def _get(summary: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = summary
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]


def _summary_row(name: str, summary: Mapping[str, Any]) -> list[str]:
    return [name, str(summary["n"]), *(_pct(_get(summary, path)) for _, path, _ in HEADLINE)]


def format_benchmark_report(results: Mapping[str, Any]) -> str:
    """Markdown of one run's ``results.json``."""
    s = results["settings"]
    lines = [f"# {results['title']}: {results['model'] or 'model'}", "",
             f"Split `{s['split']}` of {results['source']}, {results['questions']} questions, read from "
             f"`{results['data']}`.", "", "## Settings", ""]
    lines += _table(["setting", "value"], [[k, v] for k, v in s.items()])
    lines += ["", f"Questions with more than {s['max_images']} images (shown their first {s['max_images']}): "
              f"{results['questions_over_image_limit']}.", "", "## Results (%)", ""]
    header = ["", "n", *(name for name, _, _ in HEADLINE)]
    lines += _table(header, [_summary_row("overall", results["overall"])])
    for name, values in results["subsets"].items():
        lines += ["", f"### By {name}", ""]
        lines += _table([name, *header[1:]], [_summary_row(v, summary) for v, summary in values.items()])
    lines += ["", "## What each number counts", ""]
    lines += [f"- **{name}**: {what}." for name, _, what in HEADLINE]
    lines += [f"- Answers are read and scored by the `{s['protocol']}` protocol "
              "(`qoqmed.eval.benchmarks.protocol`). Unparseable answers count as wrong; none is guessed.", ""]
    return "\n".join(lines)


def write_benchmark_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(format_benchmark_report(results), encoding="utf-8")
    return path


def _results_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "results.json" if p.is_dir() else p


def is_benchmark_run(path: str | Path) -> bool:
    """Whether ``path`` is a benchmark run folder (or its ``results.json``)."""
    return _results_file(path).name == "results.json" and _results_file(path).is_file()


def load_benchmark_results(path: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a benchmark run folder (or the file itself)."""
    file = _results_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"cannot compare run: {path} has no results.json")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(results, dict) or not all(k in results for k in ("benchmark", "settings", "overall")):
        raise ValueError(f"{file} is not a qoqmed benchmark results.json (expected benchmark, settings, overall)")
    return results


def compare_benchmark_runs(paths: Sequence[str | Path], names: Sequence[str] | None = None,
                           out_dir: str | Path | None = None) -> dict[str, Any]:
    """Comparison data of benchmark runs: per run its benchmark, settings and headline numbers, and the settings
    that differ between runs. With ``out_dir``, also writes ``compare.md`` and ``compare.json``."""
    runs = [load_benchmark_results(p) for p in paths]
    names = [str(n) for n in names] if names else [Path(p).name if Path(p).is_dir() else Path(p).parent.name
                                                   for p in paths]
    if len(names) != len(runs):
        raise ValueError(f"got {len(names)} names for {len(runs)} runs")
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}; pass --names")
    keys = list(dict.fromkeys(k for r in runs for k in r["settings"]))
    differ = {k: {n: r["settings"].get(k) for n, r in zip(names, runs)} for k in keys
              if len({json.dumps(r["settings"].get(k)) for r in runs}) > 1}
    comparison = {
        "runs": names,
        "settings_that_differ": differ,
        "rows": [{"run": n, "benchmark": r["benchmark"], "model": r.get("model", ""), "n": r["overall"]["n"],
                  **{name: _get(r["overall"], path) for name, path, _ in HEADLINE}} for n, r in zip(names, runs)],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(format_benchmark_comparison(comparison), encoding="utf-8")
        (out / "compare.json").write_text(json.dumps(comparison, indent=1), encoding="utf-8")
    return comparison


def format_benchmark_comparison(comparison: Mapping[str, Any]) -> str:
    """Markdown of :func:`compare_benchmark_runs` data."""
    lines = ["# Benchmark runs compared", ""]
    if comparison["settings_that_differ"]:
        lines += ["Settings that differ between the runs:", ""]
        runs = comparison["runs"]
        lines += _table(["setting", *runs], [[k, *(v[n] for n in runs)]
                                             for k, v in comparison["settings_that_differ"].items()])
    else:
        lines += ["The runs share every setting."]
    lines += ["", "## Results (%)", ""]
    header = ["run", "benchmark", "model", "n", *(name for name, _, _ in HEADLINE)]
    lines += _table(header, [[r["run"], r["benchmark"], r["model"], r["n"], *(_pct(r[name]) for name, _, _ in HEADLINE)]
                             for r in comparison["rows"]])
    return "\n".join(lines) + "\n"
