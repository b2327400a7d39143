"""Side-by-side comparison of evaluation runs (``metrics.json`` from :func:`qoqmed.eval.report.write_report`).

The table reads like Table 2 of the QoQ-Med paper: one row per clinical domain plus an ``overall`` row, macro-F1
and paper balanced accuracy (mean one-vs-rest accuracy) for every run, and each run's relative change against a
baseline run, ``100 * (run - baseline) / baseline``. A domain present in any run appears; a value a run lacks is
shown as ``-``, and so is a relative change whose baseline is missing or zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .report import format_value

__all__ = ["COMPARED_METRICS", "build_comparison", "compare_runs", "format_compare_table", "load_run_metrics"]

# (metrics key, short header) of the compared metrics.
COMPARED_METRICS: tuple[tuple[str, str], ...] = (
    ("macro_f1", "macro-F1"),
    ("paper_balanced_accuracy", "paper bal. acc."),
)
OVERALL = "overall"
_DPI = 120


def load_run_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics dict of a run: ``path`` is a run directory holding ``metrics.json`` or the file itself."""
    p = Path(path)
    file = p / "metrics.json" if p.is_dir() else p
    if not file.is_file():
        where = f"{p} has no metrics.json" if p.is_dir() else f"{file} does not exist"
        raise FileNotFoundError(f"cannot compare run: {where}")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    if (
        not isinstance(metrics, dict)
        or not isinstance(metrics.get("domains"), dict)
        or not isinstance(metrics.get("overall"), dict)
        or not all(isinstance(v, dict) for v in metrics["domains"].values())
    ):
        raise ValueError(f"{file} is not a qoqmed metrics.json (expected 'domains' and 'overall' mappings)")
    return metrics


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if np.isfinite(v) else None


def _relative_change(value: float | None, base: float | None) -> float | None:
    """Percent change of ``value`` against ``base``; ``None`` when either is missing or ``base`` is zero."""
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def build_comparison(
    metrics: Sequence[Mapping[str, Any]], names: Sequence[str], baseline: int = 0
) -> dict[str, Any]:
    """Comparison data of already loaded metrics dicts (see :func:`compare_runs` for the layout)."""
    if len(metrics) == 0:
        raise ValueError("need at least one run to compare")
    if len(names) != len(metrics):
        raise ValueError(f"got {len(names)} names for {len(metrics)} runs")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}")
    if not -len(names) <= baseline < len(names):
        raise ValueError(f"baseline index {baseline} out of range for {len(names)} runs")
    base_name = names[baseline]

    # Domains in order of first appearance, run by run.
    domains = list(dict.fromkeys(dom for m in metrics for dom in m["domains"]))
    values: dict[str, dict[str, dict[str, float | None]]] = {}
    change: dict[str, dict[str, dict[str, float | None]]] = {}
    n: dict[str, dict[str, int | None]] = {}
    for row in domains + [OVERALL]:
        entries = [m["overall"] if row == OVERALL else m["domains"].get(row) for m in metrics]
        n[row] = {name: (e.get("n") if e is not None else None) for name, e in zip(names, entries)}
        values[row] = {
            key: {name: (_number(e.get(key)) if e is not None else None) for name, e in zip(names, entries)}
            for key, _ in COMPARED_METRICS
        }
        change[row] = {
            key: {
                name: _relative_change(v, per_run[base_name]) for name, v in per_run.items() if name != base_name
            }
            for key, per_run in values[row].items()
        }
    return {
        "runs": names,
        "baseline": base_name,
        "metrics": [key for key, _ in COMPARED_METRICS],
        "domains": domains,
        "values": values,
        "relative_change": change,
        "n": n,
    }


