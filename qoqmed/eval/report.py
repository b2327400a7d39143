"""Markdown report, plots and terminal summary of :func:`qoqmed.eval.metrics.compute_metrics` output."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import OTHER_LABEL, confusion_matrix_single_label

__all__ = ["format_metrics_table", "format_sampled_table", "format_value", "print_summary", "write_report"]

_DPI = 120
_MAX_CONFUSION_LABELS = 8

# (metrics key, column header) of the per-domain and per-dataset tables.
_SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n", "n"),
    ("macro_f1", "macro-F1"),
    ("paper_balanced_accuracy", "paper bal. acc."),
    ("balanced_accuracy", "balanced acc."),
    ("exact_match", "exact match"),
    ("auroc", "AUROC"),
    ("iou_mean", "mean IoU"),
    ("format_rate", "format rate"),
)
_LABEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("support", "support"),
    ("tp", "tp"),
    ("fp", "fp"),
    ("fn", "fn"),
    ("tn", "tn"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("specificity", "specificity"),
    ("f1", "F1"),
    ("accuracy", "accuracy"),
)


def format_value(value: Any) -> str:
    """How a metric appears in tables: floats with 3 decimals, counts as integers, missing as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_columns(metrics: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The summary columns, AUROC only when some dataset has one (the evaluation scored its labels)."""
    scored = any(entry.get("auroc") is not None for entry in metrics.get("datasets", {}).values())
    return tuple(c for c in _SUMMARY_COLUMNS if scored or c[0] != "auroc")


def _summary_row(name: str, entry: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> list[str]:
    return [name] + [format_value(entry.get(key)) for key, _ in columns]


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table with one row per domain and a final bold ``overall`` row."""
    columns = _summary_columns(metrics)
    rows = [_summary_row(dom, entry, columns) for dom, entry in metrics["domains"].items()]
    overall = _summary_row("overall", metrics["overall"], columns)
    rows.append([f"**{c}**" for c in overall])
    return _table(["domain"] + [h for _, h in columns], rows)


def _dataset_table(metrics: Mapping[str, Any]) -> str:
    columns = _summary_columns(metrics)
    header = ["dataset", "domain"] + [h for _, h in columns] + ["labels present", "out-of-set preds"]
    rows = [
        [ds, entry["domain"]]
        + [format_value(entry.get(key)) for key, _ in columns]
        + [format_value(entry["n_labels_present"]), format_value(entry["n_out_of_set_predictions"])]
        for ds, entry in metrics["datasets"].items()
    ]
    return _table(header, rows)


def _label_table(entry: Mapping[str, Any]) -> str:
    rows = [
        [label] + [format_value(m.get(key)) for key, _ in _LABEL_COLUMNS] for label, m in entry["labels"].items()
    ]
    return _table(["label"] + [h for _, h in _LABEL_COLUMNS], rows)


_DEFINITIONS = (
    "Per label: one-vs-rest over the rows of a dataset. Dataset metrics average over the labels present in its "
    "ground truth: *paper bal. acc.* is the mean one-vs-rest accuracy (what the QoQ-Med paper calls balanced "
    "accuracy); *balanced acc.* is the mean of (sensitivity + specificity) / 2. Domain = unweighted mean over its "
    "datasets; overall = unweighted mean over domains. AUROC (one-vs-rest, from the model's label "
    "probabilities) only where the evaluation scored the labels (two-label tasks). Mean IoU pools the rows that "
    "have an IoU. `-` = no data."
)


def _markdown(metrics: Mapping[str, Any], title: str, context: Mapping[str, Any] | None, plots: Sequence[Path]) -> str:
    parts = [f"# {title}", ""]
    if context:
        parts += ["## Context", ""]
        for key, value in context.items():
            shown = json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else value
            shown = format_value(shown) if isinstance(shown, float) else shown
            parts.append(f"- **{key}**: {shown}")
        parts.append("")
    parts += ["## Per domain", "", format_metrics_table(metrics), "", _DEFINITIONS, ""]
    if metrics.get("sampled"):
        parts += _sampled_section(metrics["sampled"])
    if plots:
        parts += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if metrics["datasets"]:
        parts += ["## Per dataset", "", _dataset_table(metrics), "", "## Per label", ""]
        for ds, entry in metrics["datasets"].items():
            parts += [f"### {ds} ({entry['domain']}, n={entry['n']})", "", _label_table(entry), ""]
    return "\n".join(parts)


def _sampled_columns(k: int) -> tuple[tuple[str, str], ...]:
    """(metrics key, column header) of the sampled table, for k samples per question."""
    cols = [("questions", "questions"), ("mean_reward", "mean reward"), ("mean_accuracy", "accuracy"),
            ("pass@1", "pass@1")]
    if k > 1:
        cols.append((f"pass@{k}", f"pass@{k}"))
    return (*cols, ("constant_accuracy", "constant-accuracy share"))


def format_sampled_table(sampled: Mapping[str, Any]) -> str:
    """Markdown table of a sampled evaluation: one row per domain and a final bold ``overall`` row."""
    cols = _sampled_columns(int(sampled["k"]))
    rows = [[dom] + [format_value(m.get(key)) for key, _ in cols] for dom, m in sampled["domains"].items()]
    rows.append([f"**{c}**" for c in ["overall"] + [format_value(sampled["overall"].get(key)) for key, _ in cols]])
    return _table(["domain"] + [h for _, h in cols], rows)


def _sampled_section(sampled: Mapping[str, Any]) -> list[str]:
    """The sampled evaluation (what RL optimises) as a per-domain table, after the greedy one."""
    k = int(sampled["k"])
    head = (f"## Sampled answers (k={k}, T={sampled['temperature']:g}, "
            f"top_p={sampled['top_p']:g}, seed={sampled['seed']})")
    note = (f"Sampled at T={sampled['temperature']:g}, k={k} answers per question, each scored like an RL "
            "rollout. *mean reward* and *accuracy* (the accuracy reward: set-F1 of the labels with the paper "
            "preset) average over all samples. A sample solves its question when its label set is exactly right; "
            + (f"pass@1 and pass@{k} use" if k > 1 else "pass@1 uses")
            + " the unbiased estimator of Chen et al. 2021. *constant-accuracy share*: questions whose samples all "
            "score the same accuracy (no signal for group-relative RL). Domain = mean over its questions; "
            "overall = unweighted mean over domains.")
    return [head, "", format_sampled_table(sampled), "", note, ""]


def _plot_domains(metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    groups = list(metrics["domains"].items()) + [("overall", metrics["overall"])]
    series = (
        ("macro_f1", "macro-F1", "#4C72B0"),
        ("paper_balanced_accuracy", "paper balanced acc.", "#DD8452"),
        ("balanced_accuracy", "balanced acc.", "#55A868"),
    )
    width = 0.26
    x = np.arange(len(groups))
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups) + 2), 4.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    for i, (key, name, color) in enumerate(series):
        values = [entry.get(key) for _, entry in groups]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(x + (i - 1) * width, heights, width, label=name, color=color)
        shown = [format_value(v) if v is not None else "" for v in values]
        ax.bar_label(bars, labels=shown, fontsize=7, rotation=90, padding=2)
    for pos, (_, entry) in zip(x, groups):
        if all(entry.get(key) is None for key, _, _ in series):
            ax.text(pos, 0.02, "no data", ha="center", va="bottom", fontsize=8, color="grey", rotation=90)
    ax.set_xticks(x, [f"{name}\nn={entry.get('n', 0)}" for name, entry in groups], fontsize=8)
    if len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score")
    ax.set_xlabel("clinical domain (n = evaluated rows)")
    ax.set_title("Macro-F1 and accuracy per domain")
    ax.legend(fontsize=8, loc="upper left", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=_DPI)


