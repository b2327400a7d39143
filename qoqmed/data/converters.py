"""Converters from common clinical dataset layouts to qoqmed records, split into train/val/test.

- :func:`convert_climb`: CLIMB's LLaVA-style annotation jsonl (``images``/``videos``, ``conversations``, optional
  ``label``), and rows already in the QoQ-Med reference layout (``problem``/``answer``).
- :func:`convert_ptbxl`: a PTB-XL-style ECG collection: WFDB records plus a CSV label table with a dict-like
  code column (``scp_codes``) and a stratified fold column (``strat_fold``).
- :func:`convert_folder`: one folder per class (``split/class/file`` or ``class/file`` with a seeded,
  per-class split).

Each returns a :class:`Conversion`: records per split plus the input rows skipped and why (nothing is given a
made-up label). :func:`write_splits` writes ``<split>.jsonl`` files with paths relative to the output folder.
Rows are validated with the record schema as they are built; file contents are checked by ``qoqmed data validate``.
"""

from __future__ import annotations

import ast
import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .domains import DOMAIN_ALIASES, DOMAIN_NAME_RULE, canonical_domain
from .errors import DataError
from .dicom import read_dicom
from .files import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, PILLOW_SEQUENCE_SUFFIXES, VIDEO_SUFFIXES
from .schema import (
    IMAGE_TOKEN, MODALITY_NAMES, SPLITS, VOLUME_TOKEN, Record, from_llava, parse_record, write_records,
)

__all__ = [
    "Conversion", "convert_climb", "convert_ptbxl", "convert_folder", "write_splits", "DOMAIN_ALIASES",
    "PTBXL_CLASSES", "PTBXL_RHYTHMS", "PTBXL_OTHER", "IMAGE_SUFFIXES", "climb_row", "read_scp_statements",
]

Progress = Callable[[Iterable[Any]], Iterable[Any]]

# PTB-XL diagnostic superclasses (scp_statements.csv, column diagnostic_class) -> CLIMB's ECG label names.
PTBXL_CLASSES: Mapping[str, str] = {
    "NORM": "Normal", "MI": "Myocardial Infarction", "STTC": "ST/T change", "CD": "Conduction Delay",
    "HYP": "Hypertrophy",
}
# Rhythm statements that CLIMB groups as their own class.
PTBXL_RHYTHMS: Mapping[str, str] = {"AFIB": "A. Fib/Aflutter", "AFLT": "A. Fib/Aflutter"}
# CLIMB's ECG label set ends with this: a record diagnosed with a superclass outside the mapped ones.
PTBXL_OTHER = "Other"
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}
_ECG_QUESTION = ("This is a 12-lead ECG. What is the diagnosis? Options: {options}.")
_IMAGE_QUESTION = "What is the finding in this {modality}? Options: {options}."


@dataclass
class Conversion:
    """Converted records per split, and the input rows that were skipped with the reason."""

    splits: dict[str, list[Record]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s: len(self.splits.get(s, [])) for s in SPLITS if self.splits.get(s)}

    def add(self, split: str, record: Record) -> None:
        self.splits.setdefault(split, []).append(record)


def _identity(items: Iterable[Any]) -> Iterable[Any]:
    return items


def write_splits(conversion: Conversion, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write ``<out_dir>/<prefix><split>.jsonl`` per split (paths rewritten relative to ``out_dir``)."""
    out_dir = Path(out_dir)
    if not any(conversion.splits.values()):
        raise DataError(f"nothing to write to {out_dir}: no record was converted"
                        + (f" ({len(conversion.skipped)} skipped; first: {conversion.skipped[0]})"
                           if conversion.skipped else ""))
    written = {}
    for split in SPLITS:
        records = conversion.splits.get(split)
        if records:
            written[split] = write_records(records, out_dir / f"{prefix}{split}.jsonl")
    return written


def _seeded_split(keys: Sequence[Any], seed: int, val: float, test: float) -> dict[Any, str]:
    """Assign each key to train/val/test with a seeded shuffle; the fractions are rounded per call."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test fractions must be in [0, 1) and sum below 1, got val={val}, test={test}")
    order = list(keys)
    random.Random(seed).shuffle(order)
    n_test, n_val = round(len(order) * test), round(len(order) * val)
    out = {k: "test" for k in order[:n_test]}
    out.update({k: "val" for k in order[n_test:n_test + n_val]})
    out.update({k: "train" for k in order[n_test + n_val:]})
    return out


