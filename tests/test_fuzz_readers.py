"""Property: whatever bytes a file holds, every reader either returns a valid result or raises DataError.

Each supported format starts from a valid file, which is then mutated (bytes overwritten, inserted or cut, mostly
in the header where the parsers branch) or replaced by random bytes. Any other exception (IndexError from a parser,
MemoryError from a size taken on trust, RecursionError...) fails the property. The decoded-size limits are lowered
so that a mutated header claiming a large size is refused rather than decoded.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from qoqmed.data.ecg import ECGSpec, STANDARD_LEADS, read_ecg
from qoqmed.data.errors import DataError
from qoqmed.data.readers import load_ecg, load_image, load_mask
from qoqmed.data.volumes import load_volume

SMALL_LIMITS = {"QOQMED_MAX_IMAGE_PIXELS": "1000000", "QOQMED_MAX_FRAMES": "64", "QOQMED_MAX_VOLUME_VOXELS": "4000000",
                "QOQMED_MAX_ARRAY_VALUES": "1000000", "QOQMED_MAX_ECG_SAMPLES": "1000000",
                "QOQMED_MAX_REQUEST_BYTES": "100000000"}


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    for key, value in SMALL_LIMITS.items():
        monkeypatch.setenv(key, value)


def _image(fmt: str, **kw) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((24, 32, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _clip(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 12), (40 * k, 20, 200 - 40 * k)) for k in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _nifti(gz: bool) -> bytes:
    data = np.arange(8 * 9 * 6, dtype=np.int16).reshape(8, 9, 6)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    return gzip.compress(raw) if gz else raw


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((8, 2500)).astype(np.float32))
    return buf.getvalue()


def _csv() -> bytes:
    sig = np.random.default_rng(0).standard_normal((1000, 12))
    rows = [",".join(STANDARD_LEADS)] + [",".join(f"{v:.3f}" for v in row) for row in sig]
    return ("\n".join(rows) + "\n").encode()


SEEDS = {
    "png": (".png", lambda: _image("PNG")),
    "jpeg": (".jpg", lambda: _image("JPEG")),
    "tiff": (".tif", lambda: _image("TIFF")),
    "bmp": (".bmp", lambda: _image("BMP")),
    "webp": (".webp", lambda: _image("WEBP")),
    "dicom": (".dcm", lambda: Path(get_testdata_file("CT_small.dcm")).read_bytes()),
    "gif-clip": (".gif", lambda: _clip("GIF")),
    "tiff-clip": (".tif", lambda: _clip("TIFF")),
    "nifti": (".nii", lambda: _nifti(False)),
    "nifti-gz": (".nii.gz", lambda: _nifti(True)),
    "dicom-ecg": (".dcm", lambda: Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()),
    "npy": (".npy", _npy),
    "csv": (".csv", _csv),
}
_SEED_BYTES: dict[str, bytes] = {}


def seed_bytes(name: str) -> bytes:
    if name not in _SEED_BYTES:
        _SEED_BYTES[name] = SEEDS[name][1]()
    return _SEED_BYTES[name]


def _read(name: str, path: Path):
    """The reader(s) training and inference use for this kind of file."""
    if name in ("png", "jpeg", "tiff", "bmp", "webp"):
        load_image(path)
        return load_mask(path)
    if name == "dicom":
        return load_image(path)
    if name in ("gif-clip", "tiff-clip", "nifti", "nifti-gz"):
        return load_volume(path, num_slices=2)
    if name == "dicom-ecg":
        return load_ecg(path)
    if name == "npy":
        load_ecg(path)
        return read_ecg(path, fs=250)
    if name == "csv":
        return read_ecg(path, ECGSpec(seconds=2.0), fs=500, pad=True)
    raise AssertionError(name)


@st.composite
def mutated(draw, raw: bytes) -> bytes:
    """``raw`` with 1-8 edits: overwrite, insert or delete bytes (two thirds of them in the first 512 bytes),
    truncate; or, now and then, random bytes of the same length."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=min(len(raw), 4096)))
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        span = min(len(data), 512) if draw(st.booleans()) or draw(st.booleans()) else len(data)
        at = draw(st.integers(0, span - 1))
        op = draw(st.sampled_from(["set", "set", "insert", "delete", "truncate", "number"]))
        if op == "set":
            data[at:at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[max(at, 1):]
        else:  # a size or count field set to an extreme value
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f",
                                                    b"\x00\x00\x00\x80", b"9999"]))
    return bytes(data) or b"\x00"


def _check(name: str, raw: bytes, folder: Path) -> None:
    path = folder / ("input" + SEEDS[name][0])
    path.write_bytes(raw)
    try:
        _read(name, path)
    except DataError:
        pass


def _fuzz(name: str):
    @settings(max_examples=int(os.environ.get("QOQMED_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True,
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def run(tmp_path, data):
        _check(name, data.draw(mutated(seed_bytes(name)), label="file bytes"), tmp_path)
    return run


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_files_are_read(name, tmp_path):
    """The unmutated seeds are valid: the property is tested around files the readers accept."""
    path = tmp_path / ("input" + SEEDS[name][0])
    path.write_bytes(seed_bytes(name))
    assert _read(name, path) is not None


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_give_data_error_or_a_result(name, tmp_path):
    _fuzz(name)(tmp_path)


@settings(max_examples=int(os.environ.get("QOQMED_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(header=st.text(alphabet=st.characters(codec="latin-1"), max_size=400), dat=st.binary(max_size=2000),
       valid_first=st.booleans())
def test_mutated_wfdb_records_give_data_error_or_a_result(tmp_path, header, dat, valid_first):
    """WFDB: a header of random text (or a valid record line followed by it) with a random signal file."""
    if valid_first:
        header = "rec 2 500 500\nrec.dat 16 200/mV 16 0 0 0 0 I\nrec.dat 16 200/mV 16 0 0 0 0 II\n" + header
    (tmp_path / "rec.hea").write_text(header or "\n", encoding="latin-1")
    (tmp_path / "rec.dat").write_bytes(dat)
    try:
        read_ecg(tmp_path / "rec.hea", ECGSpec(seconds=1.0, leads=("I", "II")), pad=True)
    except DataError:
        pass
