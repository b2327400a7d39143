"""Rows in the released QoQ-Med data layout, read as they are: modality folders, user domains, .pt and .csv ECGs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from qoqmed.data import DataError, load_ecg, load_records, parse_record
from qoqmed.data.domains import DOMAINS, canonical_domain
from qoqmed.data.prompts import load_record
from qoqmed.data.stats import record_stats
from qoqmed.data.validate import validate_records


def _ecg_tensor(seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.3, (8, 2500)).astype(np.float32))


@pytest.fixture
def released(tmp_path):
    """A folder laid out as the released data is: <modality>/<dataset>/... with .pt ECG tensors."""
    for rel in ("derm/HAM10000/a.png", "MAMMO/CBIS/b.png", "oct/retina_set/c.png", "CT/lndb/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(tmp_path / rel)
    (tmp_path / "ecg" / "ptbxl").mkdir(parents=True)
    torch.save(_ecg_tensor(), tmp_path / "ecg" / "ptbxl" / "1.pt")
    rows = [
        {"problem": "<image>What is the lesion? Options: nevus, melanoma.", "answer": "nevus",
         "images": ["derm/HAM10000/a.png"], "bbox": [0, 0, 0, 0]},
        {"problem": "<image>BI-RADS?", "answer": "BI-RADS 2", "images": ["MAMMO/CBIS/b.png"]},
        {"problem": "<image>Which?", "answer": "drusen", "images": ["oct/retina_set/c.png"]},
        {"problem": "<image>Nodule?", "answer": "yes", "images": ["CT/lndb/d.png"]},
        {"problem": "What does the ECG show?", "answer": "Normal", "images": [], "time-series": ["ecg/ptbxl/1.pt"],
         "dataset": "ptbxl"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_canonical_domain_names():
    assert [canonical_domain(n) for n in ("derm", "DERM", "Mammo", "xray", "MR", "ct", "ECG")] == [
        "dermoscopy", "dermoscopy", "mammography", "chest_xray", "mri", "ct", "ecg"]
    assert canonical_domain("OCT") == "oct" and canonical_domain("dental") == "dental"
    assert canonical_domain("a b") is None and canonical_domain("x/y") is None and canonical_domain("") is None
    assert canonical_domain("_x") is None and canonical_domain("x" * 65) is None


def test_released_layout_validates_and_loads_as_it_is(released):
    result = validate_records(released)
    assert result.ok, [str(p) for p in result.problems]
    records = load_records(released)
    assert [r.domain for r in records] == ["dermoscopy", "mammography", "oct", "ct", "ecg"]
    assert [r.dataset for r in records] == ["derm/HAM10000", "MAMMO/CBIS", "oct/retina_set", "CT/lndb", "ptbxl"]
    ecg = load_record(records[4]).ecgs[0]
    assert ecg.dtype == np.float32 and np.array_equal(ecg, _ecg_tensor().numpy())
    stats = record_stats(records)
    assert stats["user_domains"] == ["oct"] and "oct" in stats["domains"]
    assert "oct" not in DOMAINS


def test_validate_reports_file_problems_of_a_row_with_schema_problems(tmp_path):
    (tmp_path / "a b" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a b" / "x" / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    row = {"id": "r1", "problem": "<image><image><image>q", "answer": "A",
           "images": ["a b/x/ok.png", "a b/x/missing.png", "../outside.png"], "segmentation_path": "broken.png"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    for read_files in (True, False):
        problems = validate_records(path, read_files=read_files).problems
        fields = {p.field: p for p in problems}
        assert "not a domain name" in fields["domain"].reason
        assert "leaves the dataset folder" in fields["images[2]"].reason
        assert fields["images[1]"].file.endswith("missing.png") and "not found" in fields["images[1]"].reason
        assert "images[0]" not in fields
        if read_files:  # read with the same readers as valid rows
            assert fields["segmentation_path"].file.endswith("broken.png")
            assert "cannot read mask" in fields["segmentation_path"].reason


# ----------------------------------------------------------------------------------------------------------------
# .pt ECG tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_pt_ecg_tensors_are_read(tmp_path, dtype):
    t = _ecg_tensor().to(dtype)
    torch.save(t, tmp_path / "e.pt")
    out = load_ecg(tmp_path / "e.pt")
    assert out.shape == (8, 2500) and out.dtype == np.float32
    assert np.array_equal(out, t.to(torch.float32).numpy())


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize("make, reason", [
    (lambda: torch.zeros(12, 5000), "shape (12, 5000)"),
    (lambda: torch.zeros(2500, 8), "transposed"),
    (lambda: {"ecg": torch.zeros(8, 2500)}, "expected one tensor, got dict"),
    (lambda: torch.zeros(8, 2500, dtype=torch.int16), "floating-point"),
    (lambda: torch.full((8, 2500), float("nan")), "non-finite"),
    (lambda: torch.zeros(8, 2500).to_sparse(), "dense"),
])
def test_bad_pt_ecgs_name_the_file_and_reason(tmp_path, make, reason):
    torch.save(make(), tmp_path / "bad.pt")
    with pytest.raises(DataError) as info:
        load_ecg(tmp_path / "bad.pt")
    assert str(info.value).startswith(str(tmp_path / "bad.pt")) and reason in str(info.value)


def test_pt_ecg_is_never_unpickled_beyond_tensors(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump(_Payload(), fh)
    with pytest.raises(DataError, match="weights_only=True"):
        load_ecg(tmp_path / "evil.pt")
    assert "unpickled" not in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="cannot read ECG tensor"):
        load_ecg(tmp_path / "junk.pt")


def test_pt_ecg_size_limit(tmp_path, monkeypatch):
    torch.save(_ecg_tensor(), tmp_path / "e.pt")
    monkeypatch.setenv("QOQMED_MAX_ARRAY_VALUES", "1000")
    with pytest.raises(DataError, match="QOQMED_MAX_ARRAY_VALUES"):
        load_ecg(tmp_path / "e.pt")


# ----------------------------------------------------------------------------------------------------------------
# .csv ECGs in rows


def _csv(path, fs=500, seconds=10):
    t = np.arange(int(fs * seconds)) / fs
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    data = np.stack([np.sin(2 * np.pi * (k + 1) * t) for k in range(12)], axis=1)
    np.savetxt(path, data, delimiter=",", header=",".join(leads), comments="", fmt="%.6f")


def test_csv_ecg_rows_with_a_rate(tmp_path):
    _csv(tmp_path / "e.csv")
    row = {"id": "r", "domain": "ecg", "dataset": "d", "problem": "q", "answer": "A",
           "ecg": [{"path": "e.csv", "fs": 500}]}
    rec = parse_record(row, tmp_path)
    assert rec.ecg == ["e.csv"] and rec.ecg_formats[0].fs == 500.0
    ecg = load_record(rec).ecgs[0]
    assert ecg.shape == (8, 2500)
    # lead II at 250 Hz is sin(2 pi 2 t): the reader picked the lead by name and resampled
    t = np.arange(2500) / 250
    assert np.abs(ecg[1, 100:-100] - np.sin(2 * np.pi * 2 * t)[100:-100]).max() < 0.01
    assert rec.to_dict()["ecg"] == [{"path": "e.csv", "fs": 500.0}]
    assert parse_record(rec.to_dict(), tmp_path).ecg_formats == rec.ecg_formats
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert validate_records(path).ok


@pytest.mark.parametrize("entry, field, reason", [
    ("e.csv", "ecg[0]", "stores no sampling rate"),
    ({"path": "e.csv"}, "ecg[0].fs", "missing"),
    ({"path": "e.csv", "fs": 5}, "ecg[0].fs", "within 50..10000"),
    ({"path": "e.csv", "fs": 500, "leads": "I"}, "ecg[0].leads", "list of lead names"),
    ({"path": "e.csv", "fs": 500, "rate": 1}, "ecg[0]", "unknown key(s) rate"),
    ({"path": "e.pt", "fs": 500}, "ecg[0].fs", "read as it is"),
    ({"path": "e.hea", "fs": 500}, "ecg[0].fs", "read from the file"),
])
def test_ecg_entry_problems(tmp_path, entry, field, reason):
    row = {"id": "r", "domain": "ecg", "dataset": "d", "problem": "q", "answer": "A", "ecg": [entry]}
    with pytest.raises(DataError) as info:
        parse_record(row, tmp_path)
    assert any(f": {field}: " in p and reason in p for p in info.value.problems), info.value.problems


def test_csv_ecg_rate_mismatch_is_reported_by_validate(tmp_path):
    _csv(tmp_path / "short.csv", fs=500, seconds=4)
    row = {"id": "r", "domain": "ecg", "dataset": "d", "problem": "q", "answer": "A",
           "ecg": [{"path": "short.csv", "fs": 500}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    problems = validate_records(path).problems
    assert len(problems) == 1 and problems[0].field == "ecg[0]" and "shorter than the 10 s window" in problems[0].reason


def test_released_layout_with_user_domains_validates_and_trains(released, tmp_path):
    """Rows under oct/ and dental/ folders (user domains), as they are, through validation and two DRPO steps."""
    from qoqmed.modeling.tiny import TinySpec, build_tiny
    from qoqmed.train.drpo_state import read_drpo_state
    from qoqmed.train.rl import train_rl
    from qoqmed.train.settings import RLSettings

    (released.parent / "dental" / "panoramic").mkdir(parents=True)
    Image.fromarray(np.full((28, 28, 3), 140, np.uint8)).save(released.parent / "dental" / "panoramic" / "e.png")
    with released.open("a") as fh:
        fh.write(json.dumps({"problem": "<image>Caries? Options: yes, no.", "answer": "no",
                             "images": ["dental/panoramic/e.png"]}) + "\n")
    assert validate_records(released).ok
    records = load_records(released)
    assert {"oct", "dental"} <= {r.domain for r in records}
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records],
                                  TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32))
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    settings = RLSettings(estimator="drpo", num_generations=2, batch_size=12, max_steps=2, max_completion_length=8,
                          logging_steps=1, learning_rate=1e-2)
    logs = train_rl(tmp_path / "start", records, tmp_path / "rl", settings)
    assert len(logs["domains"]) == 2
    seen = read_drpo_state(tmp_path / "rl" / "model" / "drpo_state.npz")["seen"]
    assert {"oct", "dental", "dermoscopy", "mammography"} <= set(seen)
