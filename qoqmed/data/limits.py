"""Limits on the decoded size of an input, checked from its header before anything is decoded.

A small compressed file can claim a huge image (a PNG or GIF bomb, a 1 MB ``.nii.gz`` of 2 GB of voxels, a
``.npy`` header claiming 10^10 values); decoding it first and measuring afterwards is too late. Each reader reads
the header, compares its size with these limits, and refuses the file with a ``DataError`` naming it, its size
and the limit. The defaults fit clinical data (a 7000 x 7000 radiograph, a 512 x 512 x 1000 CT, a 10 s 12-lead
ECG at 10 kHz) and are set per process with environment variables (``QOQMED_MAX_IMAGE_PIXELS`` ...) or the
command line's options (``qoqmed --max-image-pixels N <command>``).

Within one request (a query's inputs in ``QoQMedPipeline.prepare``, one row's files in ``data validate``) the
decoded sizes also add up against ``max_request_bytes``: each reader charges what it is about to decode
(:func:`charge_decoded`, estimated from the header at :data:`BYTES_PER_PIXEL` per pixel or voxel and
:data:`BYTES_PER_SAMPLE` per ECG sample or array value) inside :func:`request_budget`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError

# ECG sampling rates accepted from files, arguments and requests (Hz): below 50 Hz a record cannot carry a QRS
# complex, above 10 kHz no clinical recorder writes; the bounds also bound the resampling ratio to 1/40..5.
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 50.0, 10_000.0

ENV_PREFIX = "QOQMED_"
# Longest side over shortest side of an image the model can take: its vision processor (Qwen2-VL's smart_resize)
# refuses anything longer. A property of the model, not a setting; the readers check it so that `data validate`, the
# loaders and inference agree.
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class DecodeLimits:
    max_image_pixels: int = 50_000_000      # one image (width x height)
    max_frames: int = 2_000                 # frames of one GIF / TIFF / WebP / APNG clip
    max_volume_voxels: int = 300_000_000    # one volume (every timepoint of a 4D NIfTI), or all frames' pixels
    max_array_values: int = 16_000_000      # one .npy array (an ECG: leads x samples)
    max_ecg_samples: int = 16_000_000       # one WFDB / DICOM waveform / CSV ECG, samples over all its channels
    max_request_bytes: int = 1_500_000_000  # everything one request (or one row) decodes, estimated from headers

    @classmethod
    def from_environment(cls) -> "DecodeLimits":
        """The defaults, each replaced by ``QOQMED_<NAME>`` (e.g. ``QOQMED_MAX_IMAGE_PIXELS``) where that is set."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = int(raw.replace("_", ""))
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: expected a whole number") from None
            if values[f.name] < 1:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: must be >= 1")
        return cls(**values)


def decode_limits() -> DecodeLimits:
    """The limits in force (read from the environment on each call, so a change applies at once)."""
    return DecodeLimits.from_environment()


def check_size(source: str | Path, what: str, count: int, limit_name: str) -> None:
    """Raise a DataError when ``count`` (of ``what``, e.g. "pixels") exceeds the limit ``limit_name``."""
    limit = getattr(decode_limits(), limit_name)
    if count > limit:
        raise DataError(f"{source}: {count:,} {what}, over the limit of {limit:,} (set {ENV_PREFIX}"
                        f"{limit_name.upper()}, or qoqmed --{limit_name.replace('_', '-')}, to allow more)")


# What the readers hold per decoded unit: images and volumes as float32 or 4-byte RGB(A) pixels, ECGs and arrays
# as float64 samples.
BYTES_PER_PIXEL = 4
BYTES_PER_SAMPLE = 8


@dataclass
class _Budget:
    used: int
    limit: int


_BUDGET: ContextVar[_Budget | None] = ContextVar("qoqmed_decode_budget", default=None)


@contextmanager
def request_budget() -> Iterator[None]:
    """Within this block, the decoded bytes every reader charges add up against ``max_request_bytes``; blocks do not
    nest (an inner one starts its own count). Outside any block nothing is counted."""
    token = _BUDGET.set(_Budget(0, decode_limits().max_request_bytes))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def charge_decoded(source: str | Path, nbytes: int) -> None:
    """Count ``nbytes`` about to be decoded from ``source`` against the current request's budget (see
    :func:`request_budget`); a DataError naming the file when the request's total would pass the limit."""
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.used += int(nbytes)
    if budget.used > budget.limit:
        name = "max_request_bytes"
        raise DataError(f"{source}: the inputs of this request decode to {budget.used:,} bytes or more with this "
                        f"file, over the limit of {budget.limit:,} (set {ENV_PREFIX}{name.upper()}, or qoqmed "
                        f"--{name.replace('_', '-')}, to allow more)")


def check_npy_header(source: str | Path, fh: BinaryIO) -> None:
    """Read a ``.npy`` header from ``fh`` (rewound afterwards) and refuse arrays over ``max_array_values``.

    Only the header is read; a file that is not a ``.npy`` is left for ``np.load`` to report.
    """
    start = fh.tell()
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return
    finally:
        fh.seek(start)
    check_size(source, f"values (shape {tuple(shape)})", math.prod(shape), "max_array_values")
    charge_decoded(source, math.prod(shape) * BYTES_PER_SAMPLE)


def check_aspect_ratio(source: str | Path, width: int, height: int, what: str = "image") -> None:
    """Raise a DataError when an image of ``width`` x ``height`` is empty or longer than MAX_ASPECT_RATIO : 1."""
    if width < 1 or height < 1:
        raise DataError(f"{source}: {what} has zero size ({width} x {height})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise DataError(f"{source}: {what} is {width} x {height} pixels, an aspect ratio of "
                        f"{max(width, height) / min(width, height):.0f}:1; the model takes at most "
                        f"{MAX_ASPECT_RATIO}:1")
