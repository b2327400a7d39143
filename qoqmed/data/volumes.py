"""Volumes and videos -> a few RGB frames: CT/MRI (NIfTI, DICOM series, multi-frame DICOM) and ultrasound clips.

QoQ-Med sees a 3D study as a handful of 2D slices (4 in the paper), each an ordinary image. :func:`load_volume`
reads the study, picks ``num_slices`` uniformly spaced slices along an axis, maps values to 0..255 through a window
and returns RGB ``PIL`` images.

Formats, by path:

- a directory: a DICOM series, one single-frame file per slice, sorted by ImagePositionPatient projected on the
  slice normal (InstanceNumber when positions are missing); files of several series or of different shapes or
  orientations are refused;
- ``.nii`` / ``.nii.gz``: NIfTI (nibabel), reoriented to RAS so that the anatomical axis names hold;
- ``.dcm`` (or the DICM magic): a multi-frame DICOM (enhanced CT/MR, an ultrasound cine loop);
- ``.gif`` / ``.tif`` / ``.tiff`` / ``.png`` (APNG) / ``.webp``: frames read with Pillow;
- ``.mp4`` / ``.avi`` / ``.mov`` / ``.mkv`` / ``.webm`` / ``.mpg``: decoded with PyAV (``pip install qoqmed[video]``).

Windows are ``(center, width)`` in the volume's units (Hounsfield units for CT): a preset name from ``WINDOWS``,
a custom pair, or None for the file's own window (DICOM) or, failing that, the 0.5..99.5 percentile range of the
whole volume (one mapping for all slices, so slices stay comparable).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from .dicom import apply_window, dicom_pixels, gray_to_rgb, read_dicom, rescale_to_uint8
from .errors import DataError, reading_errors
from .files import (NIFTI_SUFFIXES, NOT_AN_ACCEPTED_FORMAT, PILLOW_FORMATS, PILLOW_SEQUENCE_SUFFIXES, VIDEO_SUFFIXES,
                    is_dicom)
from .limits import BYTES_PER_PIXEL, charge_decoded, check_aspect_ratio, check_size
from .windows import WINDOWS

__all__ = [
    "WINDOWS", "AXES", "Volume", "read_volume", "load_volume", "sample_indices", "end_inclusive_indices",
    "pick_indices", "resolve_window", "volume_frames",
]

# World axis (RAS/LPS index) along which each anatomical plane is stacked.
AXES: Mapping[str, int] = MappingProxyType({"sagittal": 0, "coronal": 1, "axial": 2})
AUTO_PERCENTILES = (0.5, 99.5)


@dataclass
class Volume:
    """A decoded volume or video.

    ``data`` is float32 ``(slices, rows, cols)`` for grayscale volumes (modality units, e.g. HU) or uint8
    ``(frames, rows, cols, 3)`` for colour video. ``world_axes[i]`` is the world axis (0 = x/sagittal,
    1 = y/coronal, 2 = z/axial) that array axis ``i`` mostly runs along, when the file says so.
    """

    data: np.ndarray
    source: str
    format: str
    units: str = ""
    modality: str = ""
    window: tuple[float, float] | None = None
    world_axes: tuple[int, int, int] | None = None
    spacing: tuple[float, ...] | None = None
    info: dict = field(default_factory=dict)

    @property
    def color(self) -> bool:
        return self.data.ndim == 4

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


# ----------------------------------------------------------------------------------------------------------------
# public API


def load_volume(
    path: str | Path,
    num_slices: int | None = 4,
    window: str | tuple[float, float] | None = None,
    axis: str | int | None = None,
    timepoint: int | None = None,
    selection: str = "centres",
) -> list[Image.Image]:
    """Read a volume or video and return ``num_slices`` uniformly spaced slices/frames as RGB images.

    ``num_slices=None`` returns every slice. ``window``: a ``WINDOWS`` preset name, a ``(center, width)`` pair in
    the volume's units, or None (the file's window, else the volume's 0.5..99.5 percentile range).
    ``axis``: ``"axial"``, ``"coronal"``, ``"sagittal"`` (needs orientation: NIfTI or a DICOM series), an array
    axis 0..2, or None for the stored order (slices of a series, frames of a multi-frame file or video, axial
    slices of a NIfTI image, which is reoriented to RAS). ``timepoint`` picks one volume of a 4D NIfTI image.
    ``selection``: ``centres`` of equal bins (default) or ``ends``, first to last slice (the released code's).
    """
    return volume_frames(read_volume(path, timepoint=timepoint), num_slices, window, axis, selection)


def volume_frames(
    volume: Volume,
    num_slices: int | None = 4,
    window: str | tuple[float, float] | None = None,
    axis: str | int | None = None,
    selection: str = "centres",
) -> list[Image.Image]:
    """Slices of an already read ``Volume`` as RGB images (see :func:`load_volume`); ``selection`` as in
    :func:`pick_indices`."""
    data = _along(volume, axis)
    check_aspect_ratio(volume.source, int(data.shape[2]), int(data.shape[1]), "slice")
    indices = pick_indices(data.shape[0], num_slices, volume.source, selection)
    if volume.color:
        if window is not None:
            raise ValueError(f"{volume.source}: a window applies to grayscale volumes; this one is colour video")
        return [Image.fromarray(np.ascontiguousarray(data[i]), mode="RGB") for i in indices]
    center_width = resolve_window(window, volume)
    picked = data[indices]
    if center_width is not None:
        gray = apply_window(picked, *center_width)
    else:
        # One mapping for the whole volume, so that a slice's brightness means the same on every slice;
        # percentiles of a strided subsample (<= 4M voxels) are as good and keep large CTs fast.
        flat = data.reshape(-1)
        lo, hi = np.percentile(flat[:: max(1, flat.size // 4_000_000)], AUTO_PERCENTILES)
        gray = rescale_to_uint8(picked, lo, hi)
    if volume.info.get("monochrome1"):
        gray = 255 - gray
    return [gray_to_rgb(g) for g in gray]


SLICE_SELECTIONS = ("centres", "ends")


def end_inclusive_indices(n: int, num_slices: int, source: str = "volume") -> list[int]:
    """``num_slices`` evenly spaced indices from the first slice to the last, both included, truncated to int
    (the middle slice when one is asked for): the released QoQ-Med frame selection."""
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"num_slices must be a positive integer, got {num_slices!r}")
    if n < num_slices:
        raise DataError(f"{source}: has {n} slice(s)/frame(s), fewer than the {num_slices} requested")
    if num_slices == 1:
        return [n // 2]
    return [int(k * (n - 1) / (num_slices - 1)) for k in range(num_slices)]


def pick_indices(n: int, num_slices: int | None, source: str = "volume", selection: str = "centres") -> list[int]:
    """Slice indices by ``selection``: ``centres`` (:func:`sample_indices`, qoqmed's) or ``ends``
    (:func:`end_inclusive_indices`, the released code's)."""
    if selection not in SLICE_SELECTIONS:
        raise ValueError(f"selection={selection!r}: choose one of {', '.join(SLICE_SELECTIONS)}")
    if selection == "ends" and num_slices is not None:
        return end_inclusive_indices(n, num_slices, source)
    return sample_indices(n, num_slices, source)


def sample_indices(n: int, num_slices: int | None, source: str = "volume") -> list[int]:
    """``num_slices`` indices spread uniformly over ``n`` slices: the centres of ``num_slices`` equal bins.

    Centres rather than the end points, because the first and last slices of a study are often outside the body.
    """
    if num_slices is None:
        return list(range(n))
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"num_slices must be a positive integer or None, got {num_slices!r}")
    if n < num_slices:
        raise DataError(f"{source}: has {n} slice(s)/frame(s), fewer than the {num_slices} requested")
    return [int((k + 0.5) * n / num_slices) for k in range(num_slices)]


def resolve_window(window: str | Sequence[float] | None, volume: Volume | None = None) -> tuple[float, float] | None:
    """A window argument -> ``(center, width)``, or None for the automatic range.

    Presets are in Hounsfield units, so they are refused for a volume known to hold something else (e.g. MR).
    """
    source = volume.source if volume is not None else "volume"
    if window is None:
        return volume.window if volume is not None else None
    if isinstance(window, str):
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; presets: {', '.join(WINDOWS)}, or a (center, width) pair")
        if volume is not None and volume.modality and volume.modality != "CT" and volume.units != "HU":
            raise DataError(f"{source}: window preset {window!r} is in Hounsfield units but the volume is "
                            f"{volume.modality}; pass a (center, width) pair in its own units")
        return WINDOWS[key]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a preset name or (center, width), got {window!r}") from None
    if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
        raise ValueError(f"window (center, width) needs finite numbers and width >= 1, got {window!r}")
    return center, width


def read_volume(path: str | Path, timepoint: int | None = None) -> Volume:
    """Read a volume or video file (see the module docstring for formats); DataError naming the file on failure."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"{path}: volume file not found")
    if path.is_dir():
        volume = _read_dicom_series(path)
    elif path.stat().st_size == 0:
        raise DataError(f"{path}: volume file is empty (0 bytes)")
    elif name.endswith(NIFTI_SUFFIXES):
        volume = _read_nifti(path, timepoint)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        volume = _read_video(path)
    elif is_dicom(path):
        volume = _read_dicom_multiframe(path)
    elif path.suffix.lower() in PILLOW_SEQUENCE_SUFFIXES:
        volume = _read_pillow_frames(path)
    else:
        raise DataError(f"{path}: unsupported volume type {path.suffix!r}; expected a DICOM series folder, "
                        f".nii/.nii.gz, multi-frame .dcm, {'/'.join(PILLOW_SEQUENCE_SUFFIXES)} or "
                        f"{'/'.join(VIDEO_SUFFIXES)}")
    if timepoint is not None and volume.format != "nifti":
        raise ValueError(f"{path}: timepoint applies to 4D NIfTI images only")
    if volume.data.shape[0] == 0 or volume.data.size == 0:
        raise DataError(f"{path}: volume has no voxels (shape {volume.data.shape})")
    return volume


# ----------------------------------------------------------------------------------------------------------------
# axis handling


def _along(volume: Volume, axis: str | int | None) -> np.ndarray:
    """The volume's data with the slicing axis first."""
    if axis is None:
        return volume.data
    if isinstance(axis, str):
        key = axis.strip().lower()
        if key not in AXES:
            raise ValueError(f"unknown axis {axis!r}; use {', '.join(AXES)}, an array axis 0..2 or None")
        if volume.world_axes is None:
            raise DataError(f"{volume.source}: {volume.format} data has no patient orientation, so the "
                            f"{key} axis is unknown; pass an array axis 0..2 or None")
        index = volume.world_axes.index(AXES[key])
    elif isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis <= 2:
        index = axis
    else:
        raise ValueError(f"axis must be 'axial', 'coronal', 'sagittal', 0, 1, 2 or None, got {axis!r}")
    if index == 0:
        return volume.data
    if volume.color:
        raise ValueError(f"{volume.source}: colour video can only be sliced along its frames (axis 0)")
    # A plane cut across the slices shows the slice axis vertically, later (higher) slices at the top.
    return np.moveaxis(volume.data, index, 0)[:, ::-1]


# ----------------------------------------------------------------------------------------------------------------
# NIfTI


def _read_nifti(path: Path, timepoint: int | None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        check_size(path, f"voxels (shape {tuple(img.shape)})", math.prod(img.shape), "max_volume_voxels")
        charge_decoded(path, math.prod(img.shape) * BYTES_PER_PIXEL)
        img = nib.as_closest_canonical(img)  # RAS+: array axes are x (L->R), y (P->A), z (I->S)
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except DataError:
        raise
    # ImageFileError, OSError, EOFError/zlib.error (truncated .nii.gz), HeaderDataError, ValueError, MemoryError...
    except Exception as exc:
        raise DataError(f"{path}: cannot read NIfTI file: {type(exc).__name__}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        if timepoint is None:
            raise DataError(f"{path}: NIfTI image is 4D {data.shape}; pass timepoint=0..{data.shape[3] - 1}")
        if not 0 <= timepoint < data.shape[3]:
            raise DataError(f"{path}: timepoint {timepoint} out of range for {data.shape[3]} volume(s)")
        data = data[..., timepoint]
    elif timepoint not in (None, 0):
        raise DataError(f"{path}: timepoint {timepoint} given, but the NIfTI image is 3D {data.shape}")
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: NIfTI image has {data.ndim} dimensions {data.shape}; expected 3 (or 4D with timepoint)")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: NIfTI image has {bad} non-finite voxel value(s) (NaN or inf)")
    # Store slices first along the voxel axis z; rows = y flipped (anterior up), cols = x: the usual display.
    data = np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, :])
    return Volume(data=data, source=str(path), format="nifti", world_axes=(2, 1, 0),
                  spacing=(zooms[2], zooms[1], zooms[0]), info={"intent": str(img.header.get_intent()[0])})


# ----------------------------------------------------------------------------------------------------------------
# DICOM


def _read_dicom_multiframe(path: Path) -> Volume:
    with reading_errors(path, "DICOM volume"):  # pydicom parses elements lazily, so a fault may surface late
        return _dicom_multiframe(path)


def _dicom_multiframe(path: Path) -> Volume:
    ds = read_dicom(path, "DICOM volume")
    pixels = dicom_pixels(ds, path)
    frames = pixels.frames
    order = _enhanced_frame_order(ds, frames.shape[0])
    if order is not None:
        frames = frames[order]
    return Volume(
        data=frames, source=str(path), format="dicom-multiframe", units=pixels.units, modality=pixels.modality,
        window=pixels.window if not pixels.color else None,
        info={"monochrome1": pixels.monochrome1, "frames": int(frames.shape[0])},
    )


def _enhanced_frame_order(ds, n: int) -> list[int] | None:
    """Frame order by plane position along the normal for an enhanced multi-frame object that stores positions."""
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if not groups or len(groups) != n or n < 2:
        return None
    try:
        positions = [np.array(g.PlanePositionSequence[0].ImagePositionPatient, float) for g in groups]
        orient = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    normal = np.cross(np.asarray(orient[:3], float), np.asarray(orient[3:], float))
    return list(np.argsort([float(p @ normal) for p in positions], kind="stable"))


def _series_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR")
    if not files:
        raise DataError(f"{folder}: DICOM series folder is empty")
    return files


def _read_dicom_series(folder: Path) -> Volume:
    """A folder of single-frame DICOM slices of one series -> (slices, rows, cols), sorted along the normal."""
    with reading_errors(folder, "DICOM series"):  # pydicom parses elements lazily, so a fault may surface late
        return _dicom_series(folder)


def _dicom_series(folder: Path) -> Volume:
    slices = []
    for file in _series_files(folder):
        ds = read_dicom(file, "DICOM slice")
        slices.append((file, ds))
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in slices)
    if len(series) > 1:
        listing = ", ".join(f"{uid or '<none>'} ({count} files)" for uid, count in series.most_common())
        raise DataError(f"{folder}: folder mixes {len(series)} DICOM series: {listing}; put each series in its own folder")
    shapes = Counter((int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in slices)
    if len(shapes) > 1:
        odd = [f.name for f, ds in slices if (ds.get("Rows"), ds.get("Columns")) != shapes.most_common(1)[0][0]]
        raise DataError(f"{folder}: slices have inconsistent shapes {dict(shapes)} (rows, cols); odd ones: "
                        f"{', '.join(odd[:5])}")
    for file, ds in slices:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{file}: multi-frame file inside a DICOM series folder; read it on its own")
    rows, columns = shapes.most_common(1)[0][0]
    check_size(folder, f"voxels ({len(slices)} slices of {columns} x {rows})", len(slices) * rows * columns,
               "max_volume_voxels")  # from the slices' headers, before any is decoded

    order, normal, orient = _series_order(folder, slices)
    slices = [slices[i] for i in order]
    arrays, monochrome1, first = [], set(), None
    for file, ds in slices:
        px = dicom_pixels(ds, file)
        if px.color:
            raise DataError(f"{file}: colour slice in a DICOM series; volumes are grayscale")
        arrays.append(px.frames[0])
        monochrome1.add(px.monochrome1)
        first = first or px
    data = np.stack(arrays).astype(np.float32, copy=False)
    world_axes = None
    spacing = None
    if orient is not None:
        row_dir, col_dir = orient[:3], orient[3:]
        # Array axis 0 runs along the normal, axis 1 (down the rows) along the column direction cosines,
        # axis 2 (along a row) along the row direction cosines.
        dirs = [normal, col_dir, row_dir]
        world = tuple(int(np.argmax(np.abs(d))) for d in dirs)
        world_axes = world if len(set(world)) == 3 else None
        positions = _positions(slices)
        if positions is not None and len(positions) > 1:
            steps = np.diff(sorted(float(p @ normal) for p in positions))
            ps = slices[0][1].get("PixelSpacing")
            spacing = (float(np.median(steps)),) + ((float(ps[0]), float(ps[1])) if ps else (1.0, 1.0))
    return Volume(
        data=data, source=str(folder), format="dicom-series", units=first.units, modality=first.modality,
        window=first.window, world_axes=world_axes, spacing=spacing,
        info={"monochrome1": monochrome1 == {True}, "files": [f.name for f, _ in slices]},
    )


def _positions(slices) -> list[np.ndarray] | None:
    try:
        return [np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices]
    except (AttributeError, TypeError, ValueError):
        return None


def _series_order(folder: Path, slices) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
    """Slice order: position along the slice normal, else InstanceNumber; refuse ties and mixed orientations."""
    orients = []
    for _, ds in slices:
        value = ds.get("ImageOrientationPatient")
        orients.append(None if value is None or len(value) != 6 else np.asarray(value, dtype=float))
    positions = _positions(slices)
    if positions is not None and all(o is not None for o in orients):
        orient = orients[0]
        if any(not np.allclose(o, orient, atol=1e-4) for o in orients):
            raise DataError(f"{folder}: slices have different ImageOrientationPatient; not one volume")
        normal = np.cross(orient[:3], orient[3:])
        keys = [float(p @ normal) for p in positions]
        if len(set(np.round(keys, 4))) != len(keys):
            dup = [f.name for (f, _), k in zip(slices, keys) if keys.count(k) > 1]
            raise DataError(f"{folder}: several slices at the same position ({', '.join(dup[:5])}); "
                            "duplicate files or more than one volume in the folder")
        return list(np.argsort(keys, kind="stable")), normal, orient
    numbers = [ds.get("InstanceNumber") for _, ds in slices]
    if all(n is not None for n in numbers):
        numbers = [int(n) for n in numbers]
        if len(set(numbers)) != len(numbers):
            raise DataError(f"{folder}: slices have no positions and repeat InstanceNumber values; cannot order them")
        return list(np.argsort(numbers, kind="stable")), None, None
    raise DataError(f"{folder}: slices have neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber; "
                    "cannot order them")


# ----------------------------------------------------------------------------------------------------------------
# videos and frame sequences


def _read_pillow_frames(path: Path) -> Volume:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PILLOW_FORMATS) as img:
                frames = []
                for frame in ImageSequence.Iterator(img):
                    # counted from each frame's header, before that frame is decoded
                    check_size(path, "frames or more", len(frames) + 1, "max_frames")
                    check_size(path, "pixels or more over the frames", (len(frames) + 1) * frame.width * frame.height,
                               "max_volume_voxels")
                    charge_decoded(path, frame.width * frame.height * BYTES_PER_PIXEL)
                    frames.append(np.asarray(frame.convert("RGB")))
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: cannot read frames: {NOT_AN_ACCEPTED_FORMAT}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: cannot read frames: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise TypeError, KeyError, ... on malformed files
        raise DataError(f"{path}: cannot read frames: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise DataError(f"{path}: no frames")
    if len({f.shape for f in frames}) > 1:
        raise DataError(f"{path}: frames differ in size")
    return Volume(data=np.stack(frames), source=str(path), format="frames", info={"frames": len(frames)})


def _read_video(path: Path) -> Volume:
    try:
        import av
    except ImportError as exc:
        raise DataError(f"{path}: reading {path.suffix} video needs PyAV: pip install 'qoqmed[video]'") from exc
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: file has no video stream")
            for frame in container.decode(video=0):
                # each frame's size is known once decoded, before its RGB copy is kept
                check_size(path, "frames or more", len(frames) + 1, "max_frames")
                check_size(path, "pixels or more over the frames", (len(frames) + 1) * frame.width * frame.height,
                           "max_volume_voxels")
                charge_decoded(path, frame.width * frame.height * BYTES_PER_PIXEL)
                frames.append(frame.to_ndarray(format="rgb24"))
    except DataError:
        raise
    except Exception as exc:  # PyAV raises its own FFmpegError subclasses (InvalidDataError, ...) and OSError
        raise DataError(f"{path}: cannot decode video: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise DataError(f"{path}: video has no decodable frames")
    return Volume(data=np.stack(frames), source=str(path), format="video", info={"frames": len(frames)})
