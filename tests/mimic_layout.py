"""Small MIMIC-IV / MIMIC-IV-ECG / MIMIC-CXR-JPG / MIMIC-IV-Note folders in PhysioNet's layouts, for tests.

``write_mimic(root)`` writes the hand-made admissions of :data:`CASES` (each one an edge case of the label rules
of ``qoqmed.data.mimic`` at a 24 h window) plus ``extra`` plain admissions with seeded outcomes, and returns the
four roots. Times are in the de-identified future years MIMIC uses.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from PIL import Image

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
T0 = datetime(2180, 1, 1, 8, 0)

# hadm_id -> (subject, admit offset in days, stay hours, died?, ECG hour, CXR hour, CXR view, expected labels or
# the reason the admission is skipped). Hours count from admittime.
CASES = {
    20000001: (10000001, 0, 9 * 24 + 2, False, 2.0, 5.0, "PA", {"los_7d": "Yes", "mortality_48h": "No"}),
    20000002: (10000002, 40, 30, True, 1.0, 3.0, "AP", {"los_7d": "No", "mortality_48h": "Yes"}),
    20000003: (10000003, 80, 60, True, 4.0, 6.0, "AP", {"los_7d": "No", "mortality_48h": "No"}),
    20000004: (10000004, 120, 100, False, 30.0, 2.0, "PA", "no ECG in the window"),
    20000005: (10000005, 160, 10, True, 1.0, 2.0, "AP", "stay ended within the first 24 h"),
    20000006: (10000006, 200, 90, False, 1.0, 2.0, "LATERAL", "no frontal chest X-ray in the window"),
    20000007: (10000001, 400, 7 * 24, False, 0.5, 23.5, "PA", {"los_7d": "No", "mortality_48h": "No"}),
}


def _gz_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as fh:
        frame.to_csv(fh, index=False)


def _ecg(root: Path, rel: str, rng: np.random.Generator) -> None:
    folder = root / Path(rel).parent
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(5000) / 500.0
    signal = np.stack([0.5 * np.sin(2 * np.pi * 1.2 * t + k) for k in range(12)], axis=1)
    signal += rng.normal(0, 0.02, signal.shape)
    wfdb.wrsamp(Path(rel).name, fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=signal, fmt=["16"] * 12,
                write_dir=str(folder))


def write_mimic(root: Path, extra: int = 0, seed: int = 0) -> dict[str, Path]:
    """Write the four datasets under ``root``; returns their roots (mimic_iv, ecg, cxr, notes)."""
    rng = np.random.default_rng(seed)
    cases = dict(CASES)
    for i in range(extra):  # plain admissions: ECG and CXR in the window, seeded outcomes
        stay = float(rng.choice([36.0, 100.0, 200.0, 300.0]))
        cases[20001000 + i] = (10001000 + i, 600 + 5 * i, stay, bool(rng.random() < 0.3) and stay < 48,
                               float(rng.uniform(0, 12)), float(rng.uniform(0, 12)), "PA", None)
    roots = {k: root / k for k in ("mimic_iv", "ecg", "cxr", "notes")}
    adm, pats, ecgs, cxrs, labs, notes, icu, dx = [], {}, [], [], [], [], [], []
    for n, (hadm, (subject, day, hours, died, ecg_h, cxr_h, view, _)) in enumerate(cases.items()):
        admit = T0 + timedelta(days=day)
        disch = admit + timedelta(hours=hours)
        adm.append(dict(subject_id=subject, hadm_id=hadm, admittime=admit, dischtime=disch,
                        deathtime=disch if died else None, admission_type="EW EMER.",
                        admission_location="EMERGENCY ROOM", insurance="Other", hospital_expire_flag=int(died)))
        pats[subject] = dict(subject_id=subject, gender="F" if subject % 2 else "M", anchor_age=60 + subject % 20,
                             anchor_year=2180, anchor_year_group="2017 - 2019", dod=None)
        study = 40000000 + n
        path = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        ecgs.append(dict(subject_id=subject, study_id=study, file_name=study, ecg_time=admit + timedelta(hours=ecg_h),
                         path=path))
        _ecg(roots["ecg"], path, rng)
        cxr_study, dicom = 50000000 + n, f"d{n:04d}-cxr"
        when = admit + timedelta(hours=cxr_h)
        cxrs.append(dict(dicom_id=dicom, subject_id=subject, study_id=cxr_study,
                         PerformedProcedureStepDescription="CHEST (PA AND LAT)", ViewPosition=view, Rows=64,
                         Columns=64, StudyDate=int(when.strftime("%Y%m%d")),
                         StudyTime=float(when.strftime("%H%M%S")) + 0.25, ProcedureCodeSequence_CodeMeaning="CHEST",
                         ViewCodeSequence_CodeMeaning="postero-anterior",
                         PatientOrientationCodeSequence_CodeMeaning="Erect"))
        jpg = roots["cxr"] / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{cxr_study}" / f"{dicom}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(jpg)
        labs.append(dict(labevent_id=n, subject_id=subject, hadm_id=hadm, itemid=50912,
                         charttime=admit + timedelta(hours=1), valuenum=1.0 + n / 10, valueuom="mg/dL",
                         flag="abnormal" if n % 2 else None))
        labs.append(dict(labevent_id=100 + n, subject_id=subject, hadm_id=hadm, itemid=50971,
                         charttime=admit + timedelta(hours=30), valuenum=4.0, valueuom="mEq/L", flag=None))
        notes.append(dict(note_id=f"{subject}-RR-{n}", subject_id=subject, hadm_id=hadm, note_type="RR", note_seq=n,
                          charttime=when, storetime=when + timedelta(hours=1),
                          text=f"FINDINGS: report {n} of the chest radiograph."))
        icu.append(dict(subject_id=subject, hadm_id=hadm, stay_id=30000000 + n, first_careunit="MICU",
                        last_careunit="MICU", intime=admit + timedelta(hours=3), outtime=disch, los=hours / 24))
        dx.append(dict(subject_id=subject, hadm_id=hadm, seq_num=1, icd_code="I10", icd_version=10))
    hosp = roots["mimic_iv"] / "hosp"
    _gz_csv(pd.DataFrame(adm), hosp / "admissions.csv.gz")
    _gz_csv(pd.DataFrame(list(pats.values())), hosp / "patients.csv.gz")
    _gz_csv(pd.DataFrame(labs), hosp / "labevents.csv.gz")
    _gz_csv(pd.DataFrame([dict(itemid=50912, label="Creatinine", fluid="Blood", category="Chemistry"),
                          dict(itemid=50971, label="Potassium", fluid="Blood", category="Chemistry")]),
            hosp / "d_labitems.csv.gz")
    _gz_csv(pd.DataFrame(dx), hosp / "diagnoses_icd.csv.gz")
    _gz_csv(pd.DataFrame([dict(icd_code="I10", icd_version=10, long_title="Essential (primary) hypertension")]),
            hosp / "d_icd_diagnoses.csv.gz")
    _gz_csv(pd.DataFrame(icu), roots["mimic_iv"] / "icu" / "icustays.csv.gz")
    _gz_csv(pd.DataFrame(notes), roots["notes"] / "note" / "radiology.csv.gz")
    pd.DataFrame(ecgs).to_csv(roots["ecg"] / "record_list.csv", index=False)
    _gz_csv(pd.DataFrame(cxrs), roots["cxr"] / "mimic-cxr-2.0.0-metadata.csv.gz")
    return roots