def _split_name(value: str) -> str | None:
    return _SPLIT_NAMES.get(value.strip().lower())


# ----------------------------------------------------------------------------------------------------------------
# CLIMB / LLaVA-style annotations


def _first_path(row: Mapping[str, Any]) -> str:
    for key in ("images", "videos", "volumes"):
        value = row.get(key)
        items = [value] if isinstance(value, (str, Mapping)) else value if isinstance(value, list) else []
        if items:
            first = items[0]
            return first if isinstance(first, str) else str(first.get("path", "")) if isinstance(first, Mapping) else ""
    return ""


def climb_row(obj: Mapping[str, Any], base_dir: Path, *, row_id: str, domain: str | None = None,
              dataset: str | None = None, split: str | None = None) -> Record:
    """One CLIMB (LLaVA-style) or reference-layout row -> a validated Record (DataError on problems).

    The schema reads the LLaVA fields (``conversations``, ``label``, ``image``); this adds the overrides, an id
    from ``row_id`` when the row has none, the domain from CLIMB's folder names (``xray`` -> ``chest_xray``...)
    and split names such as ``validation`` -> ``val``.
    """
    row = dict(obj)
    row["id"] = str(obj.get("id", row_id))
    first = _first_path(from_llava(obj)[0])  # LLaVA's single `image` counts too
    if domain is not None:
        row["domain"] = domain
    elif "domain" not in row and first:
        alias = DOMAIN_ALIASES.get(first.split("/")[0].lower())
        if alias is not None:
            row["domain"] = alias
    if dataset is not None:
        row["dataset"] = dataset
    if split is not None:
        row["split"] = split
    elif isinstance(row.get("split"), str) and _split_name(row["split"]):
        row["split"] = _split_name(row["split"])
    return parse_record(row, base_dir)


def convert_climb(
    paths: Sequence[str | Path],
    *,
    image_root: str | Path | None = None,
    domain: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    seed: int = 0,
    val: float = 0.0,
    test: float = 0.0,
    progress: Progress = _identity,
) -> Conversion:
    """Convert CLIMB annotation jsonl files (LLaVA-style or reference layout).

    Paths in the rows are relative to ``image_root`` (default: each file's folder). The split of a row is, in
    order: ``split``; the row's own ``split``; a split name in the file name (``*_train.jsonl``); else a seeded
    split with fractions ``val``/``test`` (all train when both are 0). Unusable rows are skipped and listed.
    """
    out = Conversion()
    pending: list[Record] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: annotation file not found")
        base = Path(image_root) if image_root is not None else path.parent
        file_split = next((_SPLIT_NAMES[t] for t in re.split(r"[^a-z]+", path.stem.lower()) if t in _SPLIT_NAMES),
                          None)
        lines = _annotation_rows(path)
        for line_no, line in progress(lines):
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
                if not isinstance(obj, Mapping):
                    raise DataError("row is not a JSON object")
                record = climb_row(obj, base, row_id=f"{path.stem}-{line_no}", domain=domain, dataset=dataset,
                                   split=split)
            except json.JSONDecodeError as exc:
                out.skipped.append(f"{where}: invalid JSON ({exc.msg})")
                continue
            except DataError as exc:
                reasons = "; ".join(p.split(": ", 1)[-1] for p in exc.problems)
                out.skipped.append(f"{where}: {reasons}")
                continue
            missing = [f"{key}: {'not a regular file' if record.resolve(rel).exists() else 'file not found'}: "
                       f"{record.resolve(rel)}" for key, rel in record.files()
                       if not (record.resolve(rel).is_file() or (key.startswith("volumes")
                                                                 and record.resolve(rel).is_dir()))]
            if missing:
                out.skipped.append(f"{where}: " + "; ".join(missing))
                continue
            if record.split is None and file_split is not None:
                record.split = file_split
            if record.split is None:
                pending.append(record)
            else:
                out.add(record.split, record)
    return _finish(out, pending, seed, val, test)