def _format_change(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:+.1f}%"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_compare_table(comparison: Mapping[str, Any]) -> str:
    """Markdown table of :func:`build_comparison` / :func:`compare_runs` data: per metric, one column per run
    followed by one relative-change column per non-baseline run; a final bold ``overall`` row."""
    runs, base = comparison["runs"], comparison["baseline"]
    others = [r for r in runs if r != base]
    headers = {key: h for key, h in COMPARED_METRICS}
    header = ["domain"]
    for key in comparison["metrics"]:
        header += [f"{headers.get(key, key)} {r}" for r in runs]
        header += [f"Δ {headers.get(key, key)} {r} vs {base}" for r in others]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|---|" + "|".join("--:" for _ in header[1:]) + "|"]
    for row in comparison["domains"] + [OVERALL]:
        cells = [row]
        for key in comparison["metrics"]:
            cells += [format_value(comparison["values"][row][key][r]) for r in runs]
            cells += [_format_change(comparison["relative_change"][row][key][r]) for r in others]
        if row == OVERALL:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _markdown(comparison: Mapping[str, Any], sources: Sequence[str], png_name: str) -> str:
    runs = comparison["runs"]
    parts = ["# qoqmed run comparison", "", "## Runs", ""]
    parts += [
        f"- **{name}**{' (baseline)' if name == comparison['baseline'] else ''}: `{src}`"
        for name, src in zip(runs, sources)
    ]
    parts += [
        "",
        "## Per domain",
        "",
        format_compare_table(comparison),
        "",
        "Macro-F1 and paper balanced accuracy (mean one-vs-rest accuracy, what the QoQ-Med paper calls balanced "
        f"accuracy). Δ = relative change against **{comparison['baseline']}**, 100 × (run − baseline) / baseline. "
        "`-` = the run has no value, or the baseline is missing or zero. Each run's overall is its own unweighted "
        "mean over the domains it evaluated, so overalls of runs with different domains are not like for like.",
        "",
        f"![comparison]({png_name})",
        "",
    ]
    return "\n".join(parts)


def _plot(comparison: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    runs = comparison["runs"]
    groups = comparison["domains"] + [OVERALL]
    headers = dict(COMPARED_METRICS)
    k = len(runs)
    width = 0.8 / k
    x = np.arange(len(groups))
    colors = [f"C{i % 10}" for i in range(k)]
    n_panels = len(comparison["metrics"])
    fig = Figure(
        figsize=(max(6.5, 0.35 * k * len(groups) + 2.5), 3.6 * n_panels), dpi=_DPI, layout="constrained"
    )
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, comparison["metrics"]):
        for i, (run, color) in enumerate(zip(runs, colors)):
            vals = [comparison["values"][g][key][run] for g in groups]
            pos = x + (i - (k - 1) / 2) * width
            bars = ax.bar(pos, [v if v is not None else 0.0 for v in vals], width, label=run, color=color)
            ax.bar_label(bars, labels=[format_value(v) if v is not None else "" for v in vals],
                         fontsize=7, rotation=90, padding=2)
            for p, v in zip(pos, vals):
                if v is None:  # a missing value must not read as a zero bar
                    ax.text(p, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="grey", rotation=90)
        ax.set_xticks(x, groups, fontsize=8)
        if len(groups) > 1:
            ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 1.2)
        ax.set_ylabel(headers.get(key, key))
        ax.set_title(f"{headers.get(key, key)} per domain (baseline: {comparison['baseline']})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncols=min(k, 4))
    axes[-1].set_xlabel("clinical domain")
    fig.savefig(path, dpi=_DPI)


def _default_names(paths: Sequence[Path]) -> list[str]:
    raw = [(p.parent if p.name == "metrics.json" and not p.is_dir() else p).name or str(p) for p in paths]
    if len(set(raw)) == len(raw):
        return raw
    return [f"{name} ({i})" for i, name in enumerate(raw)]


def compare_runs(
    run_dirs: Sequence[str | Path],
    names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    baseline: int = 0,
) -> dict[str, Any]:
    """Compare evaluation runs and, given ``out_dir``, write ``compare.md`` and ``compare.png`` there.

    Each entry of ``run_dirs`` is a run directory holding ``metrics.json`` or the path of the file itself.
    ``names`` default to the run directories' names; ``baseline`` indexes the run others are compared to.
    Returns::

        {"runs": [names], "baseline": name, "metrics": ["macro_f1", "paper_balanced_accuracy"],
         "domains": [domains in order of first appearance],
         "values": {domain or "overall": {metric: {run: float | None}}},
         "relative_change": {domain or "overall": {metric: {run: percent | None}}},  # non-baseline runs
         "n": {domain or "overall": {run: rows | None}},
         "paths": {"markdown": Path, "png": Path}}  # only when out_dir is given
    """
    if isinstance(run_dirs, (str, Path)):
        raise TypeError("run_dirs must be a sequence of paths, not a single path")
    paths = [Path(p) for p in run_dirs]
    metrics = [load_run_metrics(p) for p in paths]
    comparison = build_comparison(metrics, list(names) if names is not None else _default_names(paths), baseline)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        png = out / "compare.png"
        md = out / "compare.md"
        _plot(comparison, png)
        md.write_text(_markdown(comparison, [str(p) for p in paths], png.name) + "\n", encoding="utf-8")
        comparison["paths"] = {"markdown": md, "png": png}
    return comparison
