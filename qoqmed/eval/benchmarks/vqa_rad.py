"""VQA-RAD (Lau et al. 2018) as published on the Hugging Face hub (flaviagiammarino/vqa-rad): parquet shards
with columns ``image`` (embedded ``{bytes, path}``), ``question`` and ``answer``; splits train and test.

That release carries no answer type, so a question is closed when its answer is "yes" or "no" and open
otherwise, the split every harness built on it uses (LLaVA-Med, MedEvalKit).
"""

from __future__ import annotations

from pathlib import Path

from .common import Benchmark, BenchItem, image_cell, parquet_rows, split_files, text_field
from .protocol import YES_NO

LAYOUT = """DIR/
  data/
    train-00000-of-00001-*.parquet
    test-00000-of-00001-*.parquet     (columns: image {bytes, path}, question, answer)"""


def read_parquet_vqa(root: Path, split: str, name: str) -> list[BenchItem]:
    """Questions of a ``data/<split>-*.parquet`` release with columns image, question, answer."""
    items = []
    for path in split_files(root, f"data/{split}-*.parquet", f"the {name} {split} split"):
        for n, row in enumerate(parquet_rows(path, ("image", "question", "answer"))):
            where = f"{path} row {n}"
            answer = text_field(row, "answer", where)
            kind = "closed" if answer.lower() in YES_NO else "open"
            items.append(BenchItem(id=f"{path.stem}-{n}", kind=kind, question=text_field(row, "question", where),
                                   answer=answer, images=[image_cell(row["image"], f"{where} field 'image'")]))
    return items


def _read(root: Path, split: str) -> list[BenchItem]:
    return read_parquet_vqa(root, split, "VQA-RAD")


BENCHMARK = Benchmark(name="vqa-rad", title="VQA-RAD", splits=("test", "train"), read=_read, layout=LAYOUT,
                      source="huggingface.co/datasets/flaviagiammarino/vqa-rad")

__all__ = ["BENCHMARK", "read_parquet_vqa"]