def _finish(out: Conversion, pending: list[Record], seed: int, val: float, test: float) -> Conversion:
    """Give rows without a split one from the seeded split, then check ids are unique across splits."""
    if pending:
        assign = _seeded_split([r.id for r in pending], seed, val, test)
        for record in pending:
            record.split = assign[record.id]
            out.add(record.split, record)
    _check_unique_ids(out)
    return out


def _annotation_rows(path: Path) -> list[tuple[int, str]]:
    """(number, JSON text) of each row: a jsonl file, or a JSON array file (LLaVA's usual .json form)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON array ({exc.msg} at line {exc.lineno})") from exc
        return [(n, json.dumps(obj)) for n, obj in enumerate(rows, start=1)]
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_unique_ids(out: Conversion) -> None:
    seen: dict[str, str] = {}
    for split, records in out.splits.items():
        for r in records:
            if r.id in seen:
                raise DataError(f"id {r.id!r} occurs twice ({seen[r.id]} and {split}); ids must be unique")
            seen[r.id] = split


# ----------------------------------------------------------------------------------------------------------------
# PTB-XL-style ECG collections


def _codes(value: str, where: str) -> dict[str, float]:
    """Parse a code column: a Python/JSON dict literal ``{'NORM': 100.0}`` or a ``;``/``,``-separated list."""
    text = (value or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"{where}: cannot parse codes {text[:60]!r}: {exc}") from exc
        if not isinstance(parsed, dict):
            raise DataError(f"{where}: codes must be a dict, got {type(parsed).__name__}")
        return {str(k): float(v) if isinstance(v, (int, float)) else 100.0 for k, v in parsed.items()}
    return {c.strip(): 100.0 for c in re.split(r"[;,]", text) if c.strip()}


def read_scp_statements(path: str | Path) -> dict[str, str]:
    """PTB-XL's scp_statements.csv: code (first column) -> diagnostic_class, for diagnostic codes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: statements file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "diagnostic_class" not in reader.fieldnames:
            raise DataError(f"{path}: needs a diagnostic_class column (PTB-XL scp_statements.csv)")
        code_col = reader.fieldnames[0]
        return {row[code_col].strip(): row["diagnostic_class"].strip() for row in reader
                if (row.get("diagnostic_class") or "").strip()}


