"""What every benchmark reader returns (:class:`BenchItem`) and the checked reading of the files releases use:
parquet (pyarrow) with images embedded as ``{bytes, path}`` cells, JSON, JSON lines and CSV.

Every problem raises ``DataError`` naming the file, the row or question and the field; no field is ever filled
in with a default and no image is ever replaced.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.errors import DataError
from ...data.files import check_file
from .protocol import KINDS

__all__ = ["Benchmark", "BenchItem", "ImageRef", "choice_item", "image_cell", "image_file", "parquet_rows",
           "read_csv", "read_json", "read_jsonl", "split_files", "text_field"]


@dataclass(frozen=True)
class ImageRef:
    """One image of a question: a file of the release (``path``) or bytes embedded in a parquet cell (``data``,
    with the file name the cell gives, ``name``). ``source`` says where it came from, for errors."""

    source: str
    path: Path | None = None
    data: bytes | None = None
    name: str = ""


@dataclass
class BenchItem:
    """One benchmark question. ``answer``: the reference text (closed, open) or option letter (choice);
    ``options``: letter -> text (choice only); ``subsets``: grouping field -> value, reported per value."""

    id: str
    kind: str
    question: str
    answer: str
    images: list[ImageRef]
    options: dict[str, str] = field(default_factory=dict)
    subsets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"question {self.id!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Benchmark:
    """A public benchmark: how its release is laid out and read.

    ``splits``: the splits it can evaluate, the first being the one published numbers use; ``read(root, split)``
    returns its questions; ``subsets``: the grouping fields reported per value; ``layout``: the folder layout of
    the release, for the README and for errors; ``source``: where the release is published."""

    name: str
    title: str
    splits: tuple[str, ...]
    read: Callable[[Path, str], list[BenchItem]]
    layout: str
    source: str
    subsets: tuple[str, ...] = ()

    def load(self, root: str | Path, split: str | None = None) -> list[BenchItem]:
        root = Path(root)
        split = split or self.splits[0]
        if split not in self.splits:
            raise DataError(f"{self.name}: split {split!r} is not one of {', '.join(self.splits)}")
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; {self.title} is read from a folder laid out as\n{self.layout}")
        items = self.read(root, split)
        if not items:
            raise DataError(f"{root}: no {self.title} questions in split {split!r}")
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise DataError(f"{root}: question id {item.id!r} occurs twice in split {split!r}")
            seen.add(item.id)
        return items


def text_field(row: Mapping[str, Any], name: str, where: str) -> str:
    """``row[name]`` as a non-empty string; DataError naming ``where`` and the field otherwise."""
    if name not in row:
        raise DataError(f"{where}: field {name!r} is missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: field {name!r} is empty")
    return text


def split_files(root: Path, pattern: str, what: str) -> list[Path]:
    """The files of a split (sorted shards), or a DataError naming the folder and the pattern looked for."""
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"{root}: no file matches {pattern!r} ({what})")
    return files


def parquet_rows(path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a parquet file as dicts of ``columns``; DataError when a column is missing or the file is
    not parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read parquet: {exc}") from exc
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(schema.names)})")
    try:
        return pq.read_table(path, columns=list(columns)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read parquet: {exc}") from exc


def image_cell(value: Any, where: str) -> ImageRef:
    """An image embedded in a parquet cell (the ``{bytes, path}`` struct of Hugging Face's Image feature)."""
    if not isinstance(value, Mapping) or "bytes" not in value:
        raise DataError(f"{where}: expected an image cell with 'bytes' and 'path', got {type(value).__name__}")
    data = value.get("bytes")
    if not isinstance(data, (bytes, bytearray)) or not data:
        path = value.get("path")
        hint = f" (it refers to the file {path!r} instead; keep the release's parquet with embedded images)" \
            if path else ""
        raise DataError(f"{where}: image cell holds no bytes{hint}")
    name = value.get("path") if isinstance(value.get("path"), str) else ""
    return ImageRef(source=where, data=bytes(data), name=name)


def image_file(root: Path, relative: str, where: str) -> ImageRef:
    """An image file of the release, ``relative`` to ``root``; DataError when it is missing, empty or outside."""
    path = root / relative
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise DataError(f"{where}: image path {relative!r} must stay inside {root}")
    check_file(path, f"image ({where})")
    return ImageRef(source=where, path=path)


def read_json(path: Path) -> Any:
    check_file(path, "JSON")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    check_file(path, "JSON lines")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path} line {n}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_csv(path: Path, columns: Iterable[str]) -> list[dict[str, str]]:
    check_file(path, "CSV")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {', '.join(map(repr, missing))} "
                                f"(columns: {', '.join(reader.fieldnames or [])})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc


def choice_item(id: str, question: str, options: Mapping[str, str], answer: str, images: list[ImageRef],
                where: str, subsets: Mapping[str, str] | None = None) -> BenchItem:
    """A multiple-choice item whose ``answer`` must be one of the option letters."""
    if len(options) < 2:
        raise DataError(f"{where}: a multiple-choice question needs at least two options, got {len(options)}")
    if answer not in options:
        raise DataError(f"{where}: answer {answer!r} is not one of the option letters {', '.join(options)}")
    return BenchItem(id=id, kind="choice", question=question, answer=answer, images=images, options=dict(options),
                     subsets=dict(subsets or {}))