def _plot_confusion(matrix: np.ndarray, labels: Sequence[str], dataset: str, path: Path) -> None:
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(2.2 + 0.75 * (n + 1), 1.8 + 0.65 * n), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n + 1), list(labels) + [OTHER_LABEL], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), list(labels), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix: {dataset}")
    fig.colorbar(image, ax=ax, label="share of true row")
    fig.savefig(path, dpi=_DPI)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def _confusion_plots(
    metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path
) -> dict[str, Path]:
    by_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_dataset.setdefault(str(row["dataset"]), []).append(row)
    written: dict[str, Path] = {}
    for ds, entry in metrics["datasets"].items():
        ds_rows = by_dataset.get(ds)
        if not ds_rows or any(len(r["true_labels"]) != 1 for r in ds_rows):
            continue
        labels = [label for label, m in entry["labels"].items() if m["support"] > 0]
        if not 1 < len(labels) <= _MAX_CONFUSION_LABELS:
            continue
        stem = f"confusion_{_safe_name(ds)}"
        while stem in written:
            stem += "_"
        path = out_dir / f"{stem}.png"
        _plot_confusion(confusion_matrix_single_label(ds_rows, labels), labels, ds, path)
        written[stem] = path
    return written


def write_report(
    metrics: Mapping[str, Any],
    out_dir: str | Path,
    *,
    title: str = "qoqmed evaluation",
    context: Mapping[str, Any] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``metrics.json``, ``per_domain_f1.png`` and, given ``rows``, one
    ``confusion_<dataset>.png`` per single-label dataset with 2 to 8 labels.

    Returns the written paths keyed ``report``, ``metrics``, ``per_domain_f1`` and ``confusion_<dataset>``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["metrics"] = out / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    paths["per_domain_f1"] = out / "per_domain_f1.png"
    _plot_domains(metrics, paths["per_domain_f1"])
    if rows is not None:
        paths.update(_confusion_plots(metrics, list(rows), out))

    plots = [p for key, p in paths.items() if p.suffix == ".png"]
    paths["report"] = out / "report.md"
    paths["report"].write_text(_markdown(metrics, title, context, plots) + "\n", encoding="utf-8")
    return paths


def print_summary(metrics: Mapping[str, Any], console: Any = None) -> None:
    """Print the per-domain table to the terminal with ``rich`` (and the sampled one, when metrics have it)."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    table = Table(title="qoqmed evaluation per domain")
    table.add_column("domain")
    columns = _summary_columns(metrics)
    for _, header in columns:
        table.add_column(header, justify="right")
    for dom, entry in metrics["domains"].items():
        table.add_row(*_summary_row(dom, entry, columns))
    table.add_section()
    table.add_row(*_summary_row("overall", metrics["overall"], columns), style="bold")
    console.print(table)
    sampled = metrics.get("sampled")
    if sampled:
        cols = _sampled_columns(int(sampled["k"]))
        table = Table(title=f"sampled at T={sampled['temperature']:g}, k={sampled['k']}")
        table.add_column("domain")
        for _, header in cols:
            table.add_column(header, justify="right")
        for dom, entry in sampled["domains"].items():
            table.add_row(dom, *[format_value(entry.get(key)) for key, _ in cols])
        table.add_section()
        table.add_row("overall", *[format_value(sampled["overall"].get(key)) for key, _ in cols], style="bold")
        console.print(table)