def convert_ptbxl(
    table: str | Path,
    *,
    records_root: str | Path | None = None,
    statements: str | Path | None = None,
    path_column: str = "filename_hr",
    label_column: str = "scp_codes",
    fold_column: str | None = "strat_fold",
    id_column: str | None = "ecg_id",
    val_folds: Sequence[int] = (9,),
    test_folds: Sequence[int] = (10,),
    min_likelihood: float = 0.0,
    label_map: Mapping[str, str] | None = None,
    other: bool | None = None,
    dataset: str = "ptbxl",
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.1,
    progress: Progress = _identity,
) -> Conversion:
    """Convert a PTB-XL-style table of WFDB ECG records into ECG records.

    Labels: every code of ``label_column`` with likelihood >= ``min_likelihood`` is mapped through
    ``label_map`` (default: PTB-XL superclasses via ``statements`` to CLIMB's names, plus AFIB/AFLT); a row with
    no mapped code is skipped, never labelled by default, except under ``other``: a row with a diagnostic
    statement (a code whose ``diagnostic_class`` the ``statements`` give) at >= ``min_likelihood`` but no mapped
    code is labelled ``"Other"`` (:data:`PTBXL_OTHER`), as CLIMB's ECG label set has it. ``other`` defaults to on
    with the default label map and off with a custom ``label_map``; rows with only rhythm or form statements stay
    skipped (they hold no diagnosis). Split: folds in ``val_folds``/``test_folds`` (PTB-XL's
    recommendation: 9 and 10), others train; without a fold column, a seeded split with ``val``/``test``.
    """
    table = Path(table)
    root = Path(records_root) if records_root is not None else table.parent
    if not table.is_file():
        raise DataError(f"{table}: label table not found")
    classes = read_scp_statements(statements) if statements is not None else {}
    mapping = dict(label_map) if label_map is not None else {
        **{code: PTBXL_CLASSES[cls] for code, cls in classes.items() if cls in PTBXL_CLASSES},
        **{code: name for code, name in PTBXL_CLASSES.items()}, **PTBXL_RHYTHMS,
    }
    other = label_map is None if other is None else other
    options = list(dict.fromkeys([*mapping.values(), *([PTBXL_OTHER] if other else [])]))
    problem = "<ecg>\n" + _ECG_QUESTION.format(options=", ".join(options))
    with table.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        wanted = [c for c in (path_column, label_column, fold_column, id_column) if c is not None]
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}; has {', '.join(columns)}")
        rows = list(reader)
    out = Conversion()
    pending: list[Record] = []
    for n, row in enumerate(progress(rows), start=2):  # line 1 is the header
        where = f"{table}:{n}"
        try:
            codes = _codes(row[label_column], where)
        except DataError as exc:
            out.skipped.append(str(exc))
            continue
        kept = [c for c, p in codes.items() if p >= min_likelihood]
        labels = list(dict.fromkeys(mapping[c] for c in kept if c in mapping))
        if not labels and other and any(c in classes for c in kept):
            labels = [PTBXL_OTHER]  # diagnosed, with superclasses (classes[c]) outside the mapped ones
        if not labels:
            out.skipped.append(f"{where}: no code maps to a label ({', '.join(codes) or 'no codes'})"
                               + ("" if not other else "; no diagnostic statement for 'Other' either"))
            continue
        rel = row[path_column].strip()
        header = root / (rel if rel.endswith(".hea") else rel + ".hea")
        if not header.is_file():
            out.skipped.append(f"{where}: WFDB header not found: {header}")
            continue
        split = None
        if fold_column is not None:
            try:
                fold = int(float(row[fold_column]))
            except ValueError:
                out.skipped.append(f"{where}: {fold_column} {row[fold_column]!r} is not a fold number")
                continue
            split = "test" if fold in test_folds else "val" if fold in val_folds else "train"
        rid = f"{dataset}-{row[id_column].strip()}" if id_column else f"{dataset}-{n - 1}"
        try:
            record = parse_record({"id": rid, "domain": "ecg", "dataset": dataset, "problem": problem,
                                   "answer": ", ".join(labels), "ecg": [header.relative_to(root).as_posix()],
                                   **({"split": split} if split else {})}, root)
        except DataError as exc:
            out.skipped.append(f"{where}: " + "; ".join(exc.problems))
            continue
        if split is None:
            pending.append(record)
        else:
            out.add(split, record)
    return _finish(out, pending, seed, val, test)


# ----------------------------------------------------------------------------------------------------------------
# one folder per class


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES) or path.suffix.lower() in VIDEO_SUFFIXES + PILLOW_SEQUENCE_SUFFIXES


def _is_dicom_waveform(path: Path) -> bool:
    """Whether a DICOM file holds a waveform (a 12-lead ECG) rather than pixels; an unreadable file is not one (the
    image path then reports it)."""
    if path.suffix.lower() not in DICOM_SUFFIXES:
        return False
    try:
        return "WaveformSequence" in read_dicom(path, stop_before_pixels=True)
    except DataError:
        return False


def _class_items(class_dir: Path, series: bool = True) -> list[Path]:
    """Files (images, volumes, videos) and, with ``series``, DICOM series folders of one class folder, sorted."""
    items = []
    for p in sorted(class_dir.rglob("*")):
        if p.name.startswith("."):
            continue
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or _is_volume_file(p)):
            if series and p.suffix.lower() in (".dcm", ".dicom") and any(q.suffix.lower() in (".dcm", ".dicom") and q != p
                                                              for q in p.parent.iterdir()) and p.parent != class_dir:
                continue  # a slice of a series folder, taken as a whole below
            items.append(p)
        elif series and p.is_dir() and p != class_dir and sum(1 for q in p.iterdir() if q.suffix.lower() in (".dcm", ".dicom")) > 1:
            items.append(p)
    return items


