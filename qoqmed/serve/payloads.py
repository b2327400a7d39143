"""Request payloads -> files the data layer reads, in a private temporary folder.

Uploaded bytes are written under names this module chooses (a client's file name only hints at the format, and
only through an allow-list of suffixes), so a request can never make the server read or write a path of its
choosing. The readers then decode them exactly as they decode files on disk.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data.files import (
    DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, PILLOW_SEQUENCE_SUFFIXES, VIDEO_SUFFIXES, has_dicom_magic,
)
from ..infer.inputs import InputError

# Suffixes a client's file name may keep: what the image and volume readers accept (data.files).
UPLOAD_IMAGE_SUFFIXES = IMAGE_SUFFIXES + PILLOW_SEQUENCE_SUFFIXES
UPLOAD_VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + PILLOW_SEQUENCE_SUFFIXES + VIDEO_SUFFIXES
MIME_SUFFIX = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/tiff": ".tif", "image/bmp": ".bmp",
    "image/gif": ".gif", "image/webp": ".webp", "application/dicom": ".dcm",
}
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?,(.*)$", re.DOTALL)
_WFDB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def decode_b64(data: str, field: str) -> tuple[bytes, str | None]:
    """Base64 text or a ``data:`` URL -> (bytes, mime type or None). Remote URLs are refused, never fetched."""
    mime = None
    if data.startswith("data:"):
        m = _DATA_URL.match(data)
        if not m or not m.group(3):
            raise InputError(field, "a data URL must be base64: data:<mime>;base64,<data>")
        mime, data = m.group(1), m.group(4)
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", data):
        raise InputError(field, "URLs are not fetched and server paths are not read; send the file as base64 "
                                "or a data: URL")
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(field, f"not valid base64 ({exc})") from exc
    if not raw:
        raise InputError(field, "file is empty (0 bytes)")
    return raw, mime


def _client_suffix(filename: str | None, allowed: tuple[str, ...]) -> str | None:
    name = (filename or "").lower()
    return next((s for s in sorted(allowed, key=len, reverse=True) if name.endswith(s)), None)


def image_suffix(raw: bytes, filename: str | None, mime: str | None) -> str:
    if has_dicom_magic(raw):
        return ".dcm"
    # Otherwise Pillow recognises the format from the bytes; the suffix is only a hint.
    return _client_suffix(filename, UPLOAD_IMAGE_SUFFIXES) or MIME_SUFFIX.get(mime or "", ".img")


def volume_suffix(raw: bytes, filename: str | None, field: str) -> str:
    if has_dicom_magic(raw):
        return ".dcm"
    if len(raw) > 348 and raw[344:348] in (b"n+1\x00", b"ni1\x00"):
        return ".nii"
    if raw[:2] == b"\x1f\x8b":
        return ".nii.gz"  # gzip: nibabel checks that it really holds NIfTI
    suffix = _client_suffix(filename, UPLOAD_VOLUME_SUFFIXES)
    if suffix is None or suffix in NIFTI_SUFFIXES + DICOM_SUFFIXES:
        raise InputError(field, "not a NIfTI (.nii/.nii.gz) or DICOM file (no NIfTI or DICM magic)")
    return suffix


@dataclass
class Staged:
    """Inputs written into the request's temporary folder, as the pipeline takes them."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    volumes: list[Path] = field(default_factory=list)
    ecg: list = field(default_factory=list)   # paths, or {"signal", "fs", "leads"} dicts

    def write(self, name: str, raw: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(raw)
        return path

    def add_image(self, raw: bytes, filename: str | None, mime: str | None = None) -> None:
        i = len(self.images)
        self.images.append(self.write(f"image_{i}{image_suffix(raw, filename, mime)}", raw))

    def add_volume(self, raw: bytes, filename: str | None, field: str) -> None:
        i = len(self.volumes)
        self.volumes.append(self.write(f"volume_{i}{volume_suffix(raw, filename, field)}", raw))

    def add_series(self, files: list[bytes], field: str) -> None:
        """Several single-slice DICOM files of one series -> one volume (a folder the series reader sorts)."""
        i = len(self.volumes)
        folder = self.folder / f"series_{i}"
        folder.mkdir()
        for k, raw in enumerate(files):
            if not has_dicom_magic(raw):
                raise InputError(f"{field}[{k}]", "a series must consist of DICOM files (no DICM magic)")
            (folder / f"slice_{k:05d}.dcm").write_bytes(raw)
        self.volumes.append(folder)

    def add_ecg_csv(self, raw: bytes, fs: float | None, leads: list[str] | None, field: str) -> None:
        """A CSV ECG (header row naming the leads, one row per sample, mV) at ``fs`` Hz."""
        if fs is None:
            raise InputError(field, "a CSV ECG needs its sampling rate (fs, in Hz)")
        path = self.write(f"ecg_{len(self.ecg)}.csv", raw)
        self.ecg.append({"path": path, "fs": fs, "leads": leads})

    def add_ecg_npy(self, raw: bytes, fs: float, leads: list[str] | None, field: str) -> None:
        """A ``.npy`` ECG of any (leads, samples) at ``fs`` Hz; the ECG reader maps the leads and resamples."""
        if raw[:6] != b"\x93NUMPY":
            raise InputError(field, "not a .npy array (no NUMPY magic)")
        path = self.write(f"ecg_{len(self.ecg)}.npy", raw)
        self.ecg.append({"path": path, "fs": fs, "leads": leads})

    def add_ecg_file(self, raw: bytes, filename: str | None, field: str) -> None:
        i = len(self.ecg)
        if has_dicom_magic(raw):
            self.ecg.append(self.write(f"ecg_{i}.dcm", raw))
        elif raw[:6] == b"\x93NUMPY":
            self.ecg.append(self.write(f"ecg_{i}.npy", raw))
        else:
            raise InputError(field, "not a .npy array or a DICOM waveform; send a WFDB record as a .hea + .dat pair")

    def add_wfdb(self, header: bytes, dat: bytes, field: str) -> None:
        """A WFDB record: written under the record and signal file names its header states (checked to be plain
        names), because the header refers to the .dat by name."""
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InputError(f"{field}.hea", "a WFDB header must be ASCII text") from exc
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) < 2:
            raise InputError(f"{field}.hea", "a WFDB header needs a record line and at least one signal line")
        record = lines[0].split()[0].split("/")[0]
        dat_names = {ln.split()[0] for ln in lines[1:]}
        for name in (record, *dat_names):
            if not _WFDB_NAME.match(name) or ".." in name:
                raise InputError(f"{field}.hea", f"record/file name {name!r} must be a plain file name")
        if len(dat_names) != 1:
            raise InputError(f"{field}.hea", f"the header refers to {len(dat_names)} signal files; send records "
                                             "with one .dat file")
        sub = self.folder / f"ecg_{len(self.ecg)}"
        sub.mkdir()
        (sub / f"{record}.hea").write_bytes(header)
        (sub / dat_names.pop()).write_bytes(dat)
        self.ecg.append(sub / f"{record}.hea")


def scrub(message: str, folder: Path) -> str:
    """Remove the temporary folder from an error message: clients see their field names, not server paths."""
    return message.replace(str(folder) + "/", "").replace(str(folder), "upload")
