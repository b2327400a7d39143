"""Decoded-size limits: decided from each file's header, before decoding, with errors naming the file and limit."""

from __future__ import annotations

import io
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from qoqmed.data import DataError, load_ecg, load_image
from qoqmed.data.ecg import read_ecg
from qoqmed.data.limits import DecodeLimits, decode_limits
from qoqmed.data.volumes import load_volume


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` gray pixels and holds none: decoding it would have to fail, so a
    refusal that names the size shows the check ran on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _npy_header_only(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def test_defaults_fit_clinical_data():
    limits = DecodeLimits()
    assert limits.max_volume_voxels >= 512 * 512 * 600  # a CT of 600 slices
    assert limits.max_image_pixels >= 4096 * 5120  # a full-field digital mammogram
    assert limits.max_array_values >= 12 * 10 * 10_000  # 10 s of 12 leads at 10 kHz
    assert limits.max_frames < 100_000  # a 10^5-frame GIF does not fit


def test_image_pixels_are_limited_from_the_header(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header_only(8000, 8000))  # 64 Mpx, below Pillow's own bomb limit
    with pytest.raises(DataError, match=r"huge\.png: 64,000,000 pixels \(8000 x 8000 image\), over the limit of "
                                        r"50,000,000 \(set QOQMED_MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "huge.png")


def test_limits_are_set_with_environment_variables(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png").size == (100, 100)
    monkeypatch.setenv("QOQMED_MAX_IMAGE_PIXELS", "5_000")
    assert decode_limits().max_image_pixels == 5000
    with pytest.raises(DataError, match=r"small\.png: 10,000 pixels .* over the limit of 5,000"):
        load_image(tmp_path / "small.png")
    monkeypatch.setenv("QOQMED_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="QOQMED_MAX_IMAGE_PIXELS='lots': expected a whole number"):
        decode_limits()


def test_clip_frames_are_counted_before_each_is_decoded(tmp_path, monkeypatch):
    frames = [Image.fromarray(np.full((4, 4), 40 * k, np.uint8)) for k in range(5)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    assert len(load_volume(tmp_path / "clip.gif", num_slices=None)) == 5
    monkeypatch.setenv("QOQMED_MAX_FRAMES", "3")
    with pytest.raises(DataError, match=r"clip\.gif: 4 frames or more, over the limit of 3 \(set QOQMED_MAX_FRAMES"):
        load_volume(tmp_path / "clip.gif")
    monkeypatch.delenv("QOQMED_MAX_FRAMES")
    monkeypatch.setenv("QOQMED_MAX_VOLUME_VOXELS", "40")  # 4 x 4 pixels a frame: the third frame crosses it
    with pytest.raises(DataError, match=r"clip\.gif: 48 pixels or more over the frames, over the limit of 40"):
        load_volume(tmp_path / "clip.gif")


def test_nifti_voxels_are_limited_from_the_header(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    (tmp_path / "big.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)  # the voxels are not there
    with pytest.raises(DataError, match=r"big\.nii: 8,000,000,000 voxels \(shape \(2000, 2000, 2000\)\), over the "
                                        r"limit of 300,000,000 \(set QOQMED_MAX_VOLUME_VOXELS"):
        load_volume(tmp_path / "big.nii")


def test_npy_values_are_limited_from_the_header(tmp_path):
    (tmp_path / "e.npy").write_bytes(_npy_header_only((8, 10**10)))
    pattern = r"e\.npy: 80,000,000,000 values \(shape \(8, 10000000000\)\), over the limit of 16,000,000"
    with pytest.raises(DataError, match=pattern):
        read_ecg(tmp_path / "e.npy", fs=500)
    with pytest.raises(DataError, match=pattern):
        load_ecg(tmp_path / "e.npy")


def test_dicom_pixels_are_limited_from_the_header(tmp_path, monkeypatch):
    import pydicom
    from pydicom.data import get_testdata_file

    from qoqmed.data.volumes import load_volume

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # 128 x 128
    ds.save_as(tmp_path / "ct.dcm")
    assert load_image(tmp_path / "ct.dcm").size == (128, 128)
    monkeypatch.setenv("QOQMED_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(DataError, match=r"ct\.dcm: 16,384 pixels \(128 x 128 x 1 frame\(s\)\), over the limit of "
                                        r"10,000 \(set QOQMED_MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "ct.dcm")
    ds.NumberOfFrames = 100000  # a header claiming 1.6 G pixels of frames that are not there
    ds.save_as(tmp_path / "frames.dcm")
    with pytest.raises(DataError, match=r"frames\.dcm: 1,638,400,000 pixels .* QOQMED_MAX_VOLUME_VOXELS"):
        load_volume(tmp_path / "frames.dcm")


def test_limits_are_set_on_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qoqmed.cli import app

    monkeypatch.setenv("QOQMED_MAX_IMAGE_PIXELS", "50000000")  # restored after the test: the option sets it
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "domain": "fundus", "dataset": "t/fundus", "problem": "Q? Options: '
                                         'A, B.", "answer": "A", "images": ["small.png"]}\n')
    runner = CliRunner()
    assert runner.invoke(app, ["data", "validate", str(tmp_path / "rows.jsonl")]).exit_code == 0
    result = runner.invoke(app, ["--max-image-pixels", "5000", "data", "validate", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 1
    assert "small.png: 10,000 pixels (100 x 100 image), over the limit of 5,000" in " ".join(result.output.split())


def test_dicom_series_voxels_are_limited_from_the_slice_headers(tmp_path, monkeypatch):
    from test_data_volumes import write_series

    write_series(tmp_path / "series")  # 6 slices of 128 x 128
    assert len(load_volume(tmp_path / "series", num_slices=None)) == 6
    monkeypatch.setenv("QOQMED_MAX_VOLUME_VOXELS", "50000")
    with pytest.raises(DataError, match=r"series: 98,304 voxels \(6 slices of 128 x 128\), over the limit of 50,000"):
        load_volume(tmp_path / "series")