def convert_folder(
    root: str | Path,
    *,
    domain: str,
    dataset: str | None = None,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.2,
    num_slices: int = 4,
    window: str | None = None,
    progress: Progress = _identity,
) -> Conversion:
    """Convert ``root/<split>/<class>/<file>`` or ``root/<class>/<file>`` (seeded split per class).

    2D images (PNG/JPEG/TIFF/BMP/DICOM) become ``images``; NIfTI files, videos, GIF/TIFF stacks and folders of
    DICOM slices inside a class folder become ``volumes`` sampled to ``num_slices`` slices with ``window``.
    With ``domain="ecg"``, DICOM waveform files (12-lead ECGs) become ``ecg`` entries, each file a record; a
    DICOM waveform under another domain is skipped, naming the file. The question lists every class name as an
    option; the answer is the folder name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    named, domain = domain, canonical_domain(domain)
    if domain is None:
        raise ValueError(f"domain {named!r}: {DOMAIN_NAME_RULE}")
    dataset = dataset or f"{domain}/{root.name}"
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: no class folders")
    split_layout = all(_split_name(p.name) for p in subdirs)
    groups: list[tuple[str | None, Path]] = []  # (split or None, class folder)
    if split_layout:
        for split_dir in subdirs:
            groups += [(_split_name(split_dir.name), c) for c in sorted(split_dir.iterdir())
                       if c.is_dir() and not c.name.startswith(".")]
    else:
        groups = [(None, c) for c in subdirs]
    classes = sorted({c.name for _, c in groups})
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s) {classes}; need at least 2")
    question = _IMAGE_QUESTION.format(modality=MODALITY_NAMES.get(domain, f"{domain} image"), options=", ".join(classes))
    ecg_question = _ECG_QUESTION.format(options=", ".join(classes))
    out = Conversion()
    by_class: dict[str, list[tuple[str | None, Path]]] = defaultdict(list)
    for split, class_dir in groups:
        items = _class_items(class_dir, series=domain != "ecg")  # ECG DICOMs side by side are records, not a series
        if not items:
            out.skipped.append(f"{class_dir}: no image, volume or video files")
        by_class[class_dir.name] += [(split, p) for p in items]
    # Seeded split per class (stratified), so that every class reaches every split when it has enough files.
    assign: dict[Path, str] = {}
    for name in classes:
        unsplit = [p for s, p in by_class[name] if s is None]
        assign.update(_seeded_split(unsplit, seed, val, test))
    all_items = [(name, s, p) for name in classes for s, p in by_class[name]]
    for name, split, item in progress(all_items):
        rel = item.relative_to(root).as_posix()
        if _is_dicom_waveform(item):
            if domain != "ecg":
                out.skipped.append(f"{item}: a DICOM waveform (ECG) in a {domain} folder; convert ECGs with "
                                   "--domain ecg")
                continue
            row = {"id": f"{dataset}/{rel}", "domain": domain, "dataset": dataset, "split": split or assign[item],
                   "problem": "<ecg>\n" + ecg_question, "answer": name, "ecg": [rel]}
        else:
            volume = item.is_dir() or _is_volume_file(item)
            ref: Any = rel if num_slices == 4 and window is None else {"path": rel, "slices": num_slices,
                                                                        **({"window": window} if window else {})}
            row = {"id": f"{dataset}/{rel}", "domain": domain, "dataset": dataset, "split": split or assign[item],
                   "problem": (VOLUME_TOKEN if volume else IMAGE_TOKEN) + "\n" + question, "answer": name,
                   "images": [] if volume else [rel], **({"volumes": [ref]} if volume else {})}
        try:
            out.add(row["split"], parse_record(row, root))
        except DataError as exc:
            out.skipped.append(f"{item}: " + "; ".join(exc.problems))
    return out

