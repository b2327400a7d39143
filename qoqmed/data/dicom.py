"""DICOM images: reading, the display pipeline (modality LUT, VOI LUT or window, MONOCHROME1, palette colour) and
the 8-bit conversions every reader shares.

Decode (pydicom; YBR converted to RGB), modality LUT or rescale (CT -> Hounsfield units), VOI LUT or window (the
file's own, or one passed in), MONOCHROME1 inversion, palette colour lookup. The image keeps its stored size
(Columns x Rows), so boxes in original pixels stay valid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .errors import DataError, reading_errors
from .files import check_file
from .limits import BYTES_PER_PIXEL, charge_decoded, check_size


def read_dicom(path: str | Path, what: str = "DICOM", stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with every failure turned into a DataError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = check_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about harmless VR quirks of real files
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read {what} file: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom's parser raises NotImplementedError, ... on malformed files
        raise DataError(f"{path}: cannot read {what} file: {type(exc).__name__}: {exc}") from exc


@dataclass
class DicomPixels:
    """Decoded pixels of one DICOM object.

    ``frames`` is float32 ``(n, rows, cols)`` after the modality LUT (Hounsfield units for CT) for grayscale data,
    or uint8 ``(n, rows, cols, 3)`` RGB for colour data. ``window`` is the file's first (center, width), if any.
    """

    frames: np.ndarray
    color: bool
    monochrome1: bool
    window: tuple[float, float] | None
    units: str
    modality: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of one frame."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def dicom_pixels(ds, path: str | Path) -> DicomPixels:
    """Decode the pixel data of a read dataset into frames (see ``DicomPixels``); DataError on any failure."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    path = Path(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            # from the header, before decoding: a small deflated file can claim gigabytes of pixels
            check_size(path, f"pixels ({columns} x {rows} x {n_frames} frame(s))", rows * columns * n_frames,
                       "max_volume_voxels" if n_frames > 1 else "max_image_pixels")
            charge_decoded(path, rows * columns * n_frames * BYTES_PER_PIXEL)
            arr = ds.pixel_array  # colour (RGB/YBR) data comes back as RGB
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
            color = arr.ndim == (4 if n_frames > 1 else 3)
            if not color:
                arr = _modality(arr, ds, n_frames, apply_modality_lut)
    except DataError:
        raise
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError, ... on bad pixel data
        raise DataError(f"{path}: cannot decode DICOM pixel data: {type(exc).__name__}: {exc}") from exc
    if n_frames == 1 or arr.ndim == (3 if color else 2):
        arr = arr[None]
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{path}: DICOM image has zero size {arr.shape[1:3]}")
    if color:
        frames = _color_to_uint8(arr, ds)
    else:
        frames = np.asarray(arr, dtype=np.float32)
        bad = int(frames.size - np.count_nonzero(np.isfinite(frames)))
        if bad:
            raise DataError(f"{path}: DICOM image has {bad} non-finite pixel value(s)")
    modality = str(ds.get("Modality", ""))
    has_rescale = "RescaleSlope" in ds or "ModalityLUTSequence" in ds or _shared_rescale(ds) is not None
    return DicomPixels(
        frames=frames, color=color, monochrome1=photometric == "MONOCHROME1", window=_stored_window(ds),
        units="HU" if modality == "CT" and has_rescale else str(ds.get("RescaleType", "")),
        modality=modality, source=str(path),
    )


