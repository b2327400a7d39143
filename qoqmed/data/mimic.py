"""MIMIC-IV fusion tasks (the QoQ-Med paper's Table 4): length of stay over 7 days and death within 48 hours of
admission, from the ECG, the chest X-ray and the clinical text of the first hours of a hospital admission.

Files read, in the layouts PhysioNet distributes (``.csv`` or ``.csv.gz``):

- MIMIC-IV (``mimic_iv``): ``hosp/admissions`` (subject_id, hadm_id, admittime, dischtime, deathtime,
  admission_type, admission_location, hospital_expire_flag), ``hosp/patients`` (subject_id, gender, anchor_age,
  anchor_year); optional: ``icu/icustays`` (hadm_id, intime, first_careunit), ``hosp/labevents`` with
  ``hosp/d_labitems`` (hadm_id, itemid, charttime, valuenum, valueuom, flag; itemid, label),
  ``hosp/diagnoses_icd`` with ``hosp/d_icd_diagnoses`` (subject_id, hadm_id, icd_code, icd_version; long_title).
- MIMIC-IV-ECG (``ecg_root``): ``record_list.csv`` (subject_id, study_id, ecg_time, path) and the WFDB records
  ``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea/.dat`` that ``path`` names (500 Hz, 10 s, 12 leads).
  ``machine_measurements.csv`` is not read: its machine report would put the ECG's reading into the text.
- MIMIC-CXR-JPG (``cxr_root``): ``mimic-cxr-2.0.0-metadata.csv`` (dicom_id, subject_id, study_id, ViewPosition,
  StudyDate, StudyTime) and ``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``.
- MIMIC-IV-Note (``notes_root``, optional): ``note/radiology`` (subject_id, hadm_id, charttime, storetime, text).
  Discharge summaries (``note/discharge``) are never read: they are written at discharge and state the outcome.

Label rules (times from ``admissions``; ``h`` = ``window_hours``, default 24):

- The observation window is ``[admittime - lookback_hours, admittime + h]``; the prediction time is
  ``admittime + h``. Admissions that end (discharge or death) at or before the prediction time are skipped.
- Inputs: the earliest ECG (``ecg_time``) and the earliest frontal (PA or AP) chest X-ray (StudyDate/StudyTime)
  of the subject inside the window; an admission without both is skipped. Text: age and sex, admission type and
  location, an ICU transfer inside the window, the first value of each lab charted inside the window, diagnoses of
  the subject's *earlier* admissions (this admission's codes are assigned at discharge), and the first radiology
  report stored (``storetime``, else ``charttime``) inside the window.
- ``los_7d``: "Yes" when ``dischtime - admittime > 7 days``, else "No".
- ``mortality_48h``: "Yes" when the patient died in hospital (``hospital_expire_flag`` = 1; time of death
  ``deathtime``, else ``dischtime``) at most 48 hours after ``admittime``, else "No" (a death after 48 hours is
  "No"). ``h`` must be below 48.

Each kept admission gives one row per task (domain ``multimodal``, datasets ``mimic_iv/los_7d`` and
``mimic_iv/mortality_48h``); the split is by patient, so no patient is in two splits. A file that the tables name
but that is missing is an error naming it, or with ``skip_missing``, a skipped admission listed with the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .converters import Conversion, Progress, _finish, _identity, _seeded_split
from .errors import DataError
from .schema import append_notes, parse_record

__all__ = ["MIMIC_TASKS", "convert_mimic_iv"]

MIMIC_TASKS = {
    "los_7d": "Will this hospital stay last longer than 7 days?",
    "mortality_48h": "Will the patient die in hospital within 48 hours of admission?",
}
_FRONTAL = ("PA", "AP")
_MAX_LABS = 20
_MAX_HISTORY = 10
_CHUNK_ROWS = 1_000_000


def _table(folder: Path, name: str, columns: Sequence[str], required: bool = True,
           keep: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame | None:
    """``folder/name.csv.gz`` or ``folder/name.csv`` with at least ``columns``; DataError naming the file. Read in
    chunks, each filtered by ``keep``: labevents and the notes run to gigabytes, of which a cohort needs little."""
    found = next((folder / f"{name}{ext}" for ext in (".csv.gz", ".csv") if (folder / f"{name}{ext}").is_file()),
                 None)
    if found is None:
        if required:
            raise DataError(f"{folder / name}.csv.gz: file not found (nor {name}.csv)")
        return None
    wanted = set(columns).__contains__
    try:
        header = pd.read_csv(found, nrows=0, usecols=wanted)
        missing = [c for c in columns if c not in header.columns]
        if missing:
            raise DataError(f"{found}: missing column(s) {', '.join(missing)}")
        with pd.read_csv(found, usecols=wanted, low_memory=False, chunksize=_CHUNK_ROWS) as reader:
            frames = [keep(chunk) if keep else chunk for chunk in reader]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as exc:
        raise DataError(f"{found}: cannot read as CSV: {exc}") from exc
    return pd.concat(frames, ignore_index=True) if frames else header


def _times(frame: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    for col in columns:
        try:
            frame[col] = pd.to_datetime(frame[col], errors="raise")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{source}: column {col}: not a date-time: {exc}") from exc
    return frame


def _cxr_time(frame: pd.DataFrame, source: str) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS[.fff]) as one date-time."""
    try:
        day = frame["StudyDate"].astype("int64").astype(str)
        clock = frame["StudyTime"].astype(float).astype("int64").map("{:06d}".format)
        return pd.to_datetime(day + clock, format="%Y%m%d%H%M%S")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: StudyDate/StudyTime: not a date and time: {exc}") from exc


