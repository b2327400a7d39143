"""Single-modality vs fused inputs on the same rows (the QoQ-Med paper's Table 4).

:func:`evaluate_input_sets` evaluates a model once per input set (``ecg``, ``image``, ``text``,
``ecg+image+text``...), each time on the same records with the other modalities dropped
(:func:`qoqmed.data.modalities.keep_modalities`), and writes every run's report in ``inputs_<set>/`` plus one table,
``inputs.md`` / ``inputs.json``: per dataset, one row per input set, macro-F1, balanced accuracy (both
definitions) and AUROC.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.modalities import input_set_name, keep_modalities
from ..data.schema import Record
from .report import format_value

__all__ = ["INPUT_TABLE_COLUMNS", "evaluate_input_sets", "format_input_table"]

INPUT_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n", "n"),
    ("macro_f1", "macro-F1"),
    ("balanced_accuracy", "balanced acc."),
    ("paper_balanced_accuracy", "paper bal. acc."),
    ("auroc", "AUROC"),
)


def format_input_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one table per dataset, one row per input set (``results``: set name -> metrics)."""
    datasets = list(dict.fromkeys(ds for metrics in results.values() for ds in metrics["datasets"]))
    lines: list[str] = []
    for ds in datasets:
        lines += [f"### {ds}", "", "| inputs | " + " | ".join(h for _, h in INPUT_TABLE_COLUMNS) + " |",
                  "|---|" + "---|" * len(INPUT_TABLE_COLUMNS)]
        for name, metrics in results.items():
            entry = metrics["datasets"].get(ds, {})
            lines.append(f"| {name} | " + " | ".join(format_value(entry.get(k)) for k, _ in INPUT_TABLE_COLUMNS)
                         + " |")
        lines.append("")
    return "\n".join(lines)


_NOTE = (
    "Each row evaluates the same records with only the listed modalities: `ecg` = the ECG files, `image` = the "
    "images and volumes, `text` = the clinical notes (the row's `ehr`); the question is always kept. "
    "*balanced acc.* = mean of sensitivity and specificity; *paper bal. acc.* = mean one-vs-rest accuracy (the "
    "QoQ-Med paper's definition; plain accuracy on a two-label task). AUROC from the model's probability of each "
    "label after its answer (answer-token log-probs).")


def evaluate_input_sets(model, processor, records: Sequence[Record], input_sets: Sequence[Collection[str]],
                        out_dir: str | Path, title: str = "inputs", **evaluate_kwargs: Any) -> dict[str, dict]:
    """Evaluate ``records`` under each input set; write the reports and the table. Returns set name -> metrics."""
    from .evaluate import evaluate
    from .report import write_report

    out = Path(out_dir)
    results: dict[str, dict] = {}
    for modalities in input_sets:
        name = input_set_name(modalities)
        ablated = [keep_modalities(rec, modalities) for rec in records]
        metrics, rows = evaluate(model, processor, ablated, out / f"inputs_{name}", **evaluate_kwargs)
        write_report(metrics, out / f"inputs_{name}", title=f"{title}: {name}", context={"inputs": name},
                     rows=rows)
        results[name] = metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "inputs.md").write_text(f"# {title}: single-modality vs fused inputs\n\n{format_input_table(results)}\n"
                                   f"{_NOTE}\n", encoding="utf-8")
    return results
