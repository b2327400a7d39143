"""Reward components of QoQ-Med (docs/design.md §4) and their weighted sum.

Conventions
-----------
* Pixel convention: a box ``[x1, y1, x2, y2]`` (continuous coordinates, pixel ``i`` spans ``[i, i+1)``) covers
  every pixel it touches: columns ``floor(x1) <= x < ceil(x2)``, rows ``floor(y1) <= y < ceil(y2)``, clipped
  to the image. A box with ``x2 <= x1`` or ``y2 <= y1`` is empty. Masks are ``(height, width)`` arrays.
* Every component is in [0, 1]; ``iou`` is ``None`` when there is nothing to localise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from . import reference
from .parsing import Box, ParsedResponse, parse_response, rescale_box, rescale_boxes, split_labels

__all__ = [
    "PRESETS",
    "WEIGHTS",
    "accuracy_reward",
    "boxes_to_mask",
    "iou_reward",
    "format_reward",
    "length_reward",
    "make_scorer",
    "prepare_region",
    "score",
    "score_batch",
]

PRESETS = ("paper", "reference")
WEIGHTS: dict[str, dict[str, float]] = {
    "paper": {"accuracy": 0.6, "iou": 0.2, "format": 0.2},
    "reference": dict(reference.WEIGHTS),
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
    pred_labels: str | Sequence[str], true_labels: str | Sequence[str], normalize: bool = True,
    synonyms: Mapping[str, str] | None = None,
) -> float:
    """Set-F1 between predicted and true labels: ``2 |P ∩ T| / (|P| + |T|)`` (docs/design.md §4).

    Strings are split with :func:`split_labels`. ``normalize`` compares labels case-insensitively with
    whitespace collapsed; ``synonyms`` maps an alias to its canonical label (keys compared the same way), e.g.
    ``{"AF": "A. Fib/Aflutter"}``. Edge cases: both sets empty -> 1.0 (nothing to find, nothing claimed);
    exactly one empty -> 0.0.
    """
    key = _norm_label if normalize else (lambda s: s.strip())
    if synonyms:
        table = {key(a): key(c) for a, c in synonyms.items()}
        base = key
        key = lambda s: table.get(base(s), base(s))  # noqa: E731
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
    """IoU of each predicted box with the ground-truth region, reduced over boxes (docs/design.md §4).

    The region is ``gt_mask != 0`` if a mask is given, else the union of ``gt_boxes`` rasterised at
    ``image_size = (width, height)``. ``reduce="max"`` is the paper, ``"mean"`` the reference code.
    Returns ``None`` when there is no ground truth or it has no foreground pixel (nothing to localise),
    ``0.0`` when ground truth exists and no box was predicted. Boxes are in the ground truth's pixels.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    region = prepare_region(gt_mask, list(gt_boxes) if gt_boxes is not None else None, image_size)
    return _region_iou(pred_boxes, region, reduce)


def format_reward(parsed: ParsedResponse, boxes_expected: bool = False) -> float:
    """Graded format score: 1/3 each for a non-empty ``<think>``, a valid JSON box list (``[]`` included, for
    findings with nothing to localise, unless ``boxes_expected``: then it must hold a box), a non-empty
    ``\\boxed{}``."""
    parts = (
        bool(parsed.think),
        parsed.json_valid and (bool(parsed.boxes) or not boxes_expected),
        bool(parsed.boxed),
    )
    return sum(parts) / 3.0


def length_reward(text: str) -> float:
    """Reference length bonus: 1.0 above 600 characters, else 0.001 per character."""
    n = len(text) if isinstance(text, str) else 0
    return 1.0 if n > 600 else 0.001 * n