def _first_in_window(events: pd.DataFrame, time_col: str, stays: pd.DataFrame) -> pd.DataFrame:
    """Per admission, the earliest event of its subject inside its window (columns of ``events`` + hadm_id)."""
    joined = stays[["hadm_id", "subject_id", "start", "cutoff"]].merge(events, on="subject_id")
    joined = joined[(joined[time_col] >= joined["start"]) & (joined[time_col] <= joined["cutoff"])]
    return joined.sort_values([time_col, *[c for c in events.columns if c != time_col]]).drop_duplicates("hadm_id")


@dataclass
class _Sources:
    mimic_iv: Path
    ecg_root: Path
    cxr_root: Path
    notes_root: Path | None


def _labs(src: _Sources, stays: pd.DataFrame) -> dict[int, str]:
    """Per admission: the first value of each lab charted inside its window, up to 20."""
    items = _table(src.mimic_iv / "hosp", "d_labitems", ["itemid", "label"], required=False)
    events = _table(src.mimic_iv / "hosp", "labevents",
                    ["hadm_id", "itemid", "charttime", "valuenum", "valueuom", "flag"], required=False,
                    keep=lambda chunk: chunk[chunk["hadm_id"].isin(stays["hadm_id"])])
    if events is None or items is None:
        return {}
    events = _times(events.dropna(subset=["hadm_id", "valuenum"]), ["charttime"], "hosp/labevents")
    events = events.astype({"hadm_id": "int64"}).merge(stays[["hadm_id", "start", "cutoff"]], on="hadm_id")
    events = events[(events["charttime"] >= events["start"]) & (events["charttime"] <= events["cutoff"])]
    events = events.sort_values(["charttime", "itemid"]).drop_duplicates(["hadm_id", "itemid"])
    events = events.merge(items, on="itemid", how="left")
    out: dict[int, str] = {}
    for hadm, group in events.groupby("hadm_id", sort=False):
        parts = [f"{r.label} {r.valuenum:g}" + (f" {r.valueuom}" if isinstance(r.valueuom, str) else "")
                 + (f" ({r.flag})" if isinstance(r.flag, str) else "") for r in group.head(_MAX_LABS).itertuples()]
        out[int(hadm)] = "; ".join(parts)
    return out


def _history(src: _Sources, stays: pd.DataFrame, admissions: pd.DataFrame) -> dict[int, str]:
    """Per admission: diagnoses of the subject's admissions discharged before it was admitted, the most recent
    admission's first, up to 10."""
    codes = _table(src.mimic_iv / "hosp", "diagnoses_icd", ["subject_id", "hadm_id", "icd_code", "icd_version"],
                   required=False, keep=lambda chunk: chunk[chunk["subject_id"].isin(stays["subject_id"])])
    if codes is None:
        return {}
    names = _table(src.mimic_iv / "hosp", "d_icd_diagnoses", ["icd_code", "icd_version", "long_title"],
                   required=False)
    codes = codes.merge(admissions[["hadm_id", "dischtime"]].rename(columns={"hadm_id": "earlier"}),
                        left_on="hadm_id", right_on="earlier").drop(columns=["hadm_id"])
    if names is not None:
        codes = codes.merge(names, on=["icd_code", "icd_version"], how="left")
    joined = stays[["hadm_id", "subject_id", "admittime"]].merge(codes, on="subject_id")
    joined = joined[joined["dischtime"] <= joined["admittime"]]
    joined = joined.sort_values(["dischtime", "icd_code"], ascending=[False, True])
    out: dict[int, str] = {}
    for hadm, group in joined.groupby("hadm_id", sort=False):
        titles = [t if isinstance(t, str) else f"ICD-{v} {c}" for t, v, c in
                  zip(group.get("long_title", [None] * len(group)), group["icd_version"], group["icd_code"])]
        out[int(hadm)] = "; ".join(list(dict.fromkeys(titles))[:_MAX_HISTORY])
    return out


