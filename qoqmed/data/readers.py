"""Readers for the files a record points to: images, ECG arrays and segmentation masks.

Every reader raises ``DataError`` naming the file and the reason when a file is missing, empty or unreadable;
nothing is ever replaced by a blank image or a zero signal.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .schema import DataError

ECG_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
ECG_SAMPLE_RATE = 250
ECG_SAMPLES = 2500

# Pillow modes holding more than 8 bits per pixel (16-bit PNG/TIFF is common for X-ray and CT exports).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} path is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} file is empty (0 bytes)")
    return path


def _open_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image, turning every Pillow failure into a DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img.copy() if img.mode != "P" else img.convert("RGBA" if "transparency" in img.info else "RGB")
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: cannot read {what}: not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: cannot read {what}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read {what}: {exc}") from exc


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """Rescale a >8-bit grayscale image to 0..255 over its own value range (a flat image keeps its value)."""
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: image has non-finite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def load_image(path: str | Path) -> Image.Image:
    """Load an image file (PNG, JPEG, TIFF or any format Pillow decodes) as an RGB ``PIL.Image``.

    Grayscale images with more than 8 bits per pixel are rescaled to 0..255 over their own range.
    """
    path = _check_file(path, "image")
    img = _open_image(path, "image")
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: image has zero size {img.size}")
    if img.mode in _WIDE_MODES:
        img = _to_8bit(img, path)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_ecg(path: str | Path, leads: int = 8, samples: int = ECG_SAMPLES) -> np.ndarray:
    """Load an ECG as a float32 array of shape ``(leads, samples)``: 8 leads (I, II, V1..V6) x 2500 samples
    (10 s at 250 Hz), in millivolts.

    A ``.npy`` array must already have that layout. WFDB (``.hea``/``.dat``) and DICOM waveform (``.dcm``)
    records are read with :func:`qoqmed.data.ecg.read_ecg`: leads picked by name, resampled, cropped.
    """
    path = _check_file(path, "ECG")
    if path.suffix.lower() in (".hea", ".dat", ".dcm"):
        from .ecg import ECGSpec, read_ecg

        spec = ECGSpec(sampling_rate=ECG_SAMPLE_RATE, seconds=samples / ECG_SAMPLE_RATE)
        if len(spec.leads) != leads:
            raise DataError(f"{path}: {leads} leads requested; WFDB/DICOM records are read as {spec.leads}")
        return read_ecg(path, spec).data
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: unsupported ECG file type {path.suffix!r}; expected .npy, .hea/.dat or .dcm")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ECG array: {exc}") from exc
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


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a segmentation mask as a boolean ``(height, width)`` array (any nonzero pixel is foreground).

    ``size`` is an optional expected ``(width, height)``, as ``PIL.Image.size`` gives it.
    """
    path = _check_file(path, "mask")
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
