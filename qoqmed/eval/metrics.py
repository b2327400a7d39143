"""Classification, grounding and format metrics per label, dataset, domain and overall.

Definitions (docs/design.md §5):

* Per label ``l`` of a dataset, one-vs-rest over the rows of that dataset: ``tp``, ``fp``, ``fn``, ``tn``,
  ``accuracy = (tp + tn) / n``, ``precision``, ``recall`` (sensitivity), ``specificity = tn / (tn + fp)``,
  ``f1`` and ``support = tp + fn``. Precision, recall and F1 are 0 when undefined (no predictions or no
  positives); specificity is ``None`` when undefined (every row carries the label).
* Per dataset, over the labels *present in the ground truth* of that dataset (``support > 0``):

  - ``macro_f1``: mean per-label F1;
  - ``paper_balanced_accuracy``: mean one-vs-rest accuracy, what the QoQ-Med paper calls "balanced accuracy";
  - ``balanced_accuracy``: mean of ``(sensitivity + specificity) / 2`` (the usual definition; where specificity
    is undefined the label contributes its sensitivity alone);

  plus ``exact_match`` (fraction of rows whose predicted label set equals the true set) and ``format_rate``
  (fraction of rows with ``format_ok``); ``auroc`` when every row of the dataset carries ``label_scores`` (the
  model's probability of each label, e.g. from its answer-token log-probs): the mean over the labels present and
  absent in some row of the one-vs-rest ROC AUC of that label's score (scikit-learn's ``roc_auc_score``; for a
  two-label task, the AUROC of either label's probability), else ``None``. A dataset with no ground-truth labels at all has ``None`` for the three
  label-averaged metrics.
* Per domain: unweighted mean over its datasets of each of those metrics (``None`` values skipped). Overall:
  unweighted mean over domains, so a huge dataset or domain does not drown out a small one.
* Grounding IoU (``iou_mean``, ``iou_median``, ``iou_n``) is computed at every level over the rows whose ``iou`` is
  not ``None``, pooled; ``iou_n`` says how many rows that is. Over the same rows, when they carry ``pred_boxes``:
  ``boxes_per_answer`` (mean number of predicted boxes) and ``box_rate`` (share of answers with at least one box),
  which show a model that stops localising even where IoU is low anyway.

Label sets: ``label_sets[dataset]`` when given; otherwise the union of true and predicted labels seen for the
dataset, in which case a predicted label never seen in the ground truth gets its own entry (support 0, only false
positives) but does not enter the label-averaged metrics. With an explicit label set, a predicted label outside it
is a false positive for no label: it only breaks ``exact_match`` and is counted in
``n_out_of_set_predictions``. A ground-truth label outside an explicit label set is an error.

Labels match case-insensitively after collapsing whitespace; the name shown is the one from the label set, else
the first ground-truth spelling, else the first predicted spelling. Labels keep the order of an explicit label set;
otherwise ground-truth labels come first, then prediction-only labels, each in name order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix, multilabel_confusion_matrix, precision_recall_fscore_support, roc_auc_score,
)

__all__ = [
    "AVERAGED_METRICS",
    "IOU_KEYS",
    "OTHER_LABEL",
    "SAMPLED_METRICS",
    "compute_metrics",
    "compute_sampled_metrics",
    "confusion_matrix_single_label",
    "normalize_label",
    "pass_at_k",
]

# Metrics averaged unweighted from dataset to domain to overall.
AVERAGED_METRICS: tuple[str, ...] = (
    "macro_f1",
    "paper_balanced_accuracy",
    "balanced_accuracy",
    "exact_match",
    "format_rate",
    "auroc",
)
IOU_KEYS: tuple[str, ...] = ("iou_mean", "iou_median", "iou_n", "boxes_per_answer", "box_rate")
OTHER_LABEL = "other/none"

_REQUIRED_KEYS = ("domain", "dataset", "true_labels", "pred_labels", "format_ok")


def normalize_label(label: str) -> str:
    """Matching key of a label: whitespace collapsed, case folded."""
    return " ".join(str(label).split()).casefold()


def _row_name(row: Mapping[str, Any], index: int) -> str:
    return f"row {index} (id={row.get('id')!r})"


def _label_list(row: Mapping[str, Any], key: str, index: int) -> list[str]:
    value = row[key]
    # A bare string would silently be read as a list of characters.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{_row_name(row, index)}: {key!r} must be a list of strings, got {type(value).__name__}")
    labels = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{_row_name(row, index)}: {key!r} holds a non-string label {item!r}")
        if normalize_label(item):
            labels.append(item)
    return labels


def _check_row(row: Any, index: int) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise TypeError(f"row {index}: expected a dict, got {type(row).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"{_row_name(row, index)}: missing keys {missing}")
    iou = row.get("iou")
    if iou is not None:
        if isinstance(iou, bool) or not isinstance(iou, (int, float, np.floating, np.integer)):
            raise TypeError(f"{_row_name(row, index)}: 'iou' must be a number or None, got {iou!r}")
        iou = float(iou)
        if not (math.isfinite(iou) and 0.0 <= iou <= 1.0):
            raise ValueError(f"{_row_name(row, index)}: 'iou' must lie in [0, 1], got {iou!r}")
    boxes = row.get("pred_boxes")
    if boxes is not None and not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{_row_name(row, index)}: 'pred_boxes' must be a list or None, got {type(boxes).__name__}")
    return {
        "id": row.get("id"),
        "label_scores": _label_scores(row, index),
        "domain": str(row["domain"]),
        "dataset": str(row["dataset"]),
        "true_labels": _label_list(row, "true_labels", index),
        "pred_labels": _label_list(row, "pred_labels", index),
        "iou": iou,
        "format_ok": bool(row["format_ok"]),
        "pred_boxes": None if boxes is None else list(boxes),
    }


def _label_scores(row: Mapping[str, Any], index: int) -> dict[str, float] | None:
    """``label_scores`` keyed by matching key; None when the row has none."""
    scores = row.get("label_scores")
    if scores is None:
        return None
    if not isinstance(scores, Mapping):
        raise TypeError(f"{_row_name(row, index)}: 'label_scores' must map labels to numbers, got "
                        f"{type(scores).__name__}")
    out = {}
    for label, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
            raise ValueError(f"{_row_name(row, index)}: label_scores[{label!r}] must be a finite number, got "
                             f"{value!r}")
        out[normalize_label(label)] = float(value)
    return out


def _auroc(rows: Sequence[dict[str, Any]], y_true: np.ndarray, index: Mapping[str, int]) -> float | None:
    """Mean one-vs-rest ROC AUC over the labels with both classes among the rows; None without scores."""
    if not rows or any(r["label_scores"] is None for r in rows):
        return None
    values = []
    for key, col in index.items():
        if 0 < y_true[:, col].sum() < len(rows):
            scores = [r["label_scores"].get(key, 0.0) for r in rows]
            values.append(float(roc_auc_score(y_true[:, col], scores)))
    return _mean(values)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(sum(kept) / len(kept)) if kept else None


def _iou_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """IoU and box counts over the rows that have something to localise (``iou`` not ``None``)."""
    rows = [r for r in rows if r.get("iou") is not None]
    values = [float(r["iou"]) for r in rows]
    counts = [len(r["pred_boxes"]) for r in rows if r.get("pred_boxes") is not None]
    return {
        "iou_mean": float(statistics.fmean(values)) if values else None,
        "iou_median": float(statistics.median(values)) if values else None,
        "iou_n": len(values),
        "boxes_per_answer": float(statistics.fmean(counts)) if counts else None,
        "box_rate": float(np.mean([c > 0 for c in counts])) if counts else None,
    }


def _dataset_labels(
    dataset: str, rows: Sequence[dict[str, Any]], explicit: Sequence[str] | None
) -> tuple[list[str], dict[str, int]]:
    """Display names of the dataset's label set and a map from matching key to column index."""
    names: list[str] = []
    index: dict[str, int] = {}

    def add(label: str) -> None:
        key = normalize_label(label)
        if key and key not in index:
            index[key] = len(names)
            names.append(" ".join(label.split()))

    if explicit is not None:
        if isinstance(explicit, str):
            raise TypeError(f"label_sets[{dataset!r}] must be a list of labels, not a string")
        for label in explicit:
            add(label)
        for i, row in enumerate(rows):
            for label in row["true_labels"]:
                if normalize_label(label) not in index:
                    raise ValueError(
                        f"dataset {dataset!r}, row id={row['id']!r}: ground-truth label {label!r} "
                        f"is not in label_sets[{dataset!r}]"
                    )
        return names, index

    # Sorted so the label order does not depend on the order of the rows.
    for key in ("true_labels", "pred_labels"):
        spelled: dict[str, str] = {}
        for row in rows:
            for label in row[key]:
                spelled.setdefault(normalize_label(label), label)
        for norm in sorted(spelled):
            add(spelled[norm])
    return names, index


