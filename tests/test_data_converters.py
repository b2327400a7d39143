"""Converters (CLIMB rows, PTB-XL-style WFDB + CSV, folder per class) give rows that validate and load."""

import csv
import json
import shutil

import numpy as np
import pytest
import wfdb
from pydicom.data import get_testdata_file
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data import DataError, load_records
from qoqmed.data.converters import convert_climb, convert_folder, convert_ptbxl, write_splits
from qoqmed.data.ecg import STANDARD_LEADS, ECGSpec, read_ecg
from qoqmed.data.prompts import load_record
from qoqmed.data.validate import validate_records

runner = CliRunner()


def _check_outputs(written, outside=True):
    """Every written split validates with its files read, and every row loads. ``outside``: the output folder is
    not the source folder, so the rows point at files outside it and are refused unless that is allowed."""
    for path in written.values():
        if outside:
            refused = validate_records(path)
            assert refused.problems and all("leaves the dataset folder" in p.reason for p in refused.problems)
        result = validate_records(path, allow_outside=outside)
        assert result.ok, [str(p) for p in result.problems]
        for record in load_records(path, allow_outside=outside):
            loaded = load_record(record)
            assert len(loaded.images) == loaded.problem.count("<image>")
            assert len(loaded.ecgs) == record.problem.count("<ecg>")


def _crops(image, n, size=96, seed=0):
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    for _ in range(n):
        y, x = rng.integers(0, h - size), rng.integers(0, w - size)
        yield Image.fromarray(image[y:y + size, x:x + size])


