import numpy as np
import pytest
from PIL import Image

from qoqmed.data import DataError, load_ecg, load_image, load_mask


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_load_image_formats_give_rgb(tmp_path, fmt, suffix):
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[..., 0] = 200
    path = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(path, format=fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert abs(int(np.asarray(img)[5, 5, 0]) - 200) <= 3


def test_load_image_grayscale_and_palette(tmp_path):
    Image.fromarray(np.full((8, 9), 77, np.uint8)).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [77, 77, 77]
    Image.fromarray(np.full((8, 9, 3), 50, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


def test_load_image_16bit_is_rescaled(tmp_path):
    arr = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "ct16.png")
    out = np.asarray(load_image(tmp_path / "ct16.png"))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_load_image_errors_name_file_and_reason(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png: image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: image file is empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"junk\.png: cannot read image: not a recognised image format"):
        load_image(tmp_path / "junk.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot read image"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_image(tmp_path / "dir.png")


def test_load_ecg_ok_and_dtype(tmp_path):
    arr = np.random.default_rng(0).normal(size=(8, 2500))
    np.save(tmp_path / "e.npy", arr)
    out = load_ecg(tmp_path / "e.npy")
    assert out.dtype == np.float32 and out.shape == (8, 2500) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, arr.astype(np.float32))
    np.save(tmp_path / "i.npy", np.ones((12, 5000), np.int16))
    assert load_ecg(tmp_path / "i.npy", leads=12, samples=5000).dtype == np.float32


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((8, 2000), np.float32), r"shape \(8, 2000\) != expected \(8, 2500\)"),
        (np.zeros((2500, 8), np.float32), "transposed"),
        (np.zeros((8, 2500, 1), np.float32), r"shape \(8, 2500, 1\)"),
        (np.full((8, 2500), np.nan, np.float32), "20000 non-finite"),
        (np.full((8, 2500), 1e300), "20000 value.s. too large for float32"),
        (np.zeros((8, 2500), np.complex64), "real numbers"),
        (np.zeros((8, 2500), bool), "real numbers"),
    ],
)
def test_load_ecg_rejects_bad_arrays(tmp_path, arr, match):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match=match) as info:
        load_ecg(tmp_path / "bad.npy")
    assert "bad.npy" in str(info.value)


def test_load_ecg_file_errors(tmp_path):
    with pytest.raises(DataError, match="ECG file not found"):
        load_ecg(tmp_path / "none.npy")
    (tmp_path / "e.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="unsupported ECG file type '.csv'"):
        load_ecg(tmp_path / "e.csv")
    (tmp_path / "junk.npy").write_bytes(b"garbage bytes")
    with pytest.raises(DataError, match=r"junk\.npy: cannot read ECG array"):
        load_ecg(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: cannot read ECG array"):
        load_ecg(tmp_path / "obj.npy")


def test_load_mask(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 10:20] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.shape == (20, 30) and out.sum() == 40
    assert load_mask(tmp_path / "m.png", size=(30, 20)).sum() == 40
    with pytest.raises(DataError, match=r"mask size \(30, 20\) does not match its image size \(20, 30\)"):
        load_mask(tmp_path / "m.png", size=(20, 30))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2, 1] = 9
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").nonzero() == (np.array([1]), np.array([2]))
    with pytest.raises(DataError, match="mask file not found"):
        load_mask(tmp_path / "nope.png")


def test_only_allowed_image_formats_are_decoded(tmp_path):
    from qoqmed.data.volumes import load_volume

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    for name in ("eps.png", "eps.tif", "eps.gif"):
        (tmp_path / name).write_bytes(eps)
    with Image.open(tmp_path / "eps.png") as img:  # Pillow on its own would pick the EPS plugin
        assert img.format == "EPS"
    with pytest.raises(DataError, match=r"eps\.png: cannot read image: not a recognised image format \(accepted"):
        load_image(tmp_path / "eps.png")
    with pytest.raises(DataError, match=r"eps\.png: cannot read mask: not a recognised image format"):
        load_mask(tmp_path / "eps.png", (10, 10))
    for name in ("eps.tif", "eps.gif"):
        with pytest.raises(DataError, match=rf"{name}: cannot read frames: not a recognised image format"):
            load_volume(tmp_path / name)
    # every allowed format still decodes
    for fmt, suffix in [("BMP", ".bmp"), ("GIF", ".gif"), ("WEBP", ".webp")]:
        Image.fromarray(np.full((6, 7, 3), 90, np.uint8)).save(tmp_path / f"ok{suffix}", format=fmt)
        assert load_image(tmp_path / f"ok{suffix}").size == (7, 6)
