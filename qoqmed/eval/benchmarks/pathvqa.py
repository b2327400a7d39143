"""PathVQA (He et al. 2020) as published on the Hugging Face hub (flaviagiammarino/path-vqa): parquet shards
with columns ``image`` (embedded ``{bytes, path}``), ``question`` and ``answer``; splits train, validation and
test. Closed questions are those answered "yes" or "no", as for VQA-RAD.
"""

from __future__ import annotations

from pathlib import Path

from .common import Benchmark, BenchItem
from .vqa_rad import read_parquet_vqa

LAYOUT = """DIR/
  data/
    train-0000N-of-0000M-*.parquet
    validation-0000N-of-0000M-*.parquet
    test-0000N-of-0000M-*.parquet     (columns: image {bytes, path}, question, answer)"""


def _read(root: Path, split: str) -> list[BenchItem]:
    return read_parquet_vqa(root, split, "PathVQA")


BENCHMARK = Benchmark(name="pathvqa", title="PathVQA", splits=("test", "validation", "train"), read=_read,
                      layout=LAYOUT, source="huggingface.co/datasets/flaviagiammarino/path-vqa")
