"""Batch prediction over a jsonl file: one output row per input row, resumable.

Input rows: ``{"id": "...", "question": "...", "images": [...], "volumes": [...], "ecg": [...], "ehr": "..."}``
(``problem`` is accepted for ``question``, so qoqmed record files work too). Paths are relative to the jsonl's
folder. Output: ``OUT/predictions.jsonl`` with ``{"row", "id", "ok", ...Prediction fields}`` or
``{"row", "id", "ok": false, "error", "field"}``, plus ``OUT/overlays/*.png`` for rows with boxes.

A rerun with the same ``OUT`` skips the rows already written, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.errors import DataError
from ..data.schema import parse_json_line
from .inputs import InputError
from .overlay import save_overlay
from .pipeline import Decoding, QoQMedPipeline, Query

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BatchSummary:
    rows: int
    skipped: int      # already in OUT from an earlier run
    predicted: int    # answered in this run
    failed: int       # rows whose inputs failed in this run
    output: Path
    failed_before: int = 0  # skipped rows that had failed in an earlier run (redo them with retry_failed)

    @property
    def ok(self) -> bool:
        """Whether every row of the output holds a prediction."""
        return self.failed == 0 and self.failed_before == 0


def _resolve(value: Any, base: Path) -> Any:
    """Relative path strings -> paths under ``base``; lists element-wise; other values (dicts, numbers) unchanged."""
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    if isinstance(value, str):
        p = Path(value)
        return p if p.is_absolute() else base / p
    return value


def _query(raw: Any, row: int, base: Path) -> Query:
    if not isinstance(raw, dict):
        raise InputError("row", f"must be a JSON object, got {type(raw).__name__}")
    question = raw.get("question", raw.get("problem"))
    if not isinstance(question, str):
        raise InputError("question", "missing or not a string (give 'question' or 'problem')")
    # Other keys (a record's answer, domain, ...) are ignored, so record files can be fed as they are.
    return Query(question=question, images=_resolve(raw.get("images"), base),
                 volumes=_resolve(raw.get("volumes"), base), ecg=_resolve(raw.get("ecg"), base),
                 ehr=raw.get("ehr"), id=str(raw.get("id", row)))


def _failure(row: int, row_id: str, err: InputError) -> dict:
    """The output row of a row whose inputs failed: which row, the input (``field``) and the reason."""
    return {"row": row, "id": row_id, "ok": False, "error": f"row {row}: {err}", "field": err.field}


def _read_done(path: Path, retry_failed: bool) -> dict[int, dict]:
    """Rows already written; a torn last line (a run killed mid-write) is dropped."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("row"), int):
            if retry_failed and not row.get("ok"):
                continue
            done[row["row"]] = row
    return done


def _write_rows(path: Path, rows: dict[int, dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for i in sorted(rows):
            f.write(json.dumps(rows[i]) + "\n")
    os.replace(tmp, path)


def run_batch(pipe: QoQMedPipeline, rows_path: str | Path, out_dir: str | Path, batch_size: int = 8,
              max_new_tokens: int | None = None, overlays: bool = True, retry_failed: bool = False,
              show_progress: bool = True, decoding: Decoding | None = None) -> BatchSummary:
    """Predict every row of ``rows_path`` into ``out_dir/predictions.jsonl`` (see the module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows_path, out_dir = Path(rows_path), Path(out_dir)
    if not rows_path.is_file():
        raise FileNotFoundError(f"{rows_path}: batch file not found")
    base = rows_path.parent
    # Split on line ends only (str.splitlines would also split on U+2028 and other separators JSON strings may hold).
    lines = [ln for ln in rows_path.read_bytes().splitlines() if ln.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "predictions.jsonl"
    done = _read_done(out_path, retry_failed)

    queries: dict[int, Query] = {}
    results: dict[int, dict] = dict(done)
    failed_now = ok_now = 0
    for i, line in enumerate(lines):
        raw, err = None, None
        try:
            raw = parse_json_line(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            err = InputError("row", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        except DataError as exc:
            err = InputError("row", str(exc))
        row_id = str(raw.get("id", i)) if isinstance(raw, dict) else str(i)
        if i in done:
            if done[i].get("id") != row_id:
                raise ValueError(f"{out_path} row {i} has id {done[i].get('id')!r} but {rows_path} row {i} has id "
                                 f"{row_id!r}: OUT holds predictions of another file; pick a new --out")
            continue
        if err is None:
            try:
                queries[i] = _query(raw, i, base)
                continue
            except InputError as exc:
                err = exc
        results[i] = _failure(i, row_id, err)
        failed_now += 1
    # Rows that failed to parse are written at once, so a crash later does not lose them.
    _write_rows(out_path, results)

    todo = sorted(queries)
    with Progress(TextColumn("[bold]predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as bar:
        task = bar.add_task("predict", total=len(todo))
        with open(out_path, "a") as f:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                preds = pipe.predict_batch([queries[i] for i in chunk], batch_size=batch_size,
                                           max_new_tokens=max_new_tokens, decoding=decoding)
                for i, pred in zip(chunk, preds):
                    if isinstance(pred, InputError):
                        row = _failure(i, queries[i].id, pred)
                        failed_now += 1
                    else:
                        row = {"row": i, "ok": True, **pred.to_dict(), "id": queries[i].id}
                        ok_now += 1
                        if overlays and pred.boxes and pred.visuals:
                            name = f"{i:06d}-{_SAFE.sub('_', queries[i].id)[:80]}.png"
                            save_overlay(pred, out_dir / "overlays" / name)
                            row["overlay"] = f"overlays/{name}"
                    results[i] = row
                    # Appended and flushed per row: an interrupted run keeps everything finished so far.
                    f.write(json.dumps(row) + "\n")
                f.flush()
                bar.advance(task, len(chunk))
    _write_rows(out_path, results)  # final file in input order
    return BatchSummary(rows=len(lines), skipped=len(done), predicted=ok_now, failed=failed_now, output=out_path,
                        failed_before=sum(1 for row in done.values() if not row.get("ok")))
