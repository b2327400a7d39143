"""Reward components of QoQ-Med (DESIGN.md §4) and their weighted sum.

Conventions
-----------
* Pixel convention: a box ``[x1, y1, x2, y2]`` (continuous coordinates, pixel ``i`` spans ``[i, i+1)``) covers
  every pixel it touches: columns ``floor(x1) <= x < ceil(x2)``, rows ``floor(y1) <= y < ceil(y2)``, clipped
  to the image. A box with ``x2 <= x1`` or ``y2 <= y1`` is empty. Masks are ``(height, width)`` arrays.
* Every component is in [0, 1]; ``iou`` is ``None`` when there is nothing to localise.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .parsing import Box, ParsedResponse, parse_response, rescale_boxes, split_labels

__all__ = [
    "WEIGHTS",
    "accuracy_reward",
    "boxes_to_mask",
    "iou_reward",
    "format_reward",
    "length_reward",
    "score",
]

WEIGHTS: dict[str, dict[str, float]] = {
    "paper": {"accuracy": 0.6, "iou": 0.2, "format": 0.2},
    "reference": {"accuracy": 0.5, "iou": 0.3, "format": 0.1, "length": 0.1},
}
_COMPONENTS = ("accuracy", "iou", "format", "length")

BoxLike = Box | Sequence[float]


def _norm_label(s: str) -> str:
    return " ".join(s.split()).casefold()


def _as_labels(x: str | Sequence[str]) -> list[str]:
    if isinstance(x, str):
        return split_labels(x)
    return [s.strip() for s in x if isinstance(s, str) and s.strip()]


def accuracy_reward(
    pred_labels: str | Sequence[str], true_labels: str | Sequence[str], normalize: bool = True
) -> float:
    """Set-F1 between predicted and true labels: ``2 |P ∩ T| / (|P| + |T|)`` (DESIGN.md §4).

    Strings are split with :func:`split_labels`. ``normalize`` compares labels case-insensitively with
    whitespace collapsed. Edge cases: both sets empty -> 1.0 (nothing to find, nothing claimed); exactly one
    empty -> 0.0.
    """
    key = _norm_label if normalize else (lambda s: s)
    p = {key(s) for s in _as_labels(pred_labels)}
    t = {key(s) for s in _as_labels(true_labels)}
    if not p and not t:
        return 1.0
    if not p or not t:
        return 0.0
    return 2.0 * len(p & t) / (len(p) + len(t))


def _bbox(b: BoxLike) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = b.bbox if isinstance(b, Box) else b
    return float(x1), float(y1), float(x2), float(y2)


def _pixel_bounds(boxes: Sequence[BoxLike], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(c0, r0, c1, r1)`` half-open pixel ranges each box covers after clipping (module docstring).

    Plain Python: a response holds a few boxes, where numpy's per-call setup would cost more than the work.
    """
    w, h = size
    out = []
    for box in boxes:
        x1, y1, x2, y2 = (0.0 if math.isnan(v) else v for v in _bbox(box))
        if x2 <= x1 or y2 <= y1:
            out.append((0, 0, 0, 0))
            continue
        # clipping first keeps floor/ceil of huge or infinite values in range
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        out.append((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)))
    return out


def _check_image_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"image size must be (width, height) with positive values, got {size!r}")
    return int(size[0]), int(size[1])


def boxes_to_mask(boxes: Sequence[BoxLike], size: tuple[int, int]) -> np.ndarray:
    """Union of the boxes rasterised on a ``(height, width)`` boolean mask, ``size = (width, height)``.

    Vectorised: per-box row and column indicators, combined with one matrix product.
    """
    w, h = _check_image_size(size)
    pb = np.array(_pixel_bounds(boxes, (w, h)), dtype=np.int64).reshape(-1, 4)
    if len(pb) == 0:
        return np.zeros((h, w), dtype=bool)
    cols = (np.arange(w)[None, :] >= pb[:, 0:1]) & (np.arange(w)[None, :] < pb[:, 2:3])  # (n, w)
    rows = (np.arange(h)[None, :] >= pb[:, 1:2]) & (np.arange(h)[None, :] < pb[:, 3:4])  # (n, h)
    return (rows.T.astype(np.float32) @ cols.astype(np.float32)) > 0


