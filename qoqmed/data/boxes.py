"""Masks -> boxes, and boxes between original pixels and the pixels of the image as the model sees it.

Boxes are ``(x1, y1, x2, y2)`` with pixel-edge coordinates: a box covering pixel columns 3..7 has ``x1=3, x2=8``.
The QoQ-Med processor resizes each image once (``smart_resize`` to multiples of the patch size, no crop or pad),
so a box maps between the two frames by one scale per axis; ``QoQMedProcessor.model_image_size`` gives the size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

from ..rewards.parsing import rescale_box

__all__ = ["mask_boxes", "mask_box", "to_model_box", "from_model_box", "rescale_box"]

BoxTuple = tuple[float, float, float, float]


class _Sizer(Protocol):
    def model_image_size(self, width: int, height: int) -> tuple[int, int]: ...


def _as_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.any(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2D (height, width), got shape {arr.shape}")
    return arr != 0


def mask_boxes(mask: np.ndarray, min_pixels: int = 1, connectivity: int = 2) -> list[tuple[int, int, int, int]]:
    """Tight box of each connected foreground component (nonzero pixels), ordered top to bottom, left to right.

    ``connectivity`` 2 joins diagonal neighbours (8-connectivity), 1 does not (4-connectivity). Components
    smaller than ``min_pixels`` are dropped (specks in a hand-drawn mask).
    """
    fg = _as_mask(mask)
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
    labels, n = ndimage.label(fg, structure=ndimage.generate_binary_structure(2, connectivity))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = []
    for index, slc in enumerate(ndimage.find_objects(labels), start=1):
        if slc is None or sizes[index] < min_pixels:
            continue
        rows, cols = slc
        boxes.append((int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)))
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box around all foreground pixels, or None for an empty mask."""
    fg = _as_mask(mask)
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(fg.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def to_model_box(box: Sequence[float], image_size: tuple[int, int], processor: _Sizer) -> tuple[int, int, int, int]:
    """A box in original pixels of an image of ``image_size = (w, h)`` -> integer pixels of the model's view."""
    model_size = processor.model_image_size(*image_size)
    return tuple(int(round(v)) for v in rescale_box(box, image_size, model_size))  # type: ignore[return-value]


def from_model_box(box: Sequence[float], image_size: tuple[int, int], processor: _Sizer) -> BoxTuple:
    """A box in the model's pixels (e.g. predicted) -> original pixels of an image of ``image_size = (w, h)``."""
    return rescale_box(box, processor.model_image_size(*image_size), image_size)