def _icu(src: _Sources, stays: pd.DataFrame) -> dict[int, str]:
    """Per admission: the first ICU stay that began inside its window."""
    icu = _table(src.mimic_iv / "icu", "icustays", ["hadm_id", "intime", "first_careunit"], required=False)
    if icu is None:
        return {}
    icu = _times(icu, ["intime"], "icu/icustays").merge(stays[["hadm_id", "admittime", "start", "cutoff"]],
                                                        on="hadm_id")
    icu = icu[(icu["intime"] >= icu["start"]) & (icu["intime"] <= icu["cutoff"])].sort_values("intime")
    return {int(r.hadm_id): f"ICU transfer {(r.intime - r.admittime).total_seconds() / 3600:+.1f} h after admission "
            f"({r.first_careunit})" for r in icu.drop_duplicates("hadm_id").itertuples()}


def _radiology(src: _Sources, stays: pd.DataFrame) -> dict[int, str]:
    """Per admission: the first radiology report available (stored) inside its window."""
    if src.notes_root is None:
        return {}
    notes = _table(src.notes_root / "note", "radiology", ["subject_id", "charttime", "storetime", "text"],
                   keep=lambda chunk: chunk[chunk["subject_id"].isin(stays["subject_id"])])
    notes = _times(notes, ["charttime", "storetime"], "note/radiology")
    notes["available"] = notes["storetime"].fillna(notes["charttime"])
    first = _first_in_window(notes[["subject_id", "available", "text"]], "available", stays)
    return {int(r.hadm_id): " ".join(str(r.text).split()) for r in first.itertuples()}


def _files_present(paths: Sequence[Path], where: str, skip_missing: bool, skipped: list[str]) -> bool:
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return True
    message = f"{where}: file not found: {missing[0]}"
    if not skip_missing:
        raise DataError(message + " (listed in the tables; pass skip_missing / --skip-missing to skip such "
                                  "admissions)")
    skipped.append(message)
    return False


def _ehr_text(row, age: int, extras: Sequence[tuple[str, dict[int, str]]]) -> str:
    sex = {"F": "female", "M": "male"}.get(str(row.gender), str(row.gender))
    parts = [f"{age}-year-old {sex}; {str(row.admission_type).lower()} admission from "
             f"{str(row.admission_location).lower()}."]
    parts += [f"{name}: {table[row.hadm_id].rstrip('.')}." for name, table in extras if row.hadm_id in table]
    return " ".join(parts)