def iou_reward(
    pred_boxes: Sequence[BoxLike],
    *,
    gt_boxes: Sequence[BoxLike] | None = None,
    gt_mask: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    reduce: str = "mean",
) -> float | None:
    """IoU of each predicted box with the ground-truth region, reduced over boxes (DESIGN.md §4).

    The region is ``gt_mask != 0`` if a mask is given, else the union of ``gt_boxes`` rasterised at
    ``image_size = (width, height)``. ``reduce="max"`` is the paper, ``"mean"`` the reference code.
    Returns ``None`` when there is no ground truth or it has no foreground pixel (nothing to localise),
    ``0.0`` when ground truth exists and no box was predicted. Boxes are in the ground truth's pixels.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    if gt_mask is not None:
        gt = np.asarray(gt_mask)
        if gt.ndim != 2:
            raise ValueError(f"gt_mask must be 2-D (height, width), got shape {gt.shape}")
        if image_size is not None and tuple(image_size) != (gt.shape[1], gt.shape[0]):
            raise ValueError(f"image_size {tuple(image_size)} does not match gt_mask (w, h) {gt.shape[::-1]}")
    elif gt_boxes is not None and len(gt_boxes) > 0:
        if image_size is None:
            raise ValueError("image_size is required to rasterise gt_boxes")
        gt = boxes_to_mask(gt_boxes, image_size)
    else:
        return None
    gt_area = int(np.count_nonzero(gt))  # any nonzero pixel is foreground, whatever the mask dtype
    if gt_area == 0:
        return None
    if len(pred_boxes) == 0:
        return 0.0
    h, w = gt.shape
    # A model writes a handful of boxes: counting mask pixels inside each box slice beats any full-image
    # rasterisation or summed-area table, which would touch every pixel per call.
    ious = []
    for c0, r0, c1, r1 in _pixel_bounds(pred_boxes, (w, h)):
        inter = int(np.count_nonzero(gt[r0:r1, c0:c1]))
        area = (c1 - c0) * (r1 - r0)
        ious.append(inter / (area + gt_area - inter))
    return float(max(ious) if reduce == "max" else sum(ious) / len(ious))


def format_reward(parsed: ParsedResponse) -> float:
    """Graded format score: 1/3 each for a non-empty ``<think>``, a valid JSON box list (``[]`` included, for
    findings with nothing to localise), a non-empty ``\\boxed{}``."""
    parts = (
        bool(parsed.think),
        parsed.json_valid,
        bool(parsed.boxed),
    )
    return sum(parts) / 3.0


def length_reward(text: str) -> float:
    """Reference length bonus: 1.0 above 600 characters, else 0.001 per character."""
    n = len(text) if isinstance(text, str) else 0
    return 1.0 if n > 600 else 0.001 * n


def _resolve_weights(weights: str | Mapping[str, float]) -> dict[str, float]:
    if isinstance(weights, str):
        if weights not in WEIGHTS:
            raise ValueError(f"unknown weight preset {weights!r}; choose from {sorted(WEIGHTS)}")
        weights = WEIGHTS[weights]
    unknown = set(weights) - set(_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown reward components {sorted(unknown)}; known: {list(_COMPONENTS)}")
    w = {k: float(weights.get(k, 0.0)) for k in _COMPONENTS}
    if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {dict(weights)}")
    return w


def score(
    response: str,
    answer: str | Sequence[str],
    *,
    gt_boxes: Sequence[BoxLike] | None = None,
    gt_mask: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    model_size: tuple[int, int] | None = None,
    weights: str | Mapping[str, float] = "paper",
    iou_reduce: str = "max",
) -> dict:
    """Score one response: ``overall = sum_k w_k c_k / sum_k w_k`` over the available components k.

    ``iou`` is unavailable (``None``) without a non-empty ground truth; its weight is then spread over the
    other components in proportion to their weights, which the division above does. Presets in
    :data:`WEIGHTS` already sum to 1. Ground truth is in original pixels (``image_size = (w, h)``, inferred
    from ``gt_mask`` if omitted); predicted boxes are in the model's pixels and are rescaled from
    ``model_size`` to ``image_size`` when both are given and differ. Never raises on ``response``.
    """
    w = _resolve_weights(weights)
    parsed = parse_response(response)
    if image_size is None and gt_mask is not None:
        m = np.asarray(gt_mask)
        if m.ndim == 2:
            image_size = (m.shape[1], m.shape[0])
    pred_boxes = parsed.boxes
    if model_size is not None and image_size is not None and tuple(model_size) != tuple(image_size):
        pred_boxes = rescale_boxes(pred_boxes, model_size, image_size)
    comp: dict[str, float | None] = {
        "accuracy": accuracy_reward(parsed.labels, answer),
        "iou": iou_reward(pred_boxes, gt_boxes=gt_boxes, gt_mask=gt_mask, image_size=image_size, reduce=iou_reduce),
        "format": format_reward(parsed),
        "length": length_reward(response),
    }
    avail = {k: v for k, v in comp.items() if v is not None}
    total_w = sum(w[k] for k in avail)
    overall = sum(w[k] * v for k, v in avail.items()) / total_w if total_w > 0 else 0.0
    return {
        "overall": min(max(overall, 0.0), 1.0),
        **comp,
        "pred_labels": parsed.labels,
        "pred_boxes": pred_boxes,
    }
