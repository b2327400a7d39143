"""SLAKE (Liu et al. 2021), English questions, as published on the Hugging Face hub (BoKelvin/SLAKE):
``train.json``, ``validation.json`` and ``test.json`` (lists of questions) and the images unpacked from
``imgs.zip`` into ``imgs/``. Each question names its image (``img_name``, relative to ``imgs/``), its language
(``q_lang``: only ``en`` is read) and its answer type (``answer_type``: OPEN or CLOSED), which decides open or
closed here, as in the release. Subsets: ``modality`` and ``content_type``.
"""

from __future__ import annotations

from pathlib import Path

from ...data.errors import DataError
from .common import Benchmark, BenchItem, image_file, read_json, text_field

LAYOUT = """DIR/
  train.json  validation.json  test.json   (lists of {qid, img_name, question, answer, q_lang,
                                             answer_type, modality, content_type, ...})
  imgs/
    xmlab0/source.jpg
    ..."""

ANSWER_TYPES = {"OPEN": "open", "CLOSED": "closed"}


def _read(root: Path, split: str) -> list[BenchItem]:
    path = root / f"{split}.json"
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    items = []
    for n, row in enumerate(rows):
        where = f"{path} item {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        if text_field(row, "q_lang", where) != "en":
            continue
        qid = text_field(row, "qid", where)
        where = f"{path} qid {qid}"
        answer_type = text_field(row, "answer_type", where)
        if answer_type not in ANSWER_TYPES:
            raise DataError(f"{where}: field 'answer_type' is {answer_type!r}, expected OPEN or CLOSED")
        image = image_file(root / "imgs", text_field(row, "img_name", where), f"{where} field 'img_name'")
        subsets = {k: text_field(row, k, where) for k in ("modality", "content_type")}
        items.append(BenchItem(id=qid, kind=ANSWER_TYPES[answer_type], question=text_field(row, "question", where),
                               answer=text_field(row, "answer", where), images=[image], subsets=subsets))
    return items


BENCHMARK = Benchmark(name="slake", title="SLAKE (English)", splits=("test", "validation", "train"), read=_read,
                      layout=LAYOUT, source="huggingface.co/datasets/BoKelvin/SLAKE",
                      subsets=("modality", "content_type"))
