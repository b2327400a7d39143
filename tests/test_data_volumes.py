"""Volumes and videos: NIfTI and DICOM samples shipped in nibabel's and pydicom's wheels, series built from them."""

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from PIL import Image

from qoqmed.data import DataError, load_records
from qoqmed.data.prompts import load_record
from qoqmed.data.dicom import apply_window, load_dicom_image
from qoqmed.data.volumes import WINDOWS, load_volume, read_volume, sample_indices

ANATOMICAL = os.path.join(NIB_DATA, "anatomical.nii")
EXAMPLE4D = os.path.join(NIB_DATA, "example4d.nii.gz")


def write_series(folder, sample="CT_small.dcm", order=(3, 0, 5, 1, 4, 2), step=2.5, uid=None, positions=True):
    """A DICOM series of real pixels: slice k is the sample plus 10*k, at z0 + step*k, written in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    for n, k in enumerate(order):
        ds = pydicom.dcmread(get_testdata_file(sample))
        ds.PixelData = (ds.pixel_array + 10 * k).astype(ds.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        if positions:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + step * k]
        else:
            del ds.ImagePositionPatient
        ds.save_as(folder / f"IM{n:04d}.dcm")
    return folder


def test_sample_indices_are_bin_centres():
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(4, 4) == [0, 1, 2, 3]
    assert sample_indices(5, None) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="has 3 slice"):
        sample_indices(3, 4, "v")
    with pytest.raises(ValueError):
        sample_indices(3, 0)


def test_nifti_axial_slices_match_nibabel():
    frames = load_volume(ANATOMICAL, num_slices=4, window=(100, 2000), axis="axial")
    data = nib.as_closest_canonical(nib.load(ANATOMICAL)).get_fdata()
    assert len(frames) == 4 and all(f.mode == "RGB" for f in frames)
    for frame, z in zip(frames, sample_indices(data.shape[2], 4)):
        expected = apply_window(np.flipud(data[:, :, z].T), 100, 2000)  # rows: anterior at the top
        np.testing.assert_array_equal(np.asarray(frame)[..., 0], expected)


def test_nifti_axes_give_the_three_planes():
    shape = nib.as_closest_canonical(nib.load(ANATOMICAL)).shape  # (x, y, z)
    assert load_volume(ANATOMICAL, axis="axial")[0].size == (shape[0], shape[1])
    assert load_volume(ANATOMICAL, axis="coronal")[0].size == (shape[0], shape[2])
    assert load_volume(ANATOMICAL, axis="sagittal")[0].size == (shape[1], shape[2])
    with pytest.raises(ValueError, match="unknown axis"):
        load_volume(ANATOMICAL, axis="oblique")


def test_4d_nifti_needs_a_timepoint():
    with pytest.raises(DataError, match=r"example4d\.nii\.gz: NIfTI image is 4D"):
        load_volume(EXAMPLE4D)
    a = load_volume(EXAMPLE4D, timepoint=0, window=(0, 4000))
    b = load_volume(EXAMPLE4D, timepoint=1, window=(0, 4000))
    assert len(a) == 4 and any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_broken_nifti_files(tmp_path):
    arr = np.ones((8, 8, 6), np.float32)
    arr[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match=r"nan\.nii\.gz: NIfTI image has 1 non-finite voxel"):
        load_volume(tmp_path / "nan.nii.gz")
    data = gzip.compress(open(ANATOMICAL, "rb").read())
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: cannot read NIfTI file"):
        load_volume(tmp_path / "cut.nii.gz")


def test_dicom_series_is_sorted_by_position(tmp_path):
    folder = write_series(tmp_path / "series")
    volume = read_volume(folder)
    assert volume.shape == (6, 128, 128) and volume.units == "HU" and volume.world_axes == (2, 1, 0)
    assert volume.spacing[0] == pytest.approx(2.5)
    base = read_volume(write_series(tmp_path / "one", order=(0,)))
    # slice k was written with +10*k, so sorted slices step up by 10 HU
    np.testing.assert_allclose([float((s - base.data[0]).mean()) for s in volume.data], [0, 10, 20, 30, 40, 50])
    lung = load_volume(folder, num_slices=3, window="lung")
    for frame, k in zip(lung, sample_indices(6, 3)):
        np.testing.assert_array_equal(np.asarray(frame)[..., 0], apply_window(volume.data[k], *WINDOWS["lung"]))
    coronal = load_volume(folder, num_slices=4, axis="coronal")
    assert coronal[0].size == (128, 6)  # width: columns, height: the 6 slices


def test_dicom_series_falls_back_to_instance_number(tmp_path):
    volume = read_volume(write_series(tmp_path / "s", positions=False))
    assert [round(float(s.mean() - volume.data[0].mean())) for s in volume.data] == [0, 10, 20, 30, 40, 50]
    with pytest.raises(DataError, match="no patient orientation"):
        load_volume(tmp_path / "s", axis="axial")


def test_dicom_series_refuses_mixed_and_inconsistent_folders(tmp_path):
    mixed = write_series(tmp_path / "mixed", order=(0, 1, 2))
    write_series(tmp_path / "other", order=(3, 4))
    for f in (tmp_path / "other").iterdir():
        f.rename(mixed / ("B" + f.name))
    with pytest.raises(DataError, match=r"mixed: folder mixes 2 DICOM series"):
        read_volume(mixed)
    shapes = write_series(tmp_path / "shapes", order=(0, 1, 2), uid="1.2.3.4")
    write_series(tmp_path / "mr", sample="MR_small.dcm", order=(5,), uid="1.2.3.4")
    (tmp_path / "mr" / "IM0000.dcm").rename(shapes / "MR.dcm")
    with pytest.raises(DataError, match="inconsistent shapes"):
        read_volume(shapes)
    dup = write_series(tmp_path / "dup", order=(0, 1, 1))
    with pytest.raises(DataError, match="same position"):
        read_volume(dup)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    with pytest.raises(DataError, match=r"a\.txt: cannot read DICOM slice file"):
        read_volume(tmp_path / "junk")


def test_window_presets_are_for_ct(tmp_path):
    mr = write_series(tmp_path / "mr", sample="MR_small.dcm", order=(0, 1, 2, 3))
    with pytest.raises(DataError, match="Hounsfield units but the volume is MR"):
        load_volume(mr, window="brain")
    assert len(load_volume(mr, window=(600, 1600))) == 4
    with pytest.raises(ValueError, match="unknown window"):
        load_volume(mr, window="lungs")


def test_multiframe_dicom_and_ultrasound_cine():
    path = get_testdata_file("examples_ybr_color.dcm")  # a real 30-frame ultrasound clip
    frames = load_volume(path, num_slices=4)
    assert [f.size for f in frames] == [(320, 240)] * 4
    for frame, k in zip(frames, sample_indices(30, 4)):
        np.testing.assert_array_equal(np.asarray(frame), np.asarray(load_dicom_image(path, frame=k)))
    with pytest.raises(ValueError, match="grayscale"):
        load_volume(path, window="lung")
    dose = read_volume(get_testdata_file("rtdose.dcm"))  # 15-frame grayscale multi-frame
    assert dose.shape == (15, 10, 10) and not dose.color


def test_gif_and_mp4_clips(tmp_path):
    colours = [(i * 20, 255 - i * 20, 128) for i in range(12)]
    gif = [Image.new("RGB", (48, 32), c) for c in colours]
    gif[0].save(tmp_path / "clip.gif", save_all=True, append_images=gif[1:], duration=40)
    frames = load_volume(tmp_path / "clip.gif", num_slices=4)
    assert [f.size for f in frames] == [(48, 32)] * 4
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for c in colours:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), c, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = load_volume(tmp_path / "clip.mp4", num_slices=4)
    assert [f.size for f in frames] == [(64, 48)] * 4
    for frame, k in zip(frames, sample_indices(12, 4)):
        assert np.abs(np.asarray(frame).reshape(-1, 3).mean(0) - colours[k]).max() < 12
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    with pytest.raises(DataError, match=r"bad\.mp4: cannot decode video"):
        load_volume(tmp_path / "bad.mp4")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="volume file not found"):
        load_volume(tmp_path / "nope.nii")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(DataError, match="unsupported volume type '.xyz'"):
        load_volume(tmp_path / "x.xyz")


def test_record_volumes_expand_into_images(tmp_path):
    write_series(tmp_path / "ct" / "demo" / "s1")
    Image.new("RGB", (60, 40), (10, 20, 30)).save(tmp_path / "ct" / "demo" / "scout.png")
    rows = [
        {"id": "a", "problem": "Scout <image>, series <volume>. Which?", "answer": "Nodule",
         "images": ["ct/demo/scout.png"], "volumes": [{"path": "ct/demo/s1", "slices": 3, "window": "lung"}],
         "boxes": [{"bbox_2d": [6, 4, 30, 20], "label": "Nodule", "image": 0}]},
        # the reference/CLIMB layout: `videos` with a <video> placeholder
        {"id": "b", "problem": "<video>\nWhich?", "answer": "Normal", "videos": ["ct/demo/s1"]},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_records(tmp_path / "d.jsonl")
    assert a.domain == "ct" and a.dataset == "ct/demo" and a.volumes[0].slices == 3
    loaded = load_record(a)
    assert loaded.problem == "Scout <image>, series <image><image><image>. Which?"
    assert len(loaded.images) == 4 and loaded.image_index == [0]
    assert loaded.record_image(0).size == (60, 40) and loaded.images[1].size == (128, 128)
    loaded_b = load_record(b)
    assert b.volumes[0].path == "ct/demo/s1" and loaded_b.problem == "<image>" * 4 + "\nWhich?"
    assert a.to_dict()["volumes"] == [{"path": "ct/demo/s1", "slices": 3, "window": "lung"}]
    assert b.to_dict()["volumes"] == ["ct/demo/s1"]
