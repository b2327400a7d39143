"""DICOM images through load_image, on real sample files shipped in pydicom's wheel."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from PIL import Image

from qoqmed.data import DataError, is_dicom, load_dicom_image, load_image
from qoqmed.data.dicom import apply_window


def _sample(name):
    path = get_testdata_file(name)
    assert path is not None, f"pydicom sample {name} is not installed"
    return path


def test_ct_small_is_read_in_hounsfield_units_and_keeps_its_size():
    path = _sample("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (ds.Columns, ds.Rows) == (128, 128)
    # Without a stored window the HU range of the image spans 0..255.
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    out = np.asarray(img)[..., 0].astype(np.float64)
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(hu.ravel(), out.ravel())[0, 1] > 0.999
    # A soft-tissue window in HU: values below center - width/2 are black, above are white.
    soft = np.asarray(load_dicom_image(path, window=(40, 400)))[..., 0]
    assert (soft[hu < 40 - 200] == 0).all() and (soft[hu > 40 + 200] == 255).all()
    np.testing.assert_array_equal(soft, apply_window(hu, 40, 400))


def test_mr_small_uses_its_stored_window():
    path = _sample("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    out = np.asarray(load_image(path))[..., 0]
    raw = ds.pixel_array.astype(np.float64)
    expected = np.clip(np.rint(((raw - (center - 0.5)) / (width - 1) + 0.5) * 255), 0, 255)
    np.testing.assert_array_equal(out, expected)


def test_compressed_and_big_endian_variants_decode_to_the_same_image():
    reference = np.asarray(load_image(_sample("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(np.asarray(load_image(_sample(name))), reference, err_msg=name)


def test_monochrome1_is_inverted(tmp_path):
    # pydicom ships no MONOCHROME1 sample: take CT_small's real pixels and mark them MONOCHROME1.
    ds = pydicom.dcmread(_sample("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    normal = np.asarray(load_image(_sample("CT_small.dcm")))
    inverted = np.asarray(load_image(tmp_path / "mono1.dcm"))
    np.testing.assert_array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("name, first_pixel", [
    ("SC_rgb_rle.dcm", (255, 0, 0)),                    # RGB, RLE compressed
    ("SC_ybr_full_422_uncompressed.dcm", (254, 0, 0)),  # YBR_FULL_422 -> RGB
    ("SC_rgb_rle_16bit.dcm", (255, 0, 0)),              # 16 bits per sample -> 8
])
def test_colour_photometric_interpretations_become_rgb(name, first_pixel):
    img = load_image(_sample(name))
    assert img.mode == "RGB" and img.size == (100, 100)
    assert tuple(int(v) for v in np.asarray(img)[0, 0]) == first_pixel


def test_palette_colour_is_looked_up():
    path = _sample("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.size == (ds.Columns, ds.Rows) == (800, 350)
    arr = np.asarray(img)
    # A palette image has real colours: the channels differ somewhere.
    assert (arr[..., 0] != arr[..., 2]).any()


def test_multiframe_needs_a_frame_or_the_volume_reader():
    path = _sample("examples_ybr_color.dcm")
    with pytest.raises(DataError, match=r"holds 30 frames; read it as a volume"):
        load_image(path)
    frame = load_dicom_image(path, frame=29)
    assert frame.size == (320, 240) and frame.mode == "RGB"
    with pytest.raises(DataError, match="frame 30 out of range"):
        load_dicom_image(path, frame=30)


def test_dicom_is_recognised_by_magic_without_suffix(tmp_path):
    target = tmp_path / "IM000001"
    shutil.copy(_sample("CT_small.dcm"), target)
    assert is_dicom(target)
    np.testing.assert_array_equal(np.asarray(load_image(target)), np.asarray(load_image(_sample("CT_small.dcm"))))
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert not is_dicom(tmp_path / "plain.png")


def test_broken_dicom_files_raise_data_error_naming_the_file(tmp_path):
    data = open(_sample("CT_small.dcm"), "rb").read()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.dcm: cannot (decode DICOM pixel data|read DICOM)"):
        load_image(tmp_path / "truncated.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DataError, match=r"junk\.dcm: cannot read DICOM image file"):
        load_image(tmp_path / "junk.dcm")
    with pytest.raises(DataError, match=r"no pixel data"):
        load_image(_sample("waveform_ecg.dcm"))
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.dcm: image file is empty"):
        load_image(tmp_path / "empty.dcm")