def test_convert_climb_llava_rows(tmp_path):
    root = tmp_path / "climb"
    (root / "fundus" / "messidor").mkdir(parents=True)
    (root / "ct" / "lndb").mkdir(parents=True)
    (root / "ultrasound" / "covid_us").mkdir(parents=True)
    next(_crops(skdata.retina(), 1)).save(root / "fundus" / "messidor" / "0001.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "lndb" / "0001.dcm")
    clip = list(_crops(skdata.retina(), 6, size=64))
    clip[0].save(root / "ultrasound" / "covid_us" / "clip.gif", save_all=True, append_images=clip[1:])
    rows = [
        {"id": "f1", "images": ["fundus/messidor/0001.png"], "label": "Moderate DR",
         "conversations": [{"from": "human", "value": "<image>\nWhat is the DR grade?"},
                           {"from": "gpt", "value": "Moderate DR"}]},
        {"image": "ct/lndb/0001.dcm",  # LLaVA's single-image key, no id, answer taken from \boxed{}
         "conversations": [{"from": "human", "value": "<image>\nIs there a nodule?"},
                           {"from": "gpt", "value": "<think>...</think> \\boxed{Nodule}"}]},
        {"id": "u1", "videos": ["ultrasound/covid_us/clip.gif"], "label": ["COVID-19", "Pneumonia"],
         "conversations": [{"from": "human", "value": "<video>\nFindings?"}, {"from": "gpt", "value": "x"}]},
        {"id": "bad1", "images": ["fundus/messidor/0001.png"], "conversations": []},
        {"id": "bad2", "images": ["xray/none/1.png"], "label": "A",
         "conversations": [{"from": "human", "value": "<image> q"}]},
    ]
    ann = root / "climb_train.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    conv = convert_climb([ann])
    assert conv.counts == {"train": 3}
    assert len(conv.skipped) == 3 and any("bad1" in s or ":4:" in s for s in conv.skipped)
    f1, ct, us = conv.splits["train"]
    assert (f1.domain, f1.dataset, f1.answer) == ("fundus", "fundus/messidor", "Moderate DR")
    assert (ct.id, ct.domain, ct.answer) == ("climb_train-2", "ct", "Nodule")
    assert us.domain == "ultrasound" and us.answer == "COVID-19, Pneumonia" and us.volumes[0].slices == 4
    written = write_splits(conv, tmp_path / "out")
    _check_outputs(written)
    # a JSON array file with an explicit seeded split
    arr = root / "climb.json"
    arr.write_text(json.dumps([dict(rows[0], id=f"f{i}") for i in range(10)]))
    conv = convert_climb([arr], val=0.2, test=0.2, seed=1)
    assert conv.counts == {"train": 6, "val": 2, "test": 2}
    again = convert_climb([arr], val=0.2, test=0.2, seed=1)
    assert [r.id for r in again.splits["test"]] == [r.id for r in conv.splits["test"]]


def _ptbxl(tmp_path):
    """A PTB-XL-shaped folder: WFDB records of a real 12-lead ECG (pydicom's waveform_ecg.dcm) + tables."""
    root = tmp_path / "ptbxl"
    (root / "records500" / "00000").mkdir(parents=True)
    ecg = read_ecg(get_testdata_file("waveform_ecg.dcm"), ECGSpec(sampling_rate=500, seconds=10,
                                                                      leads=STANDARD_LEADS))
    table = [("1", "{'NORM': 100.0, 'SR': 0.0}", "1"), ("2", "{'IMI': 50.0, 'ABQRS': 0.0}", "9"),
             ("3", "{'AFIB': 100.0, 'ISC_': 80.0}", "10"), ("4", "{'SR': 0.0}", "2"), ("5", "{'NORM': 100.0}", "3"),
             ("6", "{'LVH': 100.0}", "4")]
    for ecg_id, _, _ in table:
        if ecg_id == "5":
            continue  # listed in the table but missing on disk
        wfdb.wrsamp(f"{int(ecg_id):05d}_hr", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS),
                    p_signal=ecg.data.T.astype(np.float64), fmt=["16"] * 12,
                    write_dir=str(root / "records500" / "00000"))
    with (root / "ptbxl_database.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr"])
        for ecg_id, codes, fold in table:
            w.writerow([ecg_id, "p", codes, fold, "", f"records500/00000/{int(ecg_id):05d}_hr"])
    with (root / "scp_statements.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "description", "diagnostic", "diagnostic_class", "rhythm"])
        w.writerows([["NORM", "normal ECG", "1", "NORM", ""], ["IMI", "inferior MI", "1", "MI", ""],
                     ["ISC_", "ischemic ST-T", "1", "STTC", ""], ["LVH", "LV hypertrophy", "1", "HYP", ""],
                     ["SR", "sinus rhythm", "", "", "1"], ["AFIB", "atrial fibrillation", "", "", "1"]])
    return root


def test_convert_ptbxl(tmp_path):
    root = _ptbxl(tmp_path)
    conv = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv")
    answers = {r.id: (split, r.answer) for split, rs in conv.splits.items() for r in rs}
    assert answers == {"ptbxl-1": ("train", "Normal"), "ptbxl-2": ("val", "Myocardial Infarction"),
                       "ptbxl-3": ("test", "A. Fib/Aflutter, ST/T change"), "ptbxl-6": ("train", "Hypertrophy")}
    assert any("ptbxl_database.csv:5" in s and "no code maps" in s for s in conv.skipped)
    assert any("header not found" in s and "00005_hr.hea" in s for s in conv.skipped)
    high = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv", min_likelihood=60)
    assert {r.id: r.answer for rs in high.splits.values() for r in rs}["ptbxl-3"] == "A. Fib/Aflutter, ST/T change"
    assert "ptbxl-2" not in {r.id for rs in high.splits.values() for r in rs}  # IMI at 50% dropped
    _check_outputs(write_splits(conv, tmp_path / "out"))
    ecg = load_record(conv.splits["train"][0]).ecgs[0]
    assert ecg.shape == (8, 2500) and np.abs(ecg).max() > 0.1


def test_convert_ptbxl_labels_other_diagnoses_other(tmp_path):
    root = _ptbxl(tmp_path)
    # two more rows in PTB-XL's layout, on record 1's files: a diagnosis of a superclass outside the mapped ones,
    # and one beside a rhythm statement
    with (root / "ptbxl_database.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows([["7", "p", "{'XDX': 100.0, 'SR': 0.0}", "1", "", "records500/00000/00001_hr"],
                                  ["8", "p", "{'XDX': 20.0}", "10", "", "records500/00000/00001_hr"]])
    with (root / "scp_statements.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["XDX", "a diagnosis of another class", "1", "XCLASS", ""])
    conv = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv")
    answers = {r.id: (split, r.answer) for split, rs in conv.splits.items() for r in rs}
    assert answers == {"ptbxl-1": ("train", "Normal"), "ptbxl-2": ("val", "Myocardial Infarction"),
                       "ptbxl-3": ("test", "A. Fib/Aflutter, ST/T change"), "ptbxl-6": ("train", "Hypertrophy"),
                       "ptbxl-7": ("train", "Other"), "ptbxl-8": ("test", "Other")}
    # a row with only a rhythm statement holds no diagnosis: still skipped, saying why
    assert any("ptbxl_database.csv:5" in s and "no code maps" in s and "'Other'" in s for s in conv.skipped)
    problem = conv.splits["train"][0].problem
    options = problem.split("Options: ")[1].rstrip(".").split(", ")
    assert set(options) == {"Normal", "Myocardial Infarction", "ST/T change", "Conduction Delay", "Hypertrophy",
                            "A. Fib/Aflutter", "Other"} and options[-1] == "Other"
    # below the likelihood threshold the diagnosis does not count
    high = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv", min_likelihood=60)
    high_answers = {r.id: r.answer for rs in high.splits.values() for r in rs}
    assert high_answers["ptbxl-7"] == "Other" and "ptbxl-8" not in high_answers
    # off: the rows are skipped as before, and Other is not offered
    off = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv", other=False)
    assert {r.id for rs in off.splits.values() for r in rs} == {"ptbxl-1", "ptbxl-2", "ptbxl-3", "ptbxl-6"}
    assert "Other" not in off.splits["train"][0].problem
    # a custom label map labels Other only when asked, then for every unmapped superclass
    custom = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv",
                           label_map={"NORM": "Normal", "IMI": "Myocardial Infarction"})
    assert {r.answer for rs in custom.splits.values() for r in rs} == {"Normal", "Myocardial Infarction"}
    custom = convert_ptbxl(root / "ptbxl_database.csv", statements=root / "scp_statements.csv",
                           label_map={"NORM": "Normal", "IMI": "Myocardial Infarction"}, other=True)
    assert {r.id: r.answer for rs in custom.splits.values() for r in rs} == {
        "ptbxl-1": "Normal", "ptbxl-2": "Myocardial Infarction", "ptbxl-3": "Other", "ptbxl-6": "Other",
        "ptbxl-7": "Other", "ptbxl-8": "Other"}
    result = runner.invoke(app, ["data", "convert", "ptbxl", str(root / "ptbxl_database.csv"), "--out",
                                 str(tmp_path / "o"), "--statements", str(root / "scp_statements.csv"), "--no-other"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for name in ("train", "val", "test")
            for line in (tmp_path / "o" / f"{name}.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["answer"] != "Other" for row in rows)


def test_convert_ptbxl_cli(tmp_path):
    root = _ptbxl(tmp_path)
    result = runner.invoke(app, ["data", "convert", "ptbxl", str(root / "ptbxl_database.csv"), "--out",
                                 str(tmp_path / "o"), "--statements", str(root / "scp_statements.csv")])
    assert result.exit_code == 0, result.output
    assert "--allow-outside-paths" in result.output  # the rows point back into the source folder
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    assert runner.invoke(app, ["data", "validate", str(tmp_path / "o" / "train.jsonl")]).exit_code == 1
    assert runner.invoke(app, ["data", "validate", str(tmp_path / "o" / "train.jsonl"),
                               "--allow-outside-paths"]).exit_code == 0
    bad = runner.invoke(app, ["data", "convert", "ptbxl", str(root / "ptbxl_database.csv"), "--out",
                              str(tmp_path / "o2"), "--label-column", "codes"])
    assert bad.exit_code == 2 and "missing column(s) codes" in bad.output


def test_convert_folder_layouts(tmp_path):
    root = tmp_path / "derm"
    for cls, image in (("Melanoma", skdata.immunohistochemistry()), ("Nevus", skdata.retina())):
        (root / cls).mkdir(parents=True)
        for i, crop in enumerate(_crops(image, 10)):
            crop.save(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    conv = convert_folder(root, domain="dermoscopy", val=0.2, test=0.2, seed=3)
    assert conv.counts == {"train": 12, "val": 4, "test": 4}
    for split in ("train", "val", "test"):  # stratified: both classes in every split
        assert {r.answer for r in conv.splits[split]} == {"Melanoma", "Nevus"}
    rec = conv.splits["train"][0]
    assert rec.dataset == "dermoscopy/derm" and "Options: Melanoma, Nevus." in rec.problem
    _check_outputs(write_splits(conv, tmp_path / "out"))

    split_root = tmp_path / "ct_split"
    for split in ("train", "test"):
        for cls in ("A", "B"):
            (split_root / split / cls).mkdir(parents=True)
            shutil.copy(get_testdata_file("CT_small.dcm"), split_root / split / cls / "x.dcm")
    from test_data_volumes import write_series

    write_series(split_root / "train" / "A" / "series01")
    result = runner.invoke(app, ["data", "convert", "folder", str(split_root), "--domain", "ct", "--out",
                                 str(tmp_path / "o2"), "--window", "lung"])
    assert result.exit_code == 0, result.output
    records = load_records(tmp_path / "o2" / "train.jsonl", allow_outside=True)
    assert len(records) == 3 and sum(1 for r in records if r.volumes) == 1
    assert [v.window for r in records for v in r.volumes] == ["lung"]
    stats = runner.invoke(app, ["data", "stats", str(tmp_path / "o2" / "train.jsonl"), "--json",
                                "--allow-outside-paths"])
    payload = json.loads(stats.output)
    assert payload["with_volumes"] == 1 and payload["datasets"]["ct/ct_split"]["labels"] == {"A": 2, "B": 1}
    assert payload["datasets"]["ct/ct_split"]["label_imbalance"] == 2.0
    table = runner.invoke(app, ["data", "stats", str(tmp_path / "o2" / "train.jsonl"), "--allow-outside-paths"])
    assert table.exit_code == 0 and "2.0x" in table.output and "with volumes 1" in table.output
    _check_outputs({"train": tmp_path / "o2" / "train.jsonl", "test": tmp_path / "o2" / "test.jsonl"})
    with pytest.raises(DataError, match="no class folders"):
        convert_folder(root / "Nevus", domain="dermoscopy")
    (tmp_path / "one" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match="need at least 2"):
        convert_folder(tmp_path / "one", domain="dermoscopy")


def test_convert_folder_reads_dicom_ecg_waveforms_as_ecgs(tmp_path):
    waveform = get_testdata_file("waveform_ecg.dcm")  # a real 12-lead DICOM waveform
    root = tmp_path / "ecgs"
    for cls in ("Normal", "Atrial fibrillation"):
        for i in range(3):  # side by side in one folder: separate recordings, not a series
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(waveform, root / "train" / cls / f"{i}.dcm")
        (root / "test" / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(waveform, root / "test" / cls / "t.dcm")
    conv = convert_folder(root, domain="ecg")
    assert conv.counts == {"train": 6, "test": 2} and not conv.skipped
    rec = conv.splits["train"][0]
    assert rec.domain == "ecg" and not rec.images and not rec.volumes and len(rec.ecg) == 1
    assert rec.problem.startswith("<ecg>\nThis is a 12-lead ECG.")
    assert "Options: Atrial fibrillation, Normal." in rec.problem
    ecg = load_record(rec).ecgs[0]
    assert ecg.shape == (8, 2500) and np.abs(ecg).max() > 0.1
    result = runner.invoke(app, ["data", "convert", "folder", str(root), "--domain", "ecg", "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "o" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(row["ecg"]) == 1 and not row.get("images") for row in rows)
    checked = runner.invoke(app, ["data", "validate", str(tmp_path / "o" / "train.jsonl"), "--allow-outside-paths"])
    assert checked.exit_code == 0, checked.output
    # a DICOM waveform among images of another domain is skipped, naming the file and the fix
    derm = tmp_path / "derm"
    for cls in ("A", "B"):
        (derm / cls).mkdir(parents=True)
        for i, crop in enumerate(_crops(skdata.retina(), 5)):
            crop.save(derm / cls / f"{i}.png")
    shutil.copy(waveform, derm / "A" / "wave.dcm")
    conv = convert_folder(derm, domain="dermoscopy")
    assert sum(conv.counts.values()) == 10
    assert any("wave.dcm" in s and "DICOM waveform" in s and "--domain ecg" in s for s in conv.skipped)
