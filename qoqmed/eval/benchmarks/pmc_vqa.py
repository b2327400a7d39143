"""PMC-VQA (Zhang et al. 2023) as published on the Hugging Face hub (xmcmic/PMC-VQA): CSV files per split and
the figures unpacked from the image archives. Columns: ``Figure_path``, ``Question``, ``Choice A`` ..
``Choice D`` (each written "A:text"), and the answer: ``Answer_label`` (a letter) where the file has it, else
``Answer`` holding the letter. Splits: ``test_2`` (version 2's test set, ``test_2.csv``, what MedEvalKit
evaluates), ``test_clean`` (version 1's cleaned test set, ``test_clean.csv``) and ``test`` (``test.csv``).
Images are looked up in ``images/`` then ``figures/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...data.errors import DataError
from .common import Benchmark, BenchItem, choice_item, image_file, read_csv, text_field

LAYOUT = """DIR/
  test_2.csv  test_clean.csv  test.csv   (columns: Figure_path, Question, Choice A..Choice D,
                                          Answer and/or Answer_label)
  images/  or  figures/
    PMC1064097_F1.jpg
    ..."""

LETTERS = ("A", "B", "C", "D")
IMAGE_FOLDERS = ("images", "figures")
_PREFIX = re.compile(r"^\s*([A-D])\s*[:.]\s*")


def _option(text: str, letter: str, where: str) -> str:
    m = _PREFIX.match(text)
    if m and m.group(1) != letter:
        raise DataError(f"{where}: field 'Choice {letter}' starts with the letter {m.group(1)!r}")
    out = text[m.end():].strip() if m else text.strip()
    if not out:
        raise DataError(f"{where}: field 'Choice {letter}' has no text after its letter")
    return out


def _read(root: Path, split: str) -> list[BenchItem]:
    path = root / f"{split}.csv"
    rows = read_csv(path, ["Figure_path", "Question", *(f"Choice {x}" for x in LETTERS)])
    items = []
    for n, row in enumerate(rows):
        where = f"{path} row {n + 2}"  # line number, after the header
        figure = text_field(row, "Figure_path", where)
        folder = next((root / d for d in IMAGE_FOLDERS if (root / d / figure).is_file()), None)
        if folder is None:
            raise DataError(f"{where}: field 'Figure_path': image {figure!r} is in neither "
                            f"{' nor '.join(str(root / d) for d in IMAGE_FOLDERS)}")
        options = {x: _option(text_field(row, f"Choice {x}", where), x, where) for x in LETTERS}
        answer = text_field(row, "Answer_label" if row.get("Answer_label") else "Answer", where).upper()
        items.append(choice_item(f"{split}-{n}", text_field(row, "Question", where), options, answer,
                                 [image_file(folder, figure, f"{where} field 'Figure_path'")], where))
    return items


BENCHMARK = Benchmark(name="pmc-vqa", title="PMC-VQA", splits=("test_2", "test_clean", "test"), read=_read,
                      layout=LAYOUT, source="huggingface.co/datasets/xmcmic/PMC-VQA")
