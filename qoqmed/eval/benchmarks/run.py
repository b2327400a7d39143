"""Evaluate a model on a public benchmark: read the release, answer every question with fixed decoding, score
with a protocol, and write ``results.json``, ``predictions.jsonl`` and ``report.md``.

Decoding is fixed and recorded: greedy (temperature 0), torch seeded with 42 (and the caller's random state left
as it was), at most 6 images per question (the first 6 in the question's order; questions with more are counted
in the report). Images embedded in parquet are written once to ``OUT/images/`` and read back, like every other
image, by ``qoqmed.data.readers`` with its decode limits.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...data.errors import DataError
from ...data.prompts import encode_batch, load_record
from ...data.schema import Record
from . import get_benchmark
from .common import BenchItem
from .prompts import build_problem, check_style, record_style, system_turn
from .protocol import check_protocol, score_answer, summarize

__all__ = ["Settings", "evaluate_benchmark", "image_records", "score_items"]

_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")


@dataclass(frozen=True)
class Settings:
    """Everything that decides a benchmark number; recorded in ``results.json`` and the report."""

    benchmark: str
    split: str
    protocol: str = "qoqmed"
    prompt_style: str = "qoqmed"
    max_new_tokens: int = 1024
    max_images: int = 6
    seed: int = 42
    temperature: float = 0.0
    decoding: str = "greedy"
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        check_style(self.prompt_style)
        if self.max_images < 1:
            raise ValueError(f"max_images={self.max_images}: at least one image per question")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


def image_records(items: Sequence[BenchItem], settings: Settings, out_dir: Path) -> list[Record]:
    """One record per question: its first ``max_images`` images (embedded ones written to ``out_dir/images``)
    and its prompt in the settings' style."""
    image_dir = out_dir / "images"
    records = []
    for n, item in enumerate(items):
        paths = []
        for k, ref in enumerate(item.images[:settings.max_images]):
            if ref.path is not None:
                paths.append(str(ref.path.resolve()))
                continue
            suffix = Path(ref.name).suffix.lower() if ref.name else ""
            suffix = suffix if _SUFFIX.fullmatch(suffix) else ".bin"
            rel = f"images/{n:07d}-{k}{suffix}"  # by position: ids need not be file names
            image_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(ref.data)
            paths.append(rel)
        records.append(Record(id=item.id, domain=settings.benchmark, dataset=settings.benchmark,
                              problem=build_problem(item, len(paths), settings.prompt_style), answer=item.answer,
                              images=paths, split=settings.split, base_dir=out_dir))
    return records


def _load(record: Record, item: BenchItem, style: str):
    try:
        return load_record(record, record_style(style))
    except DataError as exc:
        sources = "; ".join(ref.source for ref in item.images)
        raise DataError(f"question {item.id!r} (image from {sources}): {exc}") from exc


@torch.no_grad()
def _generate(model, processor, items: Sequence[BenchItem], records: Sequence[Record], settings: Settings,
              show_progress: bool) -> list[str]:
    model.eval()
    order = sorted(range(len(records)), key=lambda i: (len(records[i].images), i))
    responses = [""] * len(records)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), Progress(
            TextColumn(f"[bold]{settings.benchmark}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            disable=not show_progress) as bar:
        torch.manual_seed(settings.seed)
        task = bar.add_task("generate", total=len(records))
        for start in range(0, len(order), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            loaded = [_load(records[i], items[i], settings.prompt_style) for i in idx]
            enc = encode_batch(processor, loaded, system=system_turn(settings.prompt_style))
            enc = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                 suppress_tokens=model.placeholder_token_ids())
            texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                responses[i] = text
            bar.advance(task, len(idx))
    return responses


def score_items(items: Sequence[BenchItem], responses: Sequence[str], protocol: str,
                max_images: int = 6) -> list[dict]:
    """One prediction row per question: reference, response, what was read from it and how it scored."""
    rows = []
    for item, response in zip(items, responses, strict=True):
        s = score_answer(response, item.kind, item.answer, item.options or None, protocol)
        rows.append({"id": item.id, "kind": item.kind, "answer": item.answer, "options": item.options,
                     "subsets": item.subsets, "images": len(item.images),
                     "images_shown": min(len(item.images), max_images), "response": response,
                     "parsed": s.parsed, "correct": s.correct, "unparseable": s.unparseable, "recall": s.recall})
    return rows


def summarize_rows(rows: Sequence[dict], subsets: Sequence[str]) -> dict:
    """Overall and per-subset summaries (:func:`.protocol.summarize`) of scored rows."""
    per_subset = {}
    for name in subsets:
        values = sorted({r["subsets"][name] for r in rows if name in r["subsets"]})
        per_subset[name] = {v: summarize([r for r in rows if r["subsets"].get(name) == v]) for v in values}
    return {"overall": summarize(rows), "subsets": per_subset}


def evaluate_benchmark(model, processor, benchmark: str, data_dir: str | Path, out_dir: str | Path,
                       split: str | None = None, protocol: str = "qoqmed", prompt_style: str = "qoqmed",
                       max_new_tokens: int = 1024, batch_size: int = 8, max_images: int = 6,
                       show_progress: bool = True, model_name: str = "") -> dict:
    """Read, answer, score and report one benchmark; returns the results written to ``OUT/results.json``."""
    bench = get_benchmark(benchmark)
    settings = Settings(benchmark=bench.name, split=split or bench.splits[0], protocol=protocol,
                        prompt_style=prompt_style, max_new_tokens=max_new_tokens, max_images=max_images,
                        batch_size=batch_size)
    t0 = time.perf_counter()
    items = bench.load(data_dir, settings.split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = image_records(items, settings, out)
    responses = _generate(model, processor, items, records, settings, show_progress)
    rows = score_items(items, responses, settings.protocol, settings.max_images)
    results = {
        "benchmark": bench.name, "title": bench.title, "source": bench.source, "model": model_name,
        "data": str(data_dir), "settings": asdict(settings), "questions": len(rows),
        "questions_over_image_limit": sum(r["images"] > settings.max_images for r in rows),
        **summarize_rows(rows, bench.subsets), "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    from .report import write_benchmark_report

    write_benchmark_report(results, out)
    return results
