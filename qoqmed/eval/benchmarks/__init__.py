"""Public medical VQA benchmarks read from a local copy of their published release, answered with fixed
decoding and scored with the established protocols (``qoqmed eval --benchmark NAME --data DIR``).

One module per benchmark reads its release; :mod:`.protocol` holds answer extraction and scoring, :mod:`.prompts`
the prompt templates, :mod:`.run` the evaluation and :mod:`.report` the report and cross-run comparison.
"""

from __future__ import annotations

from . import medxpertqa, mmmu, omnimedvqa, pathvqa, pmc_vqa, slake, vqa_rad
from .common import Benchmark, BenchItem, ImageRef

BENCHMARKS: dict[str, Benchmark] = {m.BENCHMARK.name: m.BENCHMARK for m in (
    vqa_rad, slake, pathvqa, pmc_vqa, omnimedvqa, mmmu, medxpertqa)}

__all__ = ["BENCHMARKS", "Benchmark", "BenchItem", "ImageRef", "get_benchmark"]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, else a ValueError listing the names."""
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
