"""MIMIC-IV fusion conversion on small files in PhysioNet's layouts: labels, links, windows and errors."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimic_layout import CASES, write_mimic
from qoqmed.cli import app
from qoqmed.data import DataError, load_records
from qoqmed.data.converters import write_splits
from qoqmed.data.mimic import MIMIC_TASKS, convert_mimic_iv
from qoqmed.data.prompts import load_record
from qoqmed.data.validate import validate_records


@pytest.fixture
def roots(tmp_path):
    return write_mimic(tmp_path)


def _convert(roots, **kw):
    return convert_mimic_iv(roots["mimic_iv"], roots["ecg"], roots["cxr"], notes_root=roots["notes"], **kw)


def _by_id(conversion):
    return {r.id: r for records in conversion.splits.values() for r in records}


def test_labels_links_and_skips_follow_the_rules(roots):
    conversion = _convert(roots)
    got = _by_id(conversion)
    expected = {f"mimic_iv-{hadm}-{task}": labels[task] for hadm, (*_, labels) in CASES.items()
                if isinstance(labels, dict) for task in MIMIC_TASKS}
    assert {rid: r.answer for rid, r in got.items()} == expected
    reasons = {hadm: labels for hadm, (*_, labels) in CASES.items() if isinstance(labels, str)}
    assert sorted(conversion.skipped) == sorted(f"admission {h}: {why}" for h, why in reasons.items())
    for rid, record in got.items():
        hadm = int(rid.split("-")[1])
        n = list(CASES).index(hadm)
        subject = CASES[hadm][0]
        assert record.domain == "multimodal" and record.dataset == f"mimic_iv/{rid.split('-')[2]}"
        assert record.ecg == [f"ecg/files/p{str(subject)[:4]}/p{subject}/s{40000000 + n}/{40000000 + n}.hea"]
        assert record.images == [f"cxr/files/p{str(subject)[:2]}/p{subject}/s{50000000 + n}/d{n:04d}-cxr.jpg"]
        assert record.problem.startswith("<image><ecg>\n") and record.problem.endswith(record.extra["ehr"])
    # both admissions of subject 10000001 land in one split
    assert got["mimic_iv-20000001-los_7d"].split == got["mimic_iv-20000007-los_7d"].split


def test_text_holds_only_what_is_known_at_the_prediction_time(roots):
    got = _by_id(_convert(roots))
    first, later = got["mimic_iv-20000001-los_7d"].extra["ehr"], got["mimic_iv-20000007-los_7d"].extra["ehr"]
    assert first.startswith("61-year-old female; ew emer. admission from emergency room.")
    assert "Creatinine 1 mg/dL" in first and "Potassium" not in first  # potassium is charted at 30 h
    assert "ICU transfer +3.0 h after admission (MICU)" in first
    assert "report 0 of the chest radiograph" in first  # stored at 6 h
    assert "Radiology report" not in later  # its report is stored at 24.5 h, after the window
    # diagnoses are coded at discharge: only the earlier admission's appear, never the current one's
    assert "Earlier diagnoses" not in first and "Earlier diagnoses: Essential (primary) hypertension." in later


def test_window_options_change_which_inputs_count(roots):
    got = _by_id(_convert(roots, window_hours=4))
    assert "mimic_iv-20000001-los_7d" not in got  # its X-ray is taken at 5 h
    assert "mimic_iv-20000002-los_7d" in got
    got = _by_id(_convert(roots, lookback_hours=0, window_hours=24, tasks=["mortality_48h"]))
    assert all(rid.endswith("mortality_48h") for rid in got)
    for bad in (dict(window_hours=48), dict(window_hours=0), dict(lookback_hours=-1), dict(tasks=["los"])):
        with pytest.raises(ValueError):
            _convert(roots, **bad)


def test_converted_rows_validate_and_load(roots, tmp_path):
    written = write_splits(_convert(roots, val=0, test=0), tmp_path)
    result = validate_records(written["train"])
    assert result.ok, [str(p) for p in result.problems]
    loaded = load_record(load_records(written["train"])[0])
    assert loaded.ecgs[0].shape == (8, 2500) and loaded.images[0].size == (64, 64)


def test_a_missing_file_is_named_or_skipped_with_it(roots):
    jpg = roots["cxr"] / "files" / "p10" / "p10000002" / "s50000001" / "d0001-cxr.jpg"
    jpg.unlink()
    with pytest.raises(DataError, match="d0001-cxr.jpg"):
        _convert(roots)
    conversion = _convert(roots, skip_missing=True)
    assert any(str(jpg) in line for line in conversion.skipped)
    assert not any("20000002" in rid for rid in _by_id(conversion))
    (roots["ecg"] / "files" / "p1000" / "p10000001" / "s40000000" / "40000000.dat").unlink()
    with pytest.raises(DataError, match=r"40000000\.dat"):
        _convert(roots, skip_missing=False)


def test_missing_tables_and_columns_are_named(roots):
    hosp = roots["mimic_iv"] / "hosp"
    (hosp / "patients.csv.gz").rename(hosp / "patients.csv.bak")
    with pytest.raises(DataError, match=r"patients\.csv\.gz: file not found"):
        _convert(roots)
    pd.read_csv(hosp / "patients.csv.bak", compression="gzip").to_csv(hosp / "patients.csv", index=False)
    assert _by_id(_convert(roots))  # plain CSV is read too
    frame = pd.read_csv(hosp / "admissions.csv.gz").drop(columns=["deathtime"])
    with gzip.open(hosp / "admissions.csv.gz", "wt") as fh:
        frame.to_csv(fh, index=False)
    with pytest.raises(DataError, match=r"admissions\.csv\.gz: missing column\(s\) deathtime"):
        _convert(roots)


def test_cli_converts_and_reports_skips(roots, tmp_path):
    out = tmp_path  # the folder holding ecg/ and cxr/: paths stay inside it
    result = CliRunner().invoke(app, [
        "data", "convert", "mimic-iv", "--mimic-iv", str(roots["mimic_iv"]), "--ecg", str(roots["ecg"]), "--cxr",
        str(roots["cxr"]), "--notes", str(roots["notes"]), "--out", str(out), "--val", "0", "--test", "0"])
    assert result.exit_code == 0, result.output
    assert "3 skipped" in result.output and "no ECG in the window" in result.output
    records = load_records(out / "train.jsonl")
    assert len(records) == 8 and {r.answer for r in records} == {"Yes", "No"}
    assert np.isclose(sum(r.answer == "Yes" for r in records), 2)
