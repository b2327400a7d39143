"""Generate answers for records, score them and compute per-domain metrics.

:func:`evaluate` decodes greedily (fixed answers); :func:`evaluate_sampled` draws k answers per record at a
temperature, as RL does, and reports mean reward and pass@k beside it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.prompt_styles import check_style
from ..data.prompts import encode_batch, grounding, load_record
from ..data.readers import load_mask_cached
from ..data.schema import Record
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from ..rewards.reference import eval_labels
from ..rewards.scores import score_batch
from .answer_scores import label_probabilities
from .metrics import compute_metrics, compute_sampled_metrics, normalize_label, pass_at_k

__all__ = ["evaluate", "evaluate_sampled", "generate_responses", "pass_at_k", "score_records"]


@torch.no_grad()
def generate_responses(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor,
                       records: Sequence[Record], batch_size: int = 16, max_new_tokens: int = 128,
                       show_progress: bool = True, samples: int = 0, temperature: float = 1.0,
                       top_p: float = 1.0, prompt_style: str = "qoqmed") -> list:
    """Greedy answers, one per record, in input order. Records are batched by domain to limit padding.

    ``samples=k > 0``: k sampled answers per record instead (a list of k per record), at ``temperature`` and
    nucleus ``top_p`` (top-k off), drawn from torch's global generator. A batch then holds
    ``max(1, batch_size // k)`` records, so one ``generate()`` call makes about ``batch_size`` answers either way.
    ``prompt_style``: ``qoqmed`` or ``released`` (``qoqmed.data.prompt_styles``).
    """
    if samples < 0:
        raise ValueError(f"samples={samples}: 0 for greedy answers, k > 0 for k sampled answers per record")
    model.eval()
    order = sorted(range(len(records)), key=lambda i: (records[i].domain, len(records[i].images), i))
    k = max(samples, 1)
    per_call = max(1, batch_size // k)
    # a record's k samples are k copies of its row, not num_return_sequences: generate() would repeat each
    # tensor row-wise, and ecg_values (one entry per ECG block across the batch) would then no longer follow the
    # prompt order when a row holds several ECGs
    decoding = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if samples else dict(do_sample=False)
    responses: list = [""] * len(records)
    with Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as bar:
        task = bar.add_task("generate", total=len(records))
        for start in range(0, len(order), per_call):
            idx = order[start:start + per_call]
            enc = encode_batch(processor, [loaded for i in idx for loaded in [load_record(records[i], prompt_style)] * k])
            enc = {key: v.to(model.device) if isinstance(v, torch.Tensor) else v for key, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **decoding,
                                 suppress_tokens=model.placeholder_token_ids())
            texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for j, i in enumerate(idx):  # the k copies of a record are consecutive rows
                responses[i] = texts[j * k:(j + 1) * k] if samples else texts[j]
            bar.advance(task, len(idx))
    return responses


def score_records(records: Sequence[Record], responses: Sequence[str], processor: QoQMedProcessor,
                  preset: str = "paper", iou_reduce: str | None = None, synonyms: dict | None = None,
                  label_parser: str = "qoqmed") -> list[dict]:
    """One prediction row per record: labels, boxes (original pixels), reward components.

    ``label_parser="reference"`` reads the predicted labels the way the released evaluation script did
    (:func:`qoqmed.rewards.reference.eval_labels`), to recompute metrics comparable with old runs.
    """
    if label_parser not in ("qoqmed", "reference"):
        raise ValueError(f"label_parser must be 'qoqmed' or 'reference', got {label_parser!r}")
    ground = [grounding(load_record(rec), processor) for rec in records]
    masks = [load_mask_cached(g.mask_path) if g.mask_path else None for g in ground]
    scores = score_batch(list(responses), [rec.answer for rec in records], masks,
                         [list(g.boxes) or None for g in ground], preset,
                         image_sizes=[g.image_size for g in ground], model_sizes=[g.model_size for g in ground],
                         iou_reduce=iou_reduce, synonyms=synonyms)
    canonical = {normalize_label(alias): label for alias, label in (synonyms or {}).items()}
    rows = []
    for rec, text, s in zip(records, responses, scores, strict=True):
        pred = sorted(eval_labels(text)) if label_parser == "reference" else s["pred_labels"]
        if synonyms:
            pred = [canonical.get(normalize_label(p), p) for p in pred]
        rows.append({
            "id": rec.id, "domain": rec.domain, "dataset": rec.dataset, "true_labels": rec.labels,
            "pred_labels": pred, "iou": s["iou"], "format_ok": s["format"] >= 1.0,
            "reward": s["overall"], "accuracy_reward": s["accuracy"],
            "pred_boxes": [{"bbox_2d": list(b.bbox), "label": b.label} for b in s["pred_boxes"]],
            "response": text,
        })
    return rows


def evaluate(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor, records: Sequence[Record],
             out_dir: str | Path | None = None, batch_size: int = 16, max_new_tokens: int = 128,
             preset: str = "paper", iou_reduce: str | None = None, label_sets: dict | None = None,
             expected_domains: Sequence[str] | None = None, show_progress: bool = True,
             synonyms: dict | None = None, label_parser: str = "qoqmed",
             prompt_style: str = "qoqmed", label_scores: bool = True) -> tuple[dict, list[dict]]:
    """Generate, score and aggregate; with ``out_dir``, also write ``predictions.jsonl``. Returns (metrics, rows).

    ``label_scores``: on two-label datasets, also read the model's probability of each label after its answer
    (:mod:`qoqmed.eval.answer_scores`), which gives their AUROC."""
    t0 = time.perf_counter()
    responses = generate_responses(model, processor, records, batch_size, max_new_tokens, show_progress,
                                   prompt_style=prompt_style)
    rows = score_records(records, responses, processor, preset, iou_reduce, synonyms, label_parser)
    if label_scores:
        probabilities = label_probabilities(model, processor, records, responses, prompt_style)
        for row, probs in zip(rows, probabilities, strict=True):
            row["label_scores"] = probs
    metrics = compute_metrics(rows, label_sets=label_sets, expected_domains=expected_domains)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return metrics, rows


def evaluate_sampled(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor, records: Sequence[Record],
                     k: int = 4, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                     out_dir: str | Path | None = None, batch_size: int = 16, max_new_tokens: int = 128,
                     preset: str = "paper", iou_reduce: str | None = None, synonyms: dict | None = None,
                     show_progress: bool = True, prompt_style: str = "qoqmed") -> tuple[dict, list[dict]]:
    """What RL optimises: k answers per record sampled at the RL temperature, scored like rollouts.

    Every sample is scored by :func:`score_records` (reward ``overall``, accuracy, IoU, format) and aggregated by
    :func:`qoqmed.eval.metrics.compute_sampled_metrics`: per domain and overall (unweighted mean over domains)
    ``mean_reward``, ``mean_accuracy``, ``mean_iou``, ``format_rate``, ``pass@1`` and ``pass@k`` (a sample solves
    a question when its accuracy reward is 1.0, the exact label set; unbiased estimator), ``constant_accuracy``
    and ``constant_reward`` (share of questions whose k samples all score the same: no signal for
    group-relative RL). The draws are fixed by ``seed`` (for the same model, records, ``batch_size`` and device)
    and leave the caller's random state as it was. ``batch_size`` counts answers per ``generate()`` call
    (``batch_size // k`` records). With ``out_dir``, writes ``sampled_predictions.jsonl`` (one row per sample).
    ``prompt_style``: the prompts the answers are sampled from, as in :func:`evaluate`.

    Returns (metrics, one row per sample: record order, then sample order, with a ``sample`` index).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: sample at least one answer per record (an integer k >= 1)")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0 (greedy answers: evaluate())")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
    check_style(prompt_style)
    if not records:
        raise ValueError("evaluate_sampled needs at least one record")
    t0 = time.perf_counter()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        samples = generate_responses(model, processor, records, batch_size, max_new_tokens, show_progress,
                                     samples=k, temperature=float(temperature), top_p=float(top_p),
                                     prompt_style=prompt_style)
    flat_records = [rec for rec in records for _ in range(k)]
    scored = score_records(flat_records, [t for texts in samples for t in texts], processor, preset, iou_reduce,
                           synonyms)
    rows = [{**row, "sample": n % k} for n, row in enumerate(scored)]
    metrics = compute_sampled_metrics([rows[q * k:(q + 1) * k] for q in range(len(records))])
    metrics = {"k": k, "temperature": float(temperature), "top_p": float(top_p), "seed": seed,
               "max_new_tokens": max_new_tokens, "preset": preset, "prompt_style": prompt_style, **metrics,
               "eval_seconds": round(time.perf_counter() - t0, 2)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "sampled_predictions.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return metrics, rows
