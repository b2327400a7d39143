"""Turn user inputs (paths in any format the data layer reads, or in-memory objects) into model-ready pieces.

Every problem raises ``InputError`` naming the input (``images[1]``, ``ecg[0]``, ...) and the reason; nothing is
ever replaced by a blank image or a zero ECG.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.dicom import rescale_to_uint8
from ..data.ecg import ECG_SAMPLING_RATE, ECGSpec, read_ecg
from ..data.errors import DataError, printable
from ..data.limits import check_aspect_ratio
from ..data.readers import load_ecg, load_image
from ..data.volumes import Volume, pick_indices, read_volume, volume_frames


class InputError(ValueError):
    """A user input that cannot be used; ``field`` names it (e.g. ``images[0]``), the message says why."""

    def __init__(self, field: str, reason: str):
        field, reason = printable(field), printable(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@contextmanager
def reading(field: str) -> Iterator[None]:
    """Every failure while reading or preparing the input ``field`` leaves as an InputError naming it.

    The readers raise DataError for everything they anticipate; anything else a decoding library raises (or
    MemoryError, RecursionError) is still a fault of this input, reported with its type, and never a traceback that
    stops a server request or a batch.
    """
    try:
        yield
    except InputError:
        raise
    except DataError as exc:
        raise InputError(field, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise InputError(field, f"cannot read this input: {type(exc).__name__}: {exc}") from exc


@dataclass
class VisualInput:
    """One image the model sees: the RGB picture at its original size and where it came from."""

    image: Image.Image
    source: str          # "images[0]" or "volumes[0] slice 3/4"
    name: str | None = None


def as_list(value: Any) -> list:
    """``None`` -> [], a single input -> [input], a list/tuple -> list (a numpy array counts as one input)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, Path))


def load_image_input(item: Any, field: str) -> Image.Image:
    """A path (PNG/JPEG/TIFF/DICOM...), a PIL image or a numpy array (H, W), (H, W, 1|3|4) -> RGB PIL image."""
    if _is_path(item):
        try:
            return load_image(item)
        except DataError as exc:
            raise InputError(field, str(exc)) from exc
    if isinstance(item, Image.Image):
        with reading(field):
            check_aspect_ratio("PIL image", item.width, item.height)
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, np.ndarray):
        image = Image.fromarray(_array_to_uint8(item, field, allow_channels=True))
        with reading(field):
            check_aspect_ratio("image array", image.width, image.height)
        return image
    raise InputError(field, f"expected a file path, a PIL image or a numpy array, got {type(item).__name__}")