def _resolve_weights(weights: Mapping[str, float]) -> dict[str, float]:
    unknown = set(weights) - set(_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown reward components {sorted(unknown)}; known: {list(_COMPONENTS)}")
    w = {k: float(weights.get(k, 0.0)) for k in _COMPONENTS}
    if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {dict(weights)}")
    return w


@dataclass(frozen=True)
class Region:
    """The ground truth to localise, prepared once and shared by every rollout of a question:
    ``fg`` is the ``(height, width)`` foreground, ``area`` its pixel count (``None`` when nothing to localise)."""

    fg: np.ndarray | None
    area: int
    size: tuple[int, int] | None  # (w, h) original pixels


def _as_box_list(box: BoxLike | Sequence[BoxLike] | None) -> list[BoxLike]:
    """One box ``[x1, y1, x2, y2]`` or a list of boxes -> a list of boxes."""
    if box is None:
        return []
    if isinstance(box, Box):
        return [box]
    box = list(box)
    if len(box) == 4 and all(isinstance(v, (int, float, np.number)) for v in box):
        return [box]
    return box


def prepare_region(mask: np.ndarray | None = None, box: BoxLike | Sequence[BoxLike] | None = None,
                   image_size: tuple[int, int] | None = None) -> Region:
    """The foreground of ``mask`` (any nonzero pixel), else of the rasterised ``box``(es) at ``image_size``."""
    if mask is not None:
        fg = np.asarray(mask)
        if fg.ndim != 2:
            raise ValueError(f"mask must be 2-D (height, width), got shape {fg.shape}")
        if image_size is not None and tuple(image_size) != (fg.shape[1], fg.shape[0]):
            raise ValueError(f"image_size {tuple(image_size)} does not match the mask's (w, h) {fg.shape[::-1]}")
        # counted as is: any nonzero pixel is foreground, and a bool copy of a large mask costs more than the count
        return Region(fg, int(np.count_nonzero(fg)), (fg.shape[1], fg.shape[0]))
    boxes = _as_box_list(box)
    if boxes:
        if image_size is None:
            raise ValueError("image_size is required to rasterise ground-truth boxes")
        fg = boxes_to_mask(boxes, image_size)
        return Region(fg, int(np.count_nonzero(fg)), _check_image_size(image_size))
    return Region(None, 0, _check_image_size(image_size) if image_size is not None else None)


def _region_iou(pred_boxes: Sequence[BoxLike], region: Region, reduce: str) -> float | None:
    if region.fg is None or region.area == 0:
        return None
    if len(pred_boxes) == 0:
        return 0.0
    h, w = region.fg.shape
    # A model writes a handful of boxes: counting mask pixels inside each box slice beats any full-image
    # rasterisation or summed-area table, which would touch every pixel per call.
    ious = []
    for c0, r0, c1, r1 in _pixel_bounds(pred_boxes, (w, h)):
        inter = int(np.count_nonzero(region.fg[r0:r1, c0:c1]))
        area = (c1 - c0) * (r1 - r0)
        ious.append(inter / (area + region.area - inter))
    return float(max(ious) if reduce == "max" else sum(ious) / len(ious))


@dataclass(frozen=True)
class Scorer:
    """A resolved preset: how to score, checked once (see :func:`make_scorer`)."""

    preset: str
    weights: dict[str, float]
    iou_reduce: str
    normalize: bool
    synonyms: dict[str, str] | None
    boxes_required: bool = False


def make_scorer(preset: str = "paper", *, weights: Mapping[str, float] | None = None, iou_reduce: str | None = None,
                normalize: bool | None = None, synonyms: Mapping[str, str] | None = None,
                boxes_required: bool | None = None) -> Scorer:
    """Check and resolve scoring options once.

    ``paper``: weights 0.6 / 0.2 / 0.2 (accuracy / IoU / format), max IoU over boxes, labels compared
    case-insensitively, IoU's weight spread over the rest when there is nothing to localise; ``weights``,
    ``iou_reduce``, ``normalize`` and ``synonyms`` (alias -> canonical label) customise it. ``boxes_required``:
    where the row has something to localise, an empty box list ``[]`` loses the format's JSON third. As the paper
    words it, ``[]`` is a valid list anywhere; then a policy whose boxes mostly miss (IoU 0 either way) gains
    format reward by dropping them, and RL unlearns localisation.
    ``reference``: the released scorer exactly (:mod:`qoqmed.rewards.reference`); it takes no options.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown reward preset {preset!r}; choose from {list(PRESETS)}")
    if preset == "reference":
        given = [k for k, v in dict(weights=weights, iou_reduce=iou_reduce, normalize=normalize,
                                    synonyms=synonyms, boxes_required=boxes_required).items() if v is not None]
        if given:
            raise ValueError(f"preset 'reference' reproduces the released scorer and takes no options; got {given}")
        return Scorer("reference", dict(reference.WEIGHTS), "mean", False, None)
    reduce = iou_reduce or "max"
    if reduce not in ("mean", "max"):
        raise ValueError(f"iou_reduce must be 'mean' or 'max', got {reduce!r}")
    norm = True if normalize is None else bool(normalize)
    syn = None
    if synonyms:
        key = _norm_label if norm else (lambda x: x.strip())
        syn = {key(a): key(c) for a, c in synonyms.items()}
    return Scorer("paper", _resolve_weights(weights if weights is not None else WEIGHTS["paper"]), reduce, norm, syn,
                  bool(boxes_required))


def _to_model_frame(mask: np.ndarray | None, boxes: list[BoxLike], image_size, model_size):
    """Ground truth moved into the model's pixels (nearest-neighbour mask), for the reference scorer, which
    compares the model's raw boxes with whatever ground truth it is given."""
    if model_size is None or image_size is None or tuple(model_size) == tuple(image_size):
        return mask, boxes
    if mask is not None:
        from PIL import Image

        img = Image.fromarray(np.asarray(mask) != 0).resize(tuple(int(v) for v in model_size), Image.NEAREST)
        mask = np.asarray(img)
    return mask, [rescale_box(_bbox(b), image_size, model_size) for b in boxes]


def _score_one(scorer: Scorer, response: str, answer: str | Sequence[str], mask, box, region: Region | None,
               image_size, model_size) -> dict:
    parsed = parse_response(response)
    pred_boxes = parsed.boxes
    size = region.size if region is not None and region.size is not None else image_size
    if size is None and mask is not None and np.ndim(mask) == 2:
        size = (np.shape(mask)[1], np.shape(mask)[0])
    if model_size is not None and size is not None and tuple(model_size) != tuple(size):
        pred_boxes = rescale_boxes(pred_boxes, model_size, size)
    if scorer.preset == "reference":
        m, b = _to_model_frame(mask, _as_box_list(box), size, model_size)
        if b and len(b) > 1:
            raise ValueError("preset 'reference' compares with one ground-truth box; got several")
        answer_text = answer if isinstance(answer, str) else ", ".join(answer)
        comp = reference.reference_score(response if isinstance(response, str) else "", answer_text, m,
                                         b[0] if b else None)
        return {**comp, "pred_labels": parsed.labels, "pred_boxes": pred_boxes}
    iou = _region_iou(pred_boxes, region, scorer.iou_reduce)
    comp: dict[str, float | None] = {
        "accuracy": accuracy_reward(parsed.labels, answer, scorer.normalize, scorer.synonyms),
        "iou": iou,
        "format": format_reward(parsed, boxes_expected=scorer.boxes_required and iou is not None),
        "length": length_reward(response),
    }
    w = scorer.weights
    avail = {k: v for k, v in comp.items() if v is not None}
    total_w = sum(w[k] for k in avail)
    overall = sum(w[k] * v for k, v in avail.items()) / total_w if total_w > 0 else 0.0
    return {"overall": min(max(overall, 0.0), 1.0), **comp, "pred_labels": parsed.labels, "pred_boxes": pred_boxes}


def score(
    response: str,
    answer: str | Sequence[str],
    mask: np.ndarray | None = None,
    box: BoxLike | Sequence[BoxLike] | None = None,
    preset: str = "paper",
    *,
    image_size: tuple[int, int] | None = None,
    model_size: tuple[int, int] | None = None,
    weights: Mapping[str, float] | None = None,
    iou_reduce: str | None = None,
    normalize: bool | None = None,
    synonyms: Mapping[str, str] | None = None,
    boxes_required: bool | None = None,
) -> dict:
    """Score one response; returns ``overall``, each component, and the parsed ``pred_labels``/``pred_boxes``.

    Ground truth is a ``mask`` (``(height, width)``, any nonzero pixel is foreground) or one or more ``box``es,
    in original pixels (``image_size = (w, h)``, taken from the mask if omitted). Predicted boxes are in the
    model's pixels and are rescaled from ``model_size`` when it differs. ``paper``: ``overall = sum_k w_k c_k /
    sum_k w_k`` over the available components, ``iou`` is ``None`` (weight spread over the others) without
    ground truth. ``reference``: the released scorer, see :mod:`qoqmed.rewards.reference`. Options as in
    :func:`make_scorer`. Never raises on ``response``.
    """
    scorer = make_scorer(preset, weights=weights, iou_reduce=iou_reduce, normalize=normalize, synonyms=synonyms,
                         boxes_required=boxes_required)
    region = prepare_region(mask, box, image_size) if scorer.preset == "paper" else None
    return _score_one(scorer, response, answer, mask, box, region, image_size, model_size)


def score_batch(
    responses: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    masks: Sequence[np.ndarray | None] | None = None,
    boxes: Sequence[BoxLike | Sequence[BoxLike] | None] | None = None,
    preset: str = "paper",
    *,
    image_sizes: Sequence[tuple[int, int] | None] | None = None,
    model_sizes: Sequence[tuple[int, int] | None] | None = None,
    **options,
) -> list[dict]:
    """:func:`score` over a batch, as the trainer calls it. Options are checked once, and consecutive responses
    with the same ground truth (a question's rollouts, passing the same mask object) share one prepared region."""
    n = len(responses)
    cols = {"answers": answers, "masks": masks, "boxes": boxes, "image_sizes": image_sizes,
            "model_sizes": model_sizes}
    for name, col in cols.items():
        if col is not None and len(col) != n:
            raise ValueError(f"{name} has {len(col)} entries for {n} responses")
    scorer = make_scorer(preset, **options)
    masks, boxes = masks or [None] * n, boxes or [None] * n
    image_sizes, model_sizes = image_sizes or [None] * n, model_sizes or [None] * n
    last_key, region, out = None, None, []
    for i in range(n):
        if scorer.preset == "paper":
            key = (id(masks[i]), repr(boxes[i]) if masks[i] is None else None,
                   tuple(image_sizes[i]) if image_sizes[i] is not None else None)
            if key != last_key:
                last_key, region = key, prepare_region(masks[i], boxes[i], image_sizes[i])
        out.append(_score_one(scorer, responses[i], answers[i], masks[i], boxes[i], region, image_sizes[i],
                              model_sizes[i]))
    return out