def _binarize(rows: Sequence[dict[str, Any]], key: str, index: Mapping[str, int]) -> tuple[np.ndarray, int]:
    matrix = np.zeros((len(rows), len(index)), dtype=np.int64)
    out_of_set = 0
    for r, row in enumerate(rows):
        for label in row[key]:
            col = index.get(normalize_label(label))
            if col is None:
                out_of_set += 1
            else:
                matrix[r, col] = 1
    return matrix, out_of_set


def _per_label(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    n_rows, n_labels = y_true.shape
    if n_labels == 0:
        return {}
    # A constant extra column keeps scikit-learn in multilabel mode when the label set has a single label.
    pad = np.zeros((n_rows, 1), dtype=y_true.dtype)
    yt = np.hstack([y_true, pad])
    yp = np.hstack([y_pred, pad])
    mcm = multilabel_confusion_matrix(yt, yp)[:n_labels]
    precision, recall, f1, support = precision_recall_fscore_support(yt, yp, average=None, zero_division=0)
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        (tn, fp), (fn, tp) = mcm[j].tolist()
        negatives = tn + fp
        specificity = tn / negatives if negatives else None
        sensitivity = float(recall[j]) if tp + fn else None
        out[name] = {
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
            "tn": int(tn),
            "support": int(support[j]),
            "accuracy": (tp + tn) / n_rows,
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "specificity": specificity,
            "f1": float(f1[j]),
            "balanced_accuracy": _mean([sensitivity, specificity]),
        }
    return out


def _dataset_metrics(
    dataset: str, rows: Sequence[dict[str, Any]], explicit: Sequence[str] | None
) -> dict[str, Any]:
    names, index = _dataset_labels(dataset, rows, explicit)
    y_true, _ = _binarize(rows, "true_labels", index)
    y_pred, out_of_set = _binarize(rows, "pred_labels", index)
    labels = _per_label(y_true, y_pred, names)
    present = [m for m in labels.values() if m["support"] > 0]
    exact = sum(
        {normalize_label(x) for x in row["true_labels"]} == {normalize_label(x) for x in row["pred_labels"]}
        for row in rows
    )
    result: dict[str, Any] = {
        "domain": rows[0]["domain"],
        "n": len(rows),
        "macro_f1": _mean(m["f1"] for m in present),
        "paper_balanced_accuracy": _mean(m["accuracy"] for m in present),
        "balanced_accuracy": _mean(m["balanced_accuracy"] for m in present),
        "exact_match": exact / len(rows),
        "format_rate": sum(row["format_ok"] for row in rows) / len(rows),
        "auroc": _auroc(rows, y_true, index),
        **_iou_summary(rows),
        "n_labels_present": len(present),
        "n_out_of_set_predictions": out_of_set,
        "labels": labels,
    }
    return result


def _empty_summary() -> dict[str, Any]:
    return {**{k: None for k in AVERAGED_METRICS}, **_iou_summary([]), "n": 0}


def compute_metrics(
    rows: Iterable[Mapping[str, Any]],
    label_sets: Mapping[str, Sequence[str]] | None = None,
    expected_domains: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of scored predictions; see the module docstring for every definition.

    Each row is ``{"id", "domain", "dataset", "true_labels": [str], "pred_labels": [str], "iou": float | None,
    "format_ok": bool, "label_scores": {label: float} | None}`` (``iou`` and ``label_scores`` may be omitted). ``expected_domains`` lists domains that must appear in the
    result even without rows (their metrics are ``None`` and ``n`` is 0); they come first, in the given order,
    followed by any other domain in name order.

    Returns a JSON-serialisable dict::

        {"overall": {<metrics>, "n", "domains": [names with rows]},
         "domains": {domain: {<metrics>, "n", "n_datasets", "datasets": [names]}},
         "datasets": {dataset: {<metrics>, "n", "domain", "n_labels_present", "n_out_of_set_predictions",
                                "labels": {label: {tp, fp, fn, tn, support, accuracy, precision, recall,
                                                   specificity, f1, balanced_accuracy}}}},
         "n": total rows}

    where ``<metrics>`` is ``macro_f1, paper_balanced_accuracy, balanced_accuracy, exact_match, format_rate, auroc,
    iou_mean, iou_median, iou_n``.
    """
    checked = [_check_row(row, i) for i, row in enumerate(rows)]
    label_sets = dict(label_sets or {})

    by_dataset: dict[str, list[dict[str, Any]]] = {}
    dataset_domain: dict[str, str] = {}
    for row in checked:
        ds, dom = row["dataset"], row["domain"]
        if dataset_domain.setdefault(ds, dom) != dom:
            raise ValueError(
                f"dataset {ds!r} appears under two domains, {dataset_domain[ds]!r} and {dom!r} (row id={row['id']!r})"
            )
        by_dataset.setdefault(ds, []).append(row)

    datasets = {ds: _dataset_metrics(ds, by_dataset[ds], label_sets.get(ds)) for ds in sorted(by_dataset)}

    expected = list(dict.fromkeys(str(d) for d in (expected_domains or ())))
    seen = sorted(set(dataset_domain.values()) - set(expected))
    domains: dict[str, dict[str, Any]] = {}
    for dom in expected + seen:
        names = [ds for ds in datasets if dataset_domain[ds] == dom]
        if not names:
            domains[dom] = {**_empty_summary(), "n_datasets": 0, "datasets": []}
            continue
        members = [datasets[ds] for ds in names]
        domains[dom] = {
            **{k: _mean(m[k] for m in members) for k in AVERAGED_METRICS},
            **_iou_summary(r for ds in names for r in by_dataset[ds]),
            "n": sum(m["n"] for m in members),
            "n_datasets": len(names),
            "datasets": names,
        }

    with_rows = [dom for dom, m in domains.items() if m["n"] > 0]
    overall = {
        **{k: _mean(domains[dom][k] for dom in with_rows) for k in AVERAGED_METRICS},
        **_iou_summary(checked),
        "n": len(checked),
        "domains": with_rows,
    }
    return {"overall": overall, "domains": domains, "datasets": datasets, "n": len(checked)}


def confusion_matrix_single_label(rows: Iterable[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
    """Confusion counts of a single-label dataset, shape ``(len(labels), len(labels) + 1)``.

    Rows index the true label, columns the predicted label in the order of ``labels``; the last column,
    ``OTHER_LABEL``, counts predictions that are not exactly one label of ``labels`` (empty, out of the set, or
    several labels). Every row must carry exactly one true label from ``labels``.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be a list of labels, not a string")
    index: dict[str, int] = {}
    for label in labels:
        key = normalize_label(label)
        if key in index:
            raise ValueError(f"label {label!r} appears twice in labels")
        index[key] = len(index)
    other = len(index)
    y_true: list[int] = []
    y_pred: list[int] = []
    for i, row in enumerate(rows):
        true = _label_list(row, "true_labels", i)
        pred = _label_list(row, "pred_labels", i)
        if len(true) != 1 or normalize_label(true[0]) not in index:
            raise ValueError(
                f"{_row_name(row, i)}: a single-label confusion matrix needs exactly one true label from "
                f"{list(labels)}, got {true}"
            )
        y_true.append(index[normalize_label(true[0])])
        keys = {normalize_label(p) for p in pred}
        y_pred.append(index[next(iter(keys))] if len(keys) == 1 and next(iter(keys)) in index else other)
    if not y_true:
        return np.zeros((other, other + 1), dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(other + 1)))
    return matrix[:other].astype(np.int64)


# Per-question metrics of a sampled evaluation, averaged over questions (domain) and over domains (overall);
# ``pass@k`` for the k drawn is added beside ``pass@1``.
SAMPLED_METRICS: tuple[str, ...] = (
    "mean_reward",
    "mean_accuracy",
    "mean_iou",
    "format_rate",
    "pass@1",
    "constant_accuracy",
    "constant_reward",
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of a question with ``c`` correct among ``n`` samples: ``1 - C(n-c, k) / C(n, k)``.

    The estimator of Chen et al. 2021 (the chance that k of the n samples, drawn without replacement, hold at
    least one correct one).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _question_metrics(samples: Sequence[Mapping[str, Any]], k: int) -> dict[str, Any]:
    solved = sum(float(r["accuracy_reward"]) >= 1.0 for r in samples)
    ious = [float(r["iou"]) for r in samples if r.get("iou") is not None]
    return {
        "mean_reward": float(np.mean([r["reward"] for r in samples])),
        "mean_accuracy": float(np.mean([r["accuracy_reward"] for r in samples])),
        "ious": ious,
        "format_rate": float(np.mean([bool(r["format_ok"]) for r in samples])),
        "pass@1": pass_at_k(k, solved, 1),
        f"pass@{k}": pass_at_k(k, solved, k),
        "constant_accuracy": float(len({float(r["accuracy_reward"]) for r in samples}) == 1),
        "constant_reward": float(len({float(r["reward"]) for r in samples}) == 1),
    }


def compute_sampled_metrics(groups: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Aggregate k scored samples per question (rows of :func:`qoqmed.eval.evaluate.score_records`).

    ``groups[q]`` holds the k sample rows of question q (same ``domain``; keys ``reward``, ``accuracy_reward``,
    ``iou``, ``format_ok``). Every question must have the same number k >= 1 of samples. Per question:
    mean reward, mean accuracy reward, format rate, ``pass@1`` and ``pass@k`` (unbiased estimator; a sample
    solves the question when its accuracy reward is 1.0, the exact label set), and whether all k samples score
    the same accuracy (``constant_accuracy``) or the same total reward (``constant_reward``): such a group gives
    group-relative RL no signal. Per domain: the mean over its questions, except ``mean_iou``, pooled over the
    samples that have an IoU (``None`` if none). Overall: unweighted mean over domains (``None`` values skipped).

    Returns ``{"k", "questions", "domains": {domain: {<metrics>, "questions", "samples"}}, "overall": {...}}``.
    """
    if not groups:
        raise ValueError("compute_sampled_metrics needs at least one question")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every question needs the same number k >= 1 of samples, got sizes {sorted(sizes)}")
    (k,) = sizes
    keys = (*SAMPLED_METRICS, f"pass@{k}") if k > 1 else SAMPLED_METRICS
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for q, samples in enumerate(groups):
        domains_seen = {str(r["domain"]) for r in samples}
        if len(domains_seen) != 1:
            raise ValueError(f"question {q}: its samples come from several domains {sorted(domains_seen)}")
        by_domain.setdefault(domains_seen.pop(), []).append(_question_metrics(samples, k))
    domains: dict[str, dict[str, Any]] = {}
    for dom in sorted(by_domain):
        questions = by_domain[dom]
        ious = [v for m in questions for v in m["ious"]]
        entry = {key: float(np.mean([m[key] for m in questions])) for key in keys if key != "mean_iou"}
        entry["mean_iou"] = float(np.mean(ious)) if ious else None
        domains[dom] = {**{key: entry[key] for key in keys}, "iou_n": len(ious), "questions": len(questions),
                        "samples": len(questions) * k}
    overall = {key: _mean(m[key] for m in domains.values()) for key in keys}
    overall.update(questions=len(groups), samples=len(groups) * k, domains=list(domains))
    return {"k": k, "questions": len(groups), "domains": domains, "overall": overall}
