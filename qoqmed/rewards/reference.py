"""The released QoQ-Med scorer, reproduced rule by rule so runs scored with it can be compared with ours.

Use it through ``score(..., preset="reference")``. It is *not* what we recommend for training; it exists so a
number from an old run can be recomputed exactly. Every rule below is a behaviour of the released code, quirks
included; where ours differs (``qoqmed.rewards.scores``) the difference is named.

Accuracy
    The answer is the content of the **last** ``\\boxed{`` up to its matching ``}``; without a complete one (or
    when that content is the word ``None``) accuracy is 0. Labels are split on the *first* separator of
    ``", "``, ``" and "``, ``" & "``, ``","``, ``"&"`` that occurs (only that one), after deleting every
    ``\\boxed{`` and every ``}``; matching is exact (case and inner spaces count). Score: F1 of the two sets.
Format (graded, 0..1)
    +0.2 if the text contains a code fence, +0.1 more if it contains ```` ```json ````. The JSON body is the text
    after the first line that is exactly ```` ```json ```` or is a bare fence, cut at the next fence; **without
    such a line the whole text is the body**. +0.2 if the body is valid JSON, else +0.1 if it is a Python literal
    once ``'`` is replaced by ``"``, else stop. +0.1 if the value is a list, then +0.4 x the share of its items
    that are dicts with ``bbox_2d`` and ``label`` keys and a 4-number list as ``bbox_2d`` (``true`` counts as a
    number, the label is not checked).
IoU (mean over predicted boxes, never max)
    Boxes are the ``bbox_2d`` values of the first fenced block (any or no language tag) that parses as JSON (or,
    failing all, as a literal); labels are not needed. Against a mask with any foreground pixel: each box is
    truncated to int, clamped to ``[0, size-1]``, corners swapped if inverted, and covers pixels ``x1..x2`` and
    ``y1..y2`` **inclusive**; a box with ``x1 == x2`` or ``y1 == y2`` covers nothing. Against a box: continuous
    coordinates, no clamping. Boxes with fewer than 4 values or non-numeric values add 0 but still count in the
    mean's denominator. Against a box, **two or more boxes of 4+ values score IoU 0**: the released code turns the
    ground-truth box into a list (``gt_bbox.tolist()``) inside its loop over predicted boxes, so the second box
    raises ``AttributeError``, which its caller catches as IoU 0 (a quirk, reproduced only by this preset).
    Without ground truth (or an all-zero mask and no box) IoU is **0, not "unavailable"**,
    and still carries its 0.3 weight.
Length
    1.0 above 600 characters, else 0.001 per character.
Overall
    ``0.5 accuracy + 0.3 IoU + 0.1 format + 0.1 length`` (no renormalisation).

One deliberate difference: where the released code would raise (e.g. ``RecursionError`` on pathologically
nested JSON, which its extraction step does not catch), this returns the score of a response without that part,
because a scorer must never stop training over model text.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, Sequence

import numpy as np

WEIGHTS = {"accuracy": 0.5, "iou": 0.3, "format": 0.1, "length": 0.1}

_SEPARATORS = (", ", " and ", " & ", ",", "&")
_FENCED_RE = re.compile(r"```(?:json)?\s*([\s\S]*?)```")
_PARSE_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{`` up to its matching brace, stripped; ``None`` if it never closes."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    body = text[start + len("\\boxed{"):]
    for i, ch in enumerate(body):
        depth += (ch == "{") - (ch == "}")
        if depth == -1:
            return body[:i].strip()
    return None


def conditions(text: str) -> set[str]:
    """Label set: delete ``\\boxed{`` and ``}``, split on the first separator present, strip each part."""
    text = text.replace("\\boxed{", "").replace("}", "")
    for sep in _SEPARATORS:
        if sep in text:
            return {part.strip() for part in text.split(sep)}
    return {text.strip()}


def accuracy(text: str, answer: str) -> float:
    pred = boxed_answer(text)
    if pred is None or pred == "None":
        return 0.0
    p, t = conditions(pred), conditions(answer)
    tp = len(p & t)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(p), tp / len(t)
    return 2 * precision * recall / (precision + recall)


def _literal(text: str) -> tuple[bool, Any]:
    """The released fallback parser: a Python literal once single quotes become double quotes."""
    try:
        return True, ast.literal_eval(text.replace("'", '"'))
    except _PARSE_ERRORS:
        return False, None


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def _format_body(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line == "```json" or line.strip() == "```":
            return "\n".join(lines[i + 1:]).split("```")[0]
    return text


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float))  # bool is an int here, as in the released check


def format_score(text: str) -> float:
    s = 0.0
    if "```" in text:
        s += 0.2
        if "```json" in text:
            s += 0.1
    body = _format_body(text)
    if not body:
        return s
    ok, value = _json(body)
    if ok:
        s += 0.2
    else:
        ok, value = _literal(body)
        if not ok:
            return s
        s += 0.1
    if not isinstance(value, list):
        return s
    s += 0.1
    valid = sum(
        1 for item in value
        if isinstance(item, dict) and "bbox_2d" in item and "label" in item
        and isinstance(item["bbox_2d"], list) and len(item["bbox_2d"]) == 4
        and all(_is_number(c) for c in item["bbox_2d"])
    )
    if value:
        s += 0.4 * valid / len(value)
    return s


def length_score(text: str) -> float:
    return 1.0 if len(text) > 600 else 0.001 * len(text)


def _first_parsed(blocks: list[str]) -> Any:
    """The first block that is JSON; failing all, the first that is a literal; else ``None``."""
    for parse in (_json, _literal):
        for block in blocks:
            ok, value = parse(block)
            if ok:
                return value
    return None


def predicted_boxes(text: str) -> list:
    """Raw ``bbox_2d`` values (unchecked) from the first fenced block that parses."""
    value = _first_parsed([m.strip() for m in _FENCED_RE.findall(text)])
    if not value:
        return []
    try:
        if isinstance(value, list):
            return [item["bbox_2d"] for item in value if isinstance(item, dict) and "bbox_2d" in item]
        if isinstance(value, dict) and "bbox_2d" in value:
            return [value["bbox_2d"]]
        if isinstance(value, dict) and "objects_of_interest" in value:
            return [item["bbox_2d"] for item in value["objects_of_interest"]
                    if isinstance(item, dict) and "bbox_2d" in item]
    except TypeError:  # e.g. a non-iterable objects_of_interest: the released code scores IoU 0
        return []
    return []


def _box_mask_iou(box: Sequence, fg: np.ndarray, fg_area: int) -> float:
    """IoU of one box rasterised the released way (int-truncated, clamped, inclusive) with the mask ``fg``."""
    h, w = fg.shape[-2:]
    x1, y1, x2, y2 = (int(v) for v in box[:4])  # int() of a str/None/inf raises: the caller skips the box
    x1, x2 = sorted((max(0, min(x1, w - 1)), max(0, min(x2, w - 1))))
    y1, y2 = sorted((max(0, min(y1, h - 1)), max(0, min(y2, h - 1))))
    if not (x1 < x2 and y1 < y2):
        return 0.0  # an empty box: intersection 0
    channels = fg.shape[0] if fg.ndim == 3 else 1
    inter = int(np.count_nonzero(fg[..., y1:y2 + 1, x1:x2 + 1]))
    union = channels * (x2 - x1 + 1) * (y2 - y1 + 1) + fg_area - inter
    return inter / union if union > 0 else 0.0


def _box_box_iou(p: Sequence, g: Sequence[float]) -> float:
    x1, y1 = max(p[0], g[0]), max(p[1], g[1])
    x2, y2 = min(p[2], g[2]), min(p[3], g[3])
    if x1 >= x2 or y1 >= y2:
        return 0.0
    inter = (x2 - x1) * (y2 - y1)
    union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union if union > 0 else 0.0


def iou(boxes: list, mask: np.ndarray | None = None, box: Sequence[float] | None = None) -> float:
    if not boxes:
        return 0.0
    if not isinstance(boxes[0], list):
        boxes = [boxes]  # the released code wraps a "single box" this way
    fg = np.asarray(mask) > 0 if mask is not None else None
    fg_area = int(np.count_nonzero(fg)) if fg is not None else 0
    total = 0.0
    try:
        if fg is not None and fg_area > 0:
            for b in boxes:
                if len(b) < 4:
                    continue
                try:
                    total += _box_mask_iou(b, fg, fg_area)
                except Exception:  # noqa: BLE001 -- the released code skips a box that fails for any reason
                    continue
        elif box is not None:
            g = [float(v) for v in box]
            scored = 0
            for b in boxes:
                if len(b) < 4:
                    continue
                if scored:
                    return 0.0  # the released scorer fails on its second box (see the module docstring)
                total += _box_box_iou(b, g)
                scored += 1
        else:
            return 0.0
    except _PARSE_ERRORS:  # the released code returns 0 when anything in here raises
        return 0.0
    value = total / len(boxes)
    return value if math.isfinite(value) else 0.0


_EVAL_BOXED_RE = re.compile(r"\\boxed{([^}]*)}")
_EVAL_BRACKET_RE = re.compile(r"\[(.*?)\]")


def eval_labels(text: str) -> set[str]:
    """Predicted labels as the released *evaluation* script read them (it differs from the training scorer):
    the first ``\\boxed{...}`` without nested braces, else the first ``[...]``, else the whole text, then
    :func:`conditions`. Use it to recompute metrics of old runs; our own evaluation uses ``parse_response``."""
    text = text if isinstance(text, str) else ""
    m = _EVAL_BOXED_RE.search(text) or _EVAL_BRACKET_RE.search(text)
    answer = m.group(1) if m else text
    return set() if answer == "None" else conditions(answer)


def reference_score(text: str, answer: str, mask: np.ndarray | None = None,
                    box: Sequence[float] | None = None) -> dict[str, float]:
    """All components and ``overall`` exactly as the released scorer computes them (module docstring)."""
    text = text if isinstance(text, str) else ""
    comp = {
        "accuracy": accuracy(text, answer),
        "iou": iou(predicted_boxes(text), mask, box),
        "format": format_score(text),
        "length": length_score(text),
    }
    return {"overall": sum(WEIGHTS[k] * v for k, v in comp.items()), **comp}
