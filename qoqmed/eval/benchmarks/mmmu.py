"""MMMU-Med: the five Health & Medicine subjects of MMMU (Yue et al. 2024) as published on the Hugging Face hub
(MMMU/MMMU): one folder per subject with parquet shards per split, columns ``id``, ``question``, ``options``
(a Python list written as text), ``answer`` (an option letter, or the answer text of an open question),
``question_type`` (``multiple-choice`` or ``open``), ``subfield``, ``topic_difficulty`` and ``image_1`` ..
``image_7`` (embedded ``{bytes, path}``, empty where the question has fewer images).

Splits: ``validation`` (the split papers report; the test split's answers are withheld) and ``dev``. Every
subject folder must be present. The images go first, in their ``image_k`` order; the question keeps its
``<image k>`` references. Subsets: ``subject``, ``subfield`` and ``topic_difficulty``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ...data.errors import DataError
from .common import Benchmark, BenchItem, choice_item, image_cell, parquet_rows, split_files, text_field

SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
            "Public_Health")
IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
LAYOUT = """DIR/
  Basic_Medical_Science/validation-00000-of-00001.parquet   (columns: id, question, options, answer,
  Clinical_Medicine/validation-00000-of-00001.parquet        question_type, subfield, topic_difficulty,
  Diagnostics_and_Laboratory_Medicine/...                    image_1..image_7 {bytes, path})
  Pharmacy/...
  Public_Health/...
  (each also dev-*.parquet and test-*.parquet)"""
COLUMNS = ("id", "question", "options", "answer", "question_type", "subfield", "topic_difficulty", *IMAGE_COLUMNS)


def _options(value: object, where: str) -> list[str]:
    try:
        options = ast.literal_eval(value) if isinstance(value, str) else None
    except (ValueError, SyntaxError):
        options = None
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: field 'options' must be a list of strings written as text, got {value!r}")
    return options


def _read(root: Path, split: str) -> list[BenchItem]:
    items = []
    for subject in SUBJECTS:
        for path in split_files(root, f"{subject}/{split}-*.parquet", f"MMMU {subject} {split} split"):
            for n, row in enumerate(parquet_rows(path, COLUMNS)):
                qid = text_field(row, "id", f"{path} row {n}")
                where = f"{path} id {qid}"
                images = [image_cell(row[c], f"{where} field {c!r}") for c in IMAGE_COLUMNS if row[c] is not None]
                subsets = {"subject": subject, **{k: text_field(row, k, where) for k in ("subfield", "topic_difficulty")}}
                question = text_field(row, "question", where)
                answer = text_field(row, "answer", where)
                kind = text_field(row, "question_type", where)
                if kind == "open":
                    items.append(BenchItem(id=qid, kind="open", question=question, answer=answer, images=images,
                                           subsets=subsets))
                elif kind == "multiple-choice":
                    options = {chr(ord("A") + i): o for i, o in enumerate(_options(row["options"], where))}
                    items.append(choice_item(qid, question, options, answer, images, where, subsets))
                else:
                    raise DataError(f"{where}: field 'question_type' is {kind!r}, expected multiple-choice or open")
    return items


BENCHMARK = Benchmark(name="mmmu-med", title="MMMU-Med (Health & Medicine)", splits=("validation", "dev"),
                      read=_read, layout=LAYOUT, source="huggingface.co/datasets/MMMU/MMMU",
                      subsets=("subject", "subfield", "topic_difficulty"))
