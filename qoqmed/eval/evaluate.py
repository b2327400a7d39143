"""Generate answers for records with fixed (greedy) decoding, score them and compute per-domain metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.prompts import encode_batch, grounding, load_record
from ..data.readers import load_mask
from ..data.schema import Record
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from ..rewards.reference import eval_labels
from ..rewards.scores import score_batch
from .metrics import compute_metrics, normalize_label


@torch.no_grad()
def generate_responses(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor,
                       records: Sequence[Record], batch_size: int = 16, max_new_tokens: int = 128,
                       show_progress: bool = True) -> list[str]:
    """Greedy answers, one per record, in input order. Records are batched by domain to limit padding."""
    model.eval()
    order = sorted(range(len(records)), key=lambda i: (records[i].domain, len(records[i].images), i))
    responses: list[str] = [""] * len(records)
    with Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as bar:
        task = bar.add_task("generate", total=len(records))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = encode_batch(processor, [load_record(records[i]) for i in idx])
            enc = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 suppress_tokens=model.placeholder_token_ids())
            texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                responses[i] = text
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
    masks = [_cached_mask(g.mask_path) if g.mask_path else None for g in ground]
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


@lru_cache(maxsize=1024)
def _cached_mask(path: str) -> np.ndarray:
    return load_mask(path)


def evaluate(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor, records: Sequence[Record],
             out_dir: str | Path | None = None, batch_size: int = 16, max_new_tokens: int = 128,
             preset: str = "paper", iou_reduce: str | None = None, label_sets: dict | None = None,
             expected_domains: Sequence[str] | None = None, show_progress: bool = True,
             synonyms: dict | None = None, label_parser: str = "qoqmed") -> tuple[dict, list[dict]]:
    """Generate, score and aggregate; with ``out_dir``, also write ``predictions.jsonl``. Returns (metrics, rows)."""
    t0 = time.perf_counter()
    responses = generate_responses(model, processor, records, batch_size, max_new_tokens, show_progress)
    rows = score_records(records, responses, processor, preset, iou_reduce, synonyms, label_parser)
    metrics = compute_metrics(rows, label_sets=label_sets, expected_domains=expected_domains)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return metrics, rows
