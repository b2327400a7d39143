"""MedXpertQA-MM (Zuo et al. 2025) as published on the Hugging Face hub (TsinghuaC3I/MedXpertQA): JSON lines
``MM/test.jsonl`` and ``MM/dev.jsonl``, and the images unpacked from ``images.zip`` into ``images/``. Each
question: ``id``, ``question`` (its text followed by "Answer Choices: (A) ... (E) ..."), ``options`` (letter ->
text, five of them), ``label`` (the right letter), ``images`` (file names in ``images/``), ``medical_task``,
``body_system`` and ``question_type`` (Reasoning or Understanding).

The prompt shows the options once, from ``options``: the "Answer Choices:" tail of ``question`` is left out.
Splits: ``test`` and ``dev``. Subsets: ``medical_task``, ``body_system`` and ``question_type``.
"""

from __future__ import annotations

from pathlib import Path

from ...data.errors import DataError
from .common import Benchmark, BenchItem, choice_item, image_file, read_jsonl, text_field

LAYOUT = """DIR/
  MM/
    test.jsonl  dev.jsonl     ({id, question, options {A..E}, label, images [file names],
                                medical_task, body_system, question_type} per line)
  images/
    MM-1-a.jpeg
    ..."""
SUBSETS = ("medical_task", "body_system", "question_type")
CHOICES_TAIL = "\nAnswer Choices:"


def _read(root: Path, split: str) -> list[BenchItem]:
    path = root / "MM" / f"{split}.jsonl"
    items = []
    for n, row in enumerate(read_jsonl(path)):
        qid = text_field(row, "id", f"{path} row {n}")
        where = f"{path} id {qid}"
        options = row.get("options")
        if not isinstance(options, dict) or not options:
            raise DataError(f"{where}: field 'options' must be an object of letter -> text")
        options = {str(k): text_field(options, k, f"{where} field 'options'") for k in options}
        names = row.get("images")
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            raise DataError(f"{where}: field 'images' must be a non-empty list of file names")
        images = [image_file(root / "images", x, f"{where} field 'images'") for x in names]
        question = text_field(row, "question", where).split(CHOICES_TAIL)[0].strip()
        subsets = {k: text_field(row, k, where) for k in SUBSETS}
        items.append(choice_item(qid, question, options, text_field(row, "label", where), images, where, subsets))
    return items


BENCHMARK = Benchmark(name="medxpertqa-mm", title="MedXpertQA-MM", splits=("test", "dev"), read=_read,
                      layout=LAYOUT, source="huggingface.co/datasets/TsinghuaC3I/MedXpertQA", subsets=SUBSETS)
