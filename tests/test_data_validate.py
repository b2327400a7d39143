"""`qoqmed data validate` on real sample files and on a folder of deliberately broken files."""

import gzip
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file
from PIL import Image
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.validate import validate_records
from test_data_volumes import write_series

runner = CliRunner()
Q = "Which? Options: A, B."


def _row(rid, domain="ct", **fields):
    return {"id": rid, "domain": domain, "dataset": f"test/{domain}", "problem": Q, "answer": "A", **fields}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A jsonl whose rows each point at one broken file, plus good rows on real samples; returns (path, bad)."""
    root = tmp_path_factory.mktemp("broken")
    f = root / "files"
    f.mkdir()
    # good files: real samples
    shutil.copy(get_testdata_file("CT_small.dcm"), f / "ct.dcm")
    shutil.copy(os.path.join(NIB_DATA, "anatomical.nii"), f / "brain.nii")
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), f / "ecg.dcm")
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(f / "ok.png")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(f / "mask_ok.png")
    write_series(f / "series_ok")
    # broken files
    data = (f / "ct.dcm").read_bytes()
    (f / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    arr = np.ones((6, 6, 5), np.float32)
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), f / "nan.nii.gz")
    np.save(f / "wrong_shape.npy", np.zeros((12, 5000), np.float32))
    (f / "empty.png").write_bytes(b"")
    (f / "scan.xyz").write_text("what is this")
    png = (f / "ok.png").read_bytes()
    (f / "corrupt.png").write_bytes(png[:40] + b"\x00" * 20 + png[60:])
    write_series(f / "mixed", order=(0, 1, 2))
    write_series(f / "other", order=(3, 4))
    for p in (f / "other").iterdir():
        p.rename(f / "mixed" / ("B" + p.name))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(f / "mask_small.png")
    gz = gzip.compress((f / "brain.nii").read_bytes())
    (f / "cut.nii.gz").write_bytes(gz[: len(gz) // 3])
    (f / "short.npy").write_bytes(b"\x93NUMPY garbage")

    good = [
        _row("good-dicom", images=["files/ct.dcm"], boxes=[{"bbox_2d": [10, 10, 40, 40], "label": "A"}]),
        _row("good-nifti", domain="mri", volumes=["files/brain.nii"]),
        _row("good-series", volumes=[{"path": "files/series_ok", "slices": 4, "window": "lung"}]),
        _row("good-ecg", domain="ecg", ecg=["files/ecg.dcm"]),
        _row("good-mask", domain="chest_xray", images=["files/ok.png"], segmentation_path="files/mask_ok.png"),
    ]
    # (row, the file it should name, a piece of the reason)
    bad = [
        (_row("truncated-dicom", images=["files/truncated.dcm"]), "truncated.dcm", "DICOM"),
        (_row("nan-nifti", domain="mri", volumes=["files/nan.nii.gz"]), "nan.nii.gz", "non-finite"),
        (_row("wrong-ecg", domain="ecg", ecg=["files/wrong_shape.npy"]), "wrong_shape.npy", "shape (12, 5000)"),
        (_row("empty", domain="dermoscopy", images=["files/empty.png"]), "empty.png", "empty (0 bytes)"),
        (_row("unsupported", volumes=["files/scan.xyz"]), "scan.xyz", "unsupported volume type"),
        (_row("missing", domain="fundus", images=["files/nothere.png"]), "nothere.png", "not found"),
        (_row("corrupt-png", domain="fundus", images=["files/corrupt.png"]), "corrupt.png", "cannot read image"),
        (_row("mixed-series", volumes=["files/mixed"]), "mixed", "mixes 2 DICOM series"),
        (_row("mask-size", domain="chest_xray", images=["files/ok.png"], segmentation_path="files/mask_small.png"),
         "mask_small.png", "does not match its image size"),
        (_row("box-outside", domain="chest_xray", images=["files/ok.png"],
              boxes=[{"bbox_2d": [10, 10, 60, 30], "label": "A"}]), "ok.png", "outside the 50x40 image"),
        (_row("too-few-slices", volumes=[{"path": "files/series_ok", "slices": 10}]), "series_ok",
         "fewer than the 10 requested"),
        (_row("cut-nifti", domain="mri", volumes=["files/cut.nii.gz"]), "cut.nii.gz", "cannot read NIfTI"),
        (_row("bad-npy", domain="ecg", ecg=["files/short.npy"]), "short.npy", "cannot read ECG"),
    ]
    rows = good[:2] + [b[0] for b in bad[:6]] + good[2:] + [b[0] for b in bad[6:]]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "schema-bad", "problem": "x"}\n')
    return path, bad


def test_validate_reports_every_broken_file(broken):
    path, bad = broken
    result = validate_records(path)
    by_id = {}
    for p in result.problems:
        by_id.setdefault(p.record_id, []).append(p)
    for row, name, reason in bad:
        problems = by_id.pop(row["id"], [])
        assert len(problems) == 1, (row["id"], [str(p) for p in problems])
        assert problems[0].file.endswith(name) and reason in problems[0].reason, str(problems[0])
    # the schema error of the last row (no answer, no domain) is reported too, and nothing about the good rows
    assert set(by_id) == {"schema-bad"} and all(p.line == 19 and p.file is None for p in by_id["schema-bad"])
    assert {p.field for p in by_id["schema-bad"]} >= {"answer", "domain"}
    assert result.rows == 19 and result.valid_rows == 5


def test_validate_cli_lines_and_json(broken):
    path, bad = broken
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith(str(path))]
    for row, name, reason in bad:
        hits = [line for line in lines if name in line and reason in line]
        assert len(hits) == 1, (name, reason, lines)
        assert hits[0].startswith(f"{path}:")
    for good in ("ct.dcm", "brain.nii:", "ecg.dcm", "mask_ok.png"):
        assert not any(good in line for line in lines)
    as_json = runner.invoke(app, ["data", "validate", str(path), "--json"])
    payload = json.loads(as_json.output)
    assert as_json.exit_code == 1 and payload["ok"] is False
    assert len([p for p in payload["problems"] if p["file"]]) == len(bad)
    assert {"line", "id", "field", "file", "reason"} <= set(payload["problems"][0])


def test_validate_ok_on_real_samples(broken, tmp_path):
    path, _ = broken
    rows = [json.loads(line) for line in path.read_text().splitlines()[:2]]
    good = path.parent / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["data", "validate", str(good)])
    assert result.exit_code == 0 and "2 records" in result.output and "no problems" in result.output
    fast = runner.invoke(app, ["data", "validate", str(path), "--no-read-files"])
    assert fast.exit_code == 1 and "nothere.png: file not found" in fast.output
    assert "nan.nii.gz" not in fast.output  # existence only: the file is there


def test_paths_leaving_the_folder_are_problems_unless_allowed(tmp_path):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(outside)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(tmp_path / "data" / "ok.png")
    path = tmp_path / "data" / "rows.jsonl"
    rows = [_row("escape", images=["sub/../../outside.png"]), _row("inside", images=["ok.png"])]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    result = validate_records(path)
    assert [(p.line, p.field) for p in result.problems] == [(1, "images[0]")]
    assert "leaves the dataset folder" in result.problems[0].reason
    assert result.valid_rows == 1  # the good row is still checked and counted

    cli = runner.invoke(app, ["data", "validate", str(path)])
    assert cli.exit_code == 1 and "rows.jsonl:1: images[0]" in cli.output and "leaves the dataset folder" in cli.output
    allowed = runner.invoke(app, ["data", "validate", str(path), "--allow-outside-paths"])
    assert allowed.exit_code == 0, allowed.output
    assert validate_records(path, allow_outside=True).ok


def test_image_content_in_a_refused_format_is_a_problem(tmp_path):
    """PostScript named .png: Pillow alone would hand it to its EPS plugin; the readers refuse it by content."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    (tmp_path / "scan.png").write_bytes(eps)
    with Image.open(tmp_path / "scan.png") as img:  # what Pillow would do without an allow-list
        assert img.format == "EPS"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row("eps", images=["scan.png"])) + "\n")
    result = validate_records(path)
    assert [p.field for p in result.problems] == ["images[0]"]
    assert "not a recognised image format (accepted: PNG, JPEG" in result.problems[0].reason