def _shared_rescale(ds) -> tuple[float, float] | None:
    """(slope, intercept) of an enhanced multi-frame object's shared Pixel Value Transformation, if any."""
    try:
        item = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        return float(item.RescaleSlope), float(item.RescaleIntercept)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _modality(arr: np.ndarray, ds, n_frames: int, apply_modality_lut) -> np.ndarray:
    """Modality LUT / rescale, including the per-frame or shared form of enhanced multi-frame objects."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = np.asarray(arr, dtype=np.float64)
    if per_frame and n_frames > 1 and "PixelValueTransformationSequence" in per_frame[0]:
        for i, group in enumerate(per_frame):
            item = group.PixelValueTransformationSequence[0]
            out[i] = out[i] * float(item.RescaleSlope) + float(item.RescaleIntercept)
        return out
    shared = _shared_rescale(ds)
    if shared is not None:
        out = out * shared[0] + shared[1]
    return out


def _color_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """RGB data of any bit depth -> uint8. Palette LUT output is 16-bit-scaled when its dtype is uint16."""
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        top = 255.0 if arr.max() <= 255 else 65535.0
    else:
        top = float(2 ** int(ds.get("BitsStored", 8 * arr.dtype.itemsize)) - 1)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _stored_window(ds) -> tuple[float, float] | None:
    """The first Window Center/Width pair of the file (multi-valued elements list alternatives)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        try:
            item = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
            center, width = item.WindowCenter, item.WindowWidth
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
    from pydicom.multival import MultiValue

    center = center[0] if isinstance(center, (MultiValue, list, tuple)) else center
    width = width[0] if isinstance(width, (MultiValue, list, tuple)) else width
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        return None
    return (c, w) if w >= 1 else None


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) -> uint8: below the window 0, above 255, linear in between."""
    if not width >= 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    scaled = ((np.asarray(values, dtype=np.float32) - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rescale_to_uint8(
    values: np.ndarray, low: float | None = None, high: float | None = None, flat: Literal["zero", "keep"] = "zero",
    dtype: type = np.float32,
) -> np.ndarray:
    """Linear map of [low, high] (default: the array's min and max) to 0..255, rounded and clipped.

    A flat array (high <= low) becomes 0 with ``flat="zero"`` (a blank volume slice) or keeps its values, clipped to
    0..255, with ``flat="keep"`` (a flat still image stays the grey it is). The one 8-bit rescaler of the package:
    DICOM, volumes, wide-mode images and in-memory arrays all go through it; ``dtype`` is the arithmetic's precision.
    """
    values = np.asarray(values, dtype=dtype)
    lo = float(values.min()) if low is None else float(low)
    hi = float(values.max()) if high is None else float(high)
    if hi <= lo:
        if flat == "zero":
            return np.zeros(values.shape, np.uint8)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """uint8 (rows, cols) -> RGB PIL image (three equal channels)."""
    return Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


def load_dicom_image(
    path: str | Path, frame: int | None = None, window: tuple[float, float] | None = None,
) -> Image.Image:
    """Read one DICOM image as RGB at its stored size.

    Grayscale: modality LUT, then ``window`` (center, width) in modality units if given, else the file's VOI LUT
    or window, else its full value range; MONOCHROME1 is inverted so that bright means dense, as on MONOCHROME2.
    ``frame`` picks a frame of a multi-frame object; without it a multi-frame object is refused.
    """
    with reading_errors(path, "DICOM image"):  # pydicom parses elements lazily, so a fault may surface late
        return _dicom_image(path, frame, window)


def _dicom_image(path: str | Path, frame: int | None, window: tuple[float, float] | None) -> Image.Image:
    ds = read_dicom(path, "DICOM image")
    pixels = dicom_pixels(ds, path)
    n = pixels.frames.shape[0]
    if frame is None:
        if n > 1:
            raise DataError(f"{path}: DICOM object holds {n} frames; read it as a volume or video "
                            "(qoqmed.data.volumes.load_volume, or `volumes` in a record) or pass frame=")
        frame = 0
    if not 0 <= frame < n:
        raise DataError(f"{path}: frame {frame} out of range for {n} frame(s)")
    data = pixels.frames[frame]
    if pixels.color:
        if window is not None:
            raise ValueError(f"{path}: a window applies to grayscale images; this one is colour")
        return Image.fromarray(data, mode="RGB")
    if window is not None:
        gray = apply_window(data, *window)
    elif "VOILUTSequence" in ds:
        gray = _voi_lut(data, ds, path)
    elif pixels.window is not None:
        gray = apply_window(data, *pixels.window)
    else:
        gray = rescale_to_uint8(data)
    if pixels.monochrome1:
        gray = 255 - gray
    return gray_to_rgb(gray)


def _voi_lut(values: np.ndarray, ds, path: Path) -> np.ndarray:
    """The file's VOI LUT Sequence applied, its output range (LUT Descriptor bits) mapped to 0..255."""
    from pydicom.pixels import apply_voi_lut

    try:
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    except Exception as exc:  # a malformed LUT raises IndexError/ValueError/AttributeError inside pydicom
        raise DataError(f"{path}: cannot apply the DICOM VOI LUT: {type(exc).__name__}: {exc}") from exc
    return rescale_to_uint8(out, 0, 2**bits - 1)