def convert_mimic_iv(
    mimic_iv: str | Path,
    ecg_root: str | Path,
    cxr_root: str | Path,
    *,
    notes_root: str | Path | None = None,
    window_hours: float = 24.0,
    lookback_hours: float = 0.0,
    tasks: Sequence[str] = tuple(MIMIC_TASKS),
    skip_missing: bool = False,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.2,
    progress: Progress = _identity,
) -> Conversion:
    """MIMIC-IV + MIMIC-IV-ECG + MIMIC-CXR-JPG (+ MIMIC-IV-Note) -> fusion records; rules in the module docstring.

    Paths in the records are relative to the folder that holds ``ecg_root`` and ``cxr_root``.
    """
    if not 0 < window_hours < 48:
        raise ValueError(f"window_hours={window_hours}: must be in (0, 48), before the 48-hour outcome")
    if lookback_hours < 0:
        raise ValueError(f"lookback_hours={lookback_hours}: must be >= 0")
    unknown = sorted(set(tasks) - set(MIMIC_TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks {', '.join(unknown) or '(none)'}: choose from {', '.join(MIMIC_TASKS)}")
    src = _Sources(Path(mimic_iv), Path(ecg_root), Path(cxr_root), Path(notes_root) if notes_root else None)
    admissions = _table(src.mimic_iv / "hosp", "admissions",
                        ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                         "admission_location", "hospital_expire_flag"])
    admissions = _times(admissions, ["admittime", "dischtime", "deathtime"], "hosp/admissions")
    patients = _table(src.mimic_iv / "hosp", "patients", ["subject_id", "gender", "anchor_age", "anchor_year"])
    ecgs = _table(src.ecg_root, "record_list", ["subject_id", "study_id", "ecg_time", "path"])
    ecgs = _times(ecgs, ["ecg_time"], "record_list.csv")
    cxr_meta = "mimic-cxr-2.0.0-metadata"
    cxrs = _table(src.cxr_root, cxr_meta, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate",
                                           "StudyTime"])
    cxrs = cxrs[cxrs["ViewPosition"].isin(_FRONTAL)].copy()
    cxrs["cxr_time"] = _cxr_time(cxrs, f"{cxr_meta}.csv")

    out = Conversion()
    stays = admissions.copy()
    stays["start"] = stays["admittime"] - pd.Timedelta(hours=lookback_hours)
    stays["cutoff"] = stays["admittime"] + pd.Timedelta(hours=window_hours)
    died = stays["hospital_expire_flag"] == 1
    stays["death"] = stays["deathtime"].where(stays["deathtime"].notna(), stays["dischtime"]).where(died)
    ended = stays[["dischtime", "death"]].min(axis=1)
    for r in stays[ended <= stays["cutoff"]].itertuples():
        out.skipped.append(f"admission {r.hadm_id}: stay ended within the first {window_hours:g} h")
    stays = stays[ended > stays["cutoff"]]
    ecg_first = _first_in_window(ecgs[["subject_id", "ecg_time", "study_id", "path"]], "ecg_time", stays)
    cxr_first = _first_in_window(cxrs[["subject_id", "cxr_time", "study_id", "dicom_id"]], "cxr_time", stays)
    for name, first in (("ECG", ecg_first), ("frontal chest X-ray", cxr_first)):
        lacking = stays[~stays["hadm_id"].isin(first["hadm_id"])]
        out.skipped += [f"admission {h}: no {name} in the window" for h in lacking["hadm_id"]]
        stays = stays[stays["hadm_id"].isin(first["hadm_id"])]
    stays = (stays.merge(patients, on="subject_id", how="left")
             .merge(ecg_first[["hadm_id", "path"]], on="hadm_id")
             .merge(cxr_first[["hadm_id", "study_id", "dicom_id"]], on="hadm_id"))
    extras = [("ICU", _icu(src, stays)), (f"Labs in the first {window_hours:g} h", _labs(src, stays)),
              ("Earlier diagnoses", _history(src, stays, admissions)), ("Radiology report", _radiology(src, stays))]

    base = Path(os.path.commonpath([src.ecg_root.resolve(), src.cxr_root.resolve()]))
    pending = []
    for r in progress(list(stays.itertuples())):
        subject = f"{int(r.subject_id)}"
        ecg = src.ecg_root / str(r.path)
        image = src.cxr_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{int(r.study_id)}" / f"{r.dicom_id}.jpg"
        if not _files_present([ecg.with_suffix(".hea"), ecg.with_suffix(".dat"), image], f"admission {r.hadm_id}",
                              skip_missing, out.skipped):
            continue
        if pd.isna(r.gender):
            out.skipped.append(f"admission {r.hadm_id}: subject {subject} not in hosp/patients")
            continue
        age = int(min(r.anchor_age + (r.admittime.year - r.anchor_year), 91))  # MIMIC caps ages at 91
        ehr = _ehr_text(r, age, extras)
        labels = {"los_7d": r.dischtime - r.admittime > pd.Timedelta(days=7),
                  "mortality_48h": pd.notna(r.death) and r.death - r.admittime <= pd.Timedelta(hours=48)}
        for task in tasks:
            row = {"id": f"mimic_iv-{r.hadm_id}-{task}", "domain": "multimodal", "dataset": f"mimic_iv/{task}",
                   "problem": append_notes(f"{MIMIC_TASKS[task]} Options: Yes, No.", ehr),
                   "answer": "Yes" if labels[task] else "No",
                   "images": [os.path.relpath(image.resolve(), base)],
                   "ecg": [os.path.relpath(ecg.with_suffix(".hea").resolve(), base)],
                   "ehr": ehr, "subject_id": int(r.subject_id), "hadm_id": int(r.hadm_id)}
            pending.append(parse_record(row, base))
    return _finish_by_subject(out, pending, seed, val, test)


def _finish_by_subject(out: Conversion, records: list, seed: int, val: float, test: float) -> Conversion:
    """Split by patient: every row of a subject lands in the subject's split."""
    assign = _seeded_split(sorted({r.extra["subject_id"] for r in records}), seed, val, test)
    for record in records:
        record.split = assign[record.extra["subject_id"]]
        out.add(record.split, record)
    return _finish(out, [], seed, val, test)
