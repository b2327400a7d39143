"""Bulk validation of a jsonl file: every row checked and every referenced file read with the reader training uses.

Apart from the row schema, which must not depend on the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, printable
from .limits import request_budget
from .readers import load_ecg_file, load_image, load_mask
from .schema import Problem, Record, parse_json_line, read_jsonl_lines, row_files, scan_records
from .volumes import load_volume


@dataclass
class Validation:
    """Result of :func:`validate_records`: rows read, valid rows, files read and every problem found."""

    path: str
    rows: int
    valid_rows: int
    files_checked: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "rows": self.rows, "valid_rows": self.valid_rows,
                "files_checked": self.files_checked, "problems": [p.to_dict() for p in self.problems]}


def validate_records(
    path: str | Path, read_files: bool = True, progress: Any = None, allow_outside: bool = False,
) -> Validation:
    """Check every row of a jsonl file and, with ``read_files``, read every file it references with the reader
    training uses (images incl. DICOM, volumes with the row's slice count and window, ECGs, masks against their
    image's size, boxes inside their image). Never stops at the first problem.

    ``progress`` optionally wraps the iteration over valid rows (e.g. ``rich.progress.track``). Paths that leave
    the jsonl's folder ("../") are problems unless ``allow_outside``.
    """
    path = Path(path)
    records, problems = scan_records(path, check_files=not read_files, allow_outside=allow_outside)
    lines = read_jsonl_lines(path)
    rows = sum(1 for _, line in lines if line.strip())
    files = 0
    if read_files:
        cache: dict[tuple, tuple[Any, str | None]] = {}
        items = progress(records) if progress is not None else records
        for line_no, record in items:
            with request_budget():  # one row's files add up as one request's inputs do
                found = check_record_files(record, cache)
            for field_name, file, reason in found:
                problems.append(Problem(str(path), line_no, field_name, reason, file, record.id))
        # Rows that failed the schema: their files are read too, so every problem of a row shows in one pass.
        failed = {p.line for p in problems if p.line is not None} - {n for n, _ in records}
        for line_no, line in lines:
            if line_no in failed:
                for problem in _failed_row_files(path, line_no, line, cache, allow_outside):
                    problems.append(problem)
        files = len(cache)
    bad_lines = {p.line for p in problems}
    problems.sort(key=lambda p: (p.line or 0))
    return Validation(str(path), rows, sum(1 for n, _ in records if n not in bad_lines), files, problems)


def _failed_row_files(path: Path, line_no: int, line: str, cache: dict, allow_outside: bool) -> list[Problem]:
    """Problems of the files of a row that failed the schema (read with the same readers as valid rows)."""
    try:
        obj = parse_json_line(line)
    except DataError:  # already reported as the row's schema problem
        return []
    rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
    out: list[Problem] = []
    for field_name, kind, rel, options in row_files(obj, allow_outside):
        full = path.parent / rel
        if kind == "image":
            read, key = (lambda f=full: load_image(f).size), ("image", str(full))
        elif kind == "volume":
            read = lambda f=full, r=options: len(load_volume(f, num_slices=r.slices, window=r.window, axis=r.axis))
            key = ("volume", str(full), options.slices, str(options.window), str(options.axis))
        elif kind == "ecg":
            read, key = (lambda f=full, o=options: load_ecg_file(f, o).shape), ("ecg", str(full), str(options))
        else:
            read, key = (lambda f=full: load_mask(f).shape), ("mask", str(full), None)
        with request_budget():
            reason = _attempt(cache, key, full, read)[1]
        if reason is not None:
            out.append(Problem(str(path), line_no, field_name, reason, str(full), rid))
    return out


def _attempt(cache: dict, key: tuple, full: Path, read) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, reason)`` of reading a file once; later calls with ``key`` reuse it."""
    if key not in cache:
        try:
            cache[key] = (read(), None)
        except (DataError, ValueError) as exc:
            cache[key] = (None, _reason(exc, full))
        except Exception as exc:  # a library bug or an exotic failure must not stop a bulk check
            cache[key] = (None, f"unexpected {type(exc).__name__}: {exc}")
    return cache[key]


def check_record_files(record: Record, cache: dict | None = None) -> list[tuple[str, str, str]]:
    """Read every file of a record; ``(field, file, reason)`` for each that fails. ``cache`` shares reads
    between records that reference the same file."""
    cache = {} if cache is None else cache
    out: list[tuple[str, str, str]] = []

    def attempt(key: tuple, field_name: str, full: Path, read) -> Any:
        value, reason = _attempt(cache, key, full, read)
        if reason is not None:
            out.append((field_name, str(full), reason))
        return value

    sizes: dict[int, tuple[int, int]] = {}
    for i, rel in enumerate(record.images):
        full = record.resolve(rel)
        size = attempt(("image", str(full)), f"images[{i}]", full, lambda f=full: load_image(f).size)
        if size is not None:
            sizes[i] = size
    for i, ref in enumerate(record.volumes):
        full = record.resolve(ref.path)
        attempt(("volume", str(full), ref.slices, str(ref.window), str(ref.axis)), f"volumes[{i}]", full,
                lambda f=full, r=ref: len(load_volume(f, num_slices=r.slices, window=r.window, axis=r.axis)))
    for i, rel in enumerate(record.ecg):
        full, fmt = record.resolve(rel), record.ecg_formats.get(i)
        attempt(("ecg", str(full), str(fmt)), f"ecg[{i}]", full, lambda f=full, o=fmt: load_ecg_file(f, o).shape)
    if record.segmentation_path is not None:
        full = record.resolve(record.segmentation_path)
        size = sizes.get(record.mask_image)
        attempt(("mask", str(full), size), "segmentation_path", full, lambda f=full, s=size: load_mask(f, s).shape)
    for i, box in enumerate(record.boxes):
        size = sizes.get(box.image)
        if size is not None and (box.bbox_2d[2] > size[0] or box.bbox_2d[3] > size[1]):
            out.append((f"boxes[{i}]", str(record.resolve(record.images[box.image])),
                        f"box {list(box.bbox_2d)} extends outside the {size[0]}x{size[1]} image"))
    return out


def _reason(exc: Exception, full: Path) -> str:
    """The reason part of a reader's ``<file>: <reason>`` message."""
    text = str(exc)
    prefix = printable(f"{full}: ")  # as DataError wrote it
    return text[len(prefix):] if text.startswith(prefix) else text
