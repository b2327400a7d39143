"""File types: the suffixes each reader accepts, the DICOM signature, and the checks every reader starts with.

One home, so that the readers, the converters, the inference inputs and the server agree on what a file is.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
# Still images Pillow or the DICOM reader decode (a .tif may also hold several frames: see PILLOW_SEQUENCE_SUFFIXES).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") + DICOM_SUFFIXES
NIFTI_SUFFIXES = (".nii", ".nii.gz")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")
PILLOW_SEQUENCE_SUFFIXES = (".gif", ".tif", ".tiff", ".webp", ".apng")
# One tensor saved with torch.save (the released QoQ-Med data stores ECGs as (8, 2500) float tensors this way).
TENSOR_SUFFIXES = (".pt", ".pth")
# The only Pillow decoders ever used, whatever a file's suffix says: Pillow otherwise picks a plugin from the
# content, so e.g. PostScript named .png would reach the EPS plugin (and Ghostscript where installed).
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
NOT_AN_ACCEPTED_FORMAT = f"not a recognised image format (accepted: {', '.join(PILLOW_FORMATS)}, DICOM)"
# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
_DICOM_MAGIC_SPAN, _DICOM_MAGIC = slice(128, 132), b"DICM"


def has_dicom_magic(head: bytes) -> bool:
    """Whether the first bytes of a file carry the DICOM signature (``DICM`` after the 128-byte preamble)."""
    return head[_DICOM_MAGIC_SPAN] == _DICOM_MAGIC


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or a file with the ``DICM`` magic after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return has_dicom_magic(fh.read(_DICOM_MAGIC_SPAN.stop))
    except OSError:
        return False


def check_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path when it is a non-empty regular file; DataError naming the file and ``what`` it is if not."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} path is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} file is empty (0 bytes)")
    return path
