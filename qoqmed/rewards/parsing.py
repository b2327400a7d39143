"""Parse a QoQ-Med answer: ``<think>`` trace, ```json boxes, ``\\boxed{}`` diagnosis (docs/design.md §2.3).

Everything here reads model text, so nothing here raises on any string: malformed parts come back as
``None`` / empty lists and the ``json_found`` / ``json_valid`` flags say what was seen.

Box coordinates are pixels of the image *as the model saw it* (after resizing); use :func:`rescale_boxes`
to map them to the original image.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Box", "ParsedResponse", "parse_response", "split_labels", "rescale_box", "rescale_boxes"]


@dataclass(frozen=True)
class Box:
    """One region of interest; ``bbox`` is ``(x1, y1, x2, y2)`` in pixels, top-left origin."""

    bbox: tuple[float, float, float, float]
    label: str


@dataclass
class ParsedResponse:
    think: str | None = None
    boxes: list[Box] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    boxed: str | None = None
    json_found: bool = False  # a ```json block (or a bare JSON list of objects) was present
    json_valid: bool = False  # ... and it was a list of well-formed boxes (an empty list is valid)


_FENCE_RE = re.compile(r"```[ \t]*json\b[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_BARE_LIST_RE = re.compile(r"\[\s*\{")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}")
_TRAILING_COMMA_RE = re.compile(r",\s*([\]}])")
# The one label-splitting rule, for ground truths (qoqmed.data.schema) and model answers alike, so that a label
# list reads the same on both sides of the accuracy reward: ",", "&" and "and" in any case between spaces.
_LABEL_SPLIT_RE = re.compile(r",|&|\s+and\s+", re.IGNORECASE)
_MAX_BARE_TRIES = 64  # bounds the work on adversarial text full of "[{"


def split_labels(text: str) -> list[str]:
    """Split a diagnosis string on ",", "&" and "and" (docs/design.md §4); strip, drop empties, dedupe in order."""
    if not isinstance(text, str):
        return []
    out: list[str] = []
    for part in _LABEL_SPLIT_RE.split(text):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def _finite_number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except (OverflowError, ValueError):  # ints beyond float range
        return None
    return v if math.isfinite(v) else None


def _to_box(obj: Any) -> Box | None:
    """A dict with ``bbox_2d`` (or ``bbox``) of exactly 4 finite numbers and, when it has a ``label``, a non-empty
    string there. A box without the key gets the label "": the released QoQ-Med prompt asks for ``bbox_2d`` only,
    and the released weights often answer that way."""
    if not isinstance(obj, dict):
        return None
    coords = obj.get("bbox_2d", obj.get("bbox"))
    label = obj.get("label", "")
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        return None
    if not isinstance(label, str) or ("label" in obj and not label.strip()):
        return None
    nums = [_finite_number(c) for c in coords]
    if any(n is None for n in nums):
        return None
    return Box(bbox=(nums[0], nums[1], nums[2], nums[3]), label=label.strip())  # type: ignore[arg-type]


def _box_items(value: Any) -> list | None:
    """The list of box candidates in a parsed JSON value: a list, one dict, or ``{"objects_of_interest": [...]}``."""
    if isinstance(value, dict):
        value = value["objects_of_interest"] if "objects_of_interest" in value else [value]
    return value if isinstance(value, list) else None


def _boxes_from_json(value: Any) -> tuple[bool, list[Box]]:
    """(valid, boxes): valid when the value is a box list (possibly empty, "nothing to localise") in which
    every entry is a well-formed box; boxes holds the well-formed entries either way."""
    items = _box_items(value)
    if items is None:
        return False, []
    boxes = [b for b in (_to_box(v) for v in items) if b is not None]
    return len(boxes) == len(items), boxes


def _loads(text: str) -> tuple[bool, Any]:
    """``json.loads`` that tolerates trailing commas; (ok, value)."""
    for candidate in (text, _TRAILING_COMMA_RE.sub(r"\1", text)):
        try:
            return True, json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return False, None


def _parse_json_boxes(text: str) -> tuple[bool, bool, list[Box]]:
    """(found, valid, boxes) from the first fenced block that yields boxes (else the first valid one), or else
    from a bare JSON list of objects."""
    found, valid = False, False
    for m in _FENCE_RE.finditer(text):
        found = True
        ok, value = _loads(m.group(1).strip())
        block_valid, boxes = _boxes_from_json(value) if ok else (False, [])
        if boxes:
            return True, block_valid, boxes
        valid = valid or block_valid
    if found:
        return True, valid, []
    decoder = json.JSONDecoder()
    for n, m in enumerate(_BARE_LIST_RE.finditer(text)):
        if n >= _MAX_BARE_TRIES:
            break
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        block_valid, boxes = _boxes_from_json(value)
        if boxes:
            return True, block_valid, boxes
    return False, False, []


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``, braces matched by depth (so nested braces survive)."""
    starts = [m.end() - 1 for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    # One left-to-right pass pairs every "{" with its "}", so many unterminated \boxed{ stay linear.
    close: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text, starts[0]):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            close[stack.pop()] = m.start()
    for s in reversed(starts):
        if s in close:
            return text[s + 1 : close[s]].strip()
    return None


def _unwrap_text(s: str) -> str:
    """``\\text{Pneumonia}`` -> ``Pneumonia`` (models often wrap labels in LaTeX text commands)."""
    return _TEXT_WRAP_RE.sub(r"\1", s)


def _think(text: str) -> str | None:
    """Text between the first ``<think>`` and the next ``</think>``; ``None`` when not closed."""
    open_at = text.find("<think>")
    if open_at >= 0:
        close_at = text.find("</think>", open_at)
        return text[open_at + len("<think>") : close_at].strip() if close_at >= 0 else None
    # Chat templates may put the opening tag in the prompt, so only the closing tag is generated.
    close_at = text.find("</think>")
    return text[:close_at].strip() if close_at >= 0 else None


def parse_response(text: str) -> ParsedResponse:
    """Parse one model answer. Never raises; non-string input is treated as empty text."""
    if not isinstance(text, str):
        text = ""
    found, valid, boxes = _parse_json_boxes(text)
    boxed = _last_boxed(text)
    labels = split_labels(_unwrap_text(boxed)) if boxed is not None else []
    return ParsedResponse(
        think=_think(text),
        boxes=boxes,
        labels=labels,
        boxed=boxed,
        json_found=found,
        json_valid=valid,
    )


def _check_size(size: Sequence[float], name: str) -> tuple[float, float]:
    if len(size) != 2 or not all(math.isfinite(float(s)) and float(s) > 0 for s in size):
        raise ValueError(f"{name} must be (width, height) with positive finite values, got {size!r}")
    return float(size[0]), float(size[1])


def rescale_box(
    bbox: Sequence[float], from_size: tuple[float, float], to_size: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Map ``(x1, y1, x2, y2)`` from an image of ``from_size=(w, h)`` to one of ``to_size=(w, h)``.

    Model -> original: ``rescale_box(b, model_size, original_size)``; the inverse swaps the sizes.
    """
    fw, fh = _check_size(from_size, "from_size")
    tw, th = _check_size(to_size, "to_size")
    sx, sy = tw / fw, th / fh
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def rescale_boxes(
    boxes: Sequence[Box], from_size: tuple[float, float], to_size: tuple[float, float]
) -> list[Box]:
    """:func:`rescale_box` over a list of :class:`Box`, labels kept."""
    return [Box(bbox=rescale_box(b.bbox, from_size, to_size), label=b.label) for b in boxes]
