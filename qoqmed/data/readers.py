"""Readers for the files a record points to: images (PNG/JPEG/TIFF and DICOM), ECG arrays and segmentation masks.

Every reader raises ``DataError`` naming the file and the reason when a file is missing, empty or unreadable;
nothing is ever replaced by a blank image or a zero signal. DICOM images are decoded by ``qoqmed.data.dicom``.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dicom import load_dicom_image, rescale_to_uint8
from .ecg import ECG_SAMPLES, ECG_SAMPLING_RATE, ENCODER_LEADS, ECGSpec, read_ecg
from .errors import DataError, reading_errors
from .files import NOT_AN_ACCEPTED_FORMAT, PILLOW_FORMATS, TENSOR_SUFFIXES, check_file, is_dicom
from .limits import (BYTES_PER_PIXEL, BYTES_PER_SAMPLE, charge_decoded, check_aspect_ratio, check_npy_header, check_size,
                     decode_limits)

if TYPE_CHECKING:
    from .schema import ECGFormat

# Pillow modes holding more than 8 bits per pixel (16-bit PNG/TIFF is common for X-ray and CT exports).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _open_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image, turning every Pillow failure into a DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PILLOW_FORMATS) as img:
                check_size(path, f"pixels ({img.width} x {img.height} {what})", img.width * img.height,
                           "max_image_pixels")  # from the header, before decoding
                charge_decoded(path, img.width * img.height * BYTES_PER_PIXEL)
                img.load()
                return img.copy() if img.mode != "P" else img.convert("RGBA" if "transparency" in img.info else "RGB")
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: cannot read {what}: {NOT_AN_ACCEPTED_FORMAT}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: cannot read {what}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read {what}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise TypeError, KeyError, ... on malformed files
        raise DataError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def load_image(path: str | Path) -> Image.Image:
    """Load an image file (PNG, JPEG, TIFF, BMP, GIF, WebP, or DICOM) as an RGB ``PIL.Image``; an image longer
    than ``MAX_ASPECT_RATIO``:1 (which the model cannot take) is refused.

    Grayscale images with more than 8 bits per pixel are rescaled to 0..255 over their own range. DICOM files
    (``.dcm``/``.dicom`` suffix or the ``DICM`` magic) are read with :func:`load_dicom_image` and the file's own
    window; a multi-frame DICOM is a volume or a video and is refused here (see ``qoqmed.data.volumes``).
    """
    path = check_file(path, "image")
    if is_dicom(path):
        img = load_dicom_image(path)
        check_aspect_ratio(path, img.width, img.height)
        return img
    img = _open_image(path, "image")
    check_aspect_ratio(path, img.width, img.height)
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: image has non-finite pixel values")
        img = Image.fromarray(rescale_to_uint8(arr, flat="keep", dtype=np.float64), mode="L")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_ecg(path: str | Path, leads: int = len(ENCODER_LEADS), samples: int = ECG_SAMPLES) -> np.ndarray:
    """Load an ECG as a float32 array of shape ``(leads, samples)``: 8 leads (I, II, V1..V6) x 2500 samples
    (10 s at 250 Hz), in millivolts.

    A ``.npy`` array or a ``.pt`` tensor (the released QoQ-Med format; read safely, see :func:`load_tensor`) must
    already have that layout. WFDB (``.hea``/``.dat``) and DICOM waveform (``.dcm``)
    records are read with :func:`qoqmed.data.ecg.read_ecg`: leads picked by name, resampled, cropped.
    """
    path = check_file(path, "ECG")
    if path.suffix.lower() in (".hea", ".dat", ".dcm"):
        spec = ECGSpec(sampling_rate=ECG_SAMPLING_RATE, seconds=samples / ECG_SAMPLING_RATE)
        if len(spec.leads) != leads:
            raise DataError(f"{path}: {leads} leads requested; WFDB/DICOM records are read as {spec.leads}")
        return read_ecg(path, spec).data
    if path.suffix.lower() in TENSOR_SUFFIXES:
        arr = load_tensor(path, "ECG")
    elif path.suffix.lower() != ".npy":
        raise DataError(f"{path}: unsupported ECG file type {path.suffix!r}; expected .npy, .pt, .hea/.dat or .dcm "
                        "(a .csv needs its sampling rate)")
    else:
        with reading_errors(path, "ECG array"), path.open("rb") as fh:  # np.load raises SyntaxError, ... on bad headers
            check_npy_header(path, fh)
            arr = np.load(fh, allow_pickle=False)
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected one array, got {type(arr).__name__}")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{path}: ECG must hold real numbers, got dtype {arr.dtype}")
    expected = (leads, samples)
    if arr.shape != expected:
        hint = " (transposed? save it as leads x samples)" if arr.shape == expected[::-1] else ""
        raise DataError(f"{path}: ECG shape {arr.shape} != expected {expected}{hint}")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(f"{path}: ECG has {bad} non-finite value(s) (NaN or inf)")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataError(f"{path}: ECG has {bad} value(s) too large for float32")
    return out


def load_tensor(path: Path, what: str) -> np.ndarray:
    """One plain tensor saved with ``torch.save`` (the released QoQ-Med format stores ECGs this way) as a float
    array. Read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only, never
    code; anything but one dense floating-point tensor is refused, naming the file."""
    import torch

    # A float32 array over the value limit needs more bytes than this; refused before anything is unpickled.
    most = decode_limits().max_array_values * 8 + 65_536
    if path.stat().st_size > most:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than a {what} tensor within the limit of "
                        f"{decode_limits().max_array_values:,} values needs (set QOQMED_MAX_ARRAY_VALUES to allow more)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...) on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read {what} tensor (torch.load with weights_only=True): {first}") from exc
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected one tensor, got {type(obj).__name__}")
    if obj.layout != torch.strided or not obj.is_floating_point():
        raise DataError(f"{path}: {what} tensor must be a dense floating-point tensor, got dtype {obj.dtype}, "
                        f"layout {obj.layout}")
    check_size(path, f"values (shape {tuple(obj.shape)})", obj.numel(), "max_array_values")
    charge_decoded(path, obj.numel() * BYTES_PER_SAMPLE)
    return obj.detach().to(torch.float64).numpy()


def load_ecg_file(path: str | Path, fmt: ECGFormat | None = None) -> np.ndarray:
    """A record's ECG in the model's layout: :func:`load_ecg` for a file already in it (or WFDB/DICOM), else
    :func:`qoqmed.data.ecg.read_ecg` at ``fmt``'s sampling rate and lead names (a ``.csv`` or a ``.npy`` at another
    rate), resampled and lead-mapped."""
    if fmt is None:
        return load_ecg(path)
    return read_ecg(check_file(path, "ECG"), ECGSpec(), fs=fmt.fs, lead_names=fmt.leads).data


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a segmentation mask as a boolean ``(height, width)`` array (any nonzero pixel is foreground).

    ``size`` is an optional expected ``(width, height)``, as ``PIL.Image.size`` gives it.
    """
    path = check_file(path, "mask")
    img = _open_image(path, "mask")
    if size is not None and tuple(img.size) != tuple(size):
        raise DataError(f"{path}: mask size {img.size} does not match its image size {tuple(size)} (width, height)")
    if img.mode in ("RGBA", "LA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.any(axis=2)
    mask = arr != 0
    return np.ascontiguousarray(mask, dtype=bool)


@lru_cache(maxsize=4096)
def load_mask_cached(path: str) -> np.ndarray:
    """:func:`load_mask` memoised by path, because rewards and metrics score many answers per record; the array is
    shared between callers, so never modify it."""
    return load_mask(path)