def _array_to_uint8(arr: np.ndarray, field: str, allow_channels: bool) -> np.ndarray:
    """2D gray or HxWxC array -> uint8 RGB; non-uint8 data is rescaled over its own range (as the file readers do)."""
    if arr.dtype.kind not in "iufb":
        raise InputError(field, f"image array must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 3 and allow_channels and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] != 1 else arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise InputError(field, f"image array shape {arr.shape} is not (H, W) or (H, W, 3)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(field, f"image array has zero size {arr.shape}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError(field, "image array has NaN or infinite values")
        arr = rescale_to_uint8(a, flat="keep", dtype=np.float64)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr)


def load_volume_input(item: Any, field: str, num_slices: int, window: Any = None,
                      selection: str = "centres") -> list[Image.Image]:
    """A NIfTI file, DICOM series folder or DICOM file, a (D, H, W) array or a list of slice images -> ``num_slices``
    uniformly spaced RGB slices (as the reference model feeds volumes); ``selection`` as in
    :func:`qoqmed.data.volumes.pick_indices`."""
    if _is_path(item):
        try:
            volume = read_volume(item)
        except DataError as exc:
            raise InputError(field, str(exc)) from exc
    elif isinstance(item, np.ndarray):
        if item.ndim != 3:
            raise InputError(field, f"volume array must be (slices, H, W), got shape {item.shape}")
        if item.dtype.kind not in "iuf" or not np.isfinite(item).all():
            raise InputError(field, "volume array must hold finite real numbers")
        volume = Volume(data=np.asarray(item, dtype=np.float32), source=field, format="array")
    else:
        volume = None
    if volume is not None:
        # A study with fewer slices than asked for (e.g. one DICOM slice) shows all it has.
        n = min(num_slices, volume.data.shape[0])
        if n < 1:
            raise InputError(field, "the volume has no slices")
        try:
            return [s.convert("RGB") if s.mode != "RGB" else s for s in volume_frames(volume, n, window, selection=selection)]
        except (DataError, ValueError) as exc:
            raise InputError(field, str(exc)) from exc
    if isinstance(item, (list, tuple)):
        if not item:
            raise InputError(field, "a volume given as a list of slices needs at least one slice")
        idx = pick_indices(len(item), min(num_slices, len(item)), field, selection)
        return [load_image_input(item[i], f"{field}[{i}]") for i in idx]
    raise InputError(field, f"expected a NIfTI/DICOM path, a (slices, H, W) array or a list of slices, "
                            f"got {type(item).__name__}")


def load_ecg_input(item: Any, field: str, leads: int, samples: int) -> np.ndarray:
    """An ECG as a path (.npy already in the model's layout, WFDB .hea/.dat, DICOM waveform .dcm), a
    ``(leads, samples)`` array in the model's layout (I, II, V1..V6 at 250 Hz, mV), ``{"signal": array, "fs": Hz,
    "leads": [names]}``, or ``{"path": file, "fs": Hz, "leads": [names]}`` for a file at another rate or lead order
    (a .csv with a header row naming the leads, or a .npy); the last two are resampled and lead-mapped by the ECG
    reader."""
    if _is_path(item):
        if Path(item).suffix.lower() == ".csv":
            raise InputError(field, f"{item}: a CSV ECG needs its sampling rate: pass {{'path': ..., 'fs': Hz}} "
                                    "(command line: --ecg-fs HZ)")
        try:
            return load_ecg(item, leads=leads, samples=samples)
        except DataError as exc:
            raise InputError(field, str(exc)) from exc
    if isinstance(item, dict) and "path" in item:
        return _ecg_from_file(item, field, leads, samples)
    if hasattr(item, "data") and hasattr(item, "sampling_rate") and hasattr(item, "leads"):
        item = item.data  # an ECGSignal from qoqmed.data.ecg.read_ecg
    if isinstance(item, dict):
        return _ecg_from_dict(item, field, leads, samples)
    if isinstance(item, np.ndarray) or (isinstance(item, Sequence) and not isinstance(item, str)):
        try:
            arr = np.asarray(item)
        except ValueError as exc:
            raise InputError(field, f"ECG is not a rectangular array: {exc}") from exc
        if arr.dtype.kind not in "iuf":
            raise InputError(field, f"ECG must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != (leads, samples):
            hint = " (transposed? pass leads x samples)" if arr.shape == (samples, leads) else ""
            raise InputError(field, f"ECG array shape {arr.shape} != expected ({leads}, {samples}){hint}; "
                                    "for other rates or lead sets pass {'signal': array, 'fs': Hz, 'leads': [...]}")
        out = np.ascontiguousarray(arr, dtype=np.float32)
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        if bad:
            raise InputError(field, f"ECG has {bad} non-finite value(s) (NaN or inf)")
        return out
    raise InputError(field, f"expected an ECG path, a ({leads}, {samples}) array or a dict with signal and fs, "
                            f"got {type(item).__name__}")


def _model_ecg_spec(field: str, leads: int, samples: int):
    spec = ECGSpec(sampling_rate=ECG_SAMPLING_RATE, seconds=samples / ECG_SAMPLING_RATE)  # as load_ecg reads files
    if len(spec.leads) != leads:
        raise InputError(field, f"the model wants {leads} leads; the ECG reader produces {len(spec.leads)}")
    return spec


def _ecg_from_file(item: dict, field: str, leads: int, samples: int) -> np.ndarray:
    unknown = set(item) - {"path", "fs", "leads"}
    if unknown:
        raise InputError(field, f"unknown ECG key(s) {sorted(unknown)}; expected path, fs and optionally leads")
    if not _is_path(item["path"]):
        raise InputError(field, f"ECG 'path' must be a file path, got {type(item['path']).__name__}")
    try:
        fs = None if item.get("fs") is None else float(item["fs"])
    except (TypeError, ValueError) as exc:
        raise InputError(field, f"ECG 'fs' must be a number of Hz: {exc}") from exc
    try:
        return read_ecg(item["path"], _model_ecg_spec(field, leads, samples), fs=fs, lead_names=item.get("leads")).data
    except DataError as exc:
        raise InputError(field, str(exc)) from exc


def _ecg_from_dict(item: dict, field: str, leads: int, samples: int) -> np.ndarray:
    if "signal" not in item or "fs" not in item:
        raise InputError(field, "an ECG dict needs 'signal' (leads x samples, mV) and 'fs' (Hz); 'leads' optional")
    try:
        signal = np.asarray(item["signal"])
        fs = float(item["fs"])
    except (TypeError, ValueError) as exc:
        raise InputError(field, f"ECG dict has a non-numeric signal or fs: {exc}") from exc
    if signal.dtype.kind not in "iuf":  # complex would lose its imaginary part, booleans would become 0/1
        raise InputError(field, f"ECG signal must hold real numbers, got dtype {signal.dtype}")
    signal = signal.astype(np.float64)
    if signal.ndim != 2:
        raise InputError(field, f"ECG signal must be 2D (leads, samples), got shape {signal.shape}")
    spec = _model_ecg_spec(field, leads, samples)
    # read_ecg does lead mapping and anti-aliased resampling from files; a temporary .npy reuses all of it.
    with tempfile.TemporaryDirectory(prefix="qoqmed-ecg-") as tmp:
        path = Path(tmp) / "signal.npy"
        np.save(path, signal)
        try:
            return read_ecg(path, spec, fs=fs, lead_names=item.get("leads")).data
        except DataError as exc:
            raise InputError(field, str(exc).replace(str(path), "signal")) from exc
