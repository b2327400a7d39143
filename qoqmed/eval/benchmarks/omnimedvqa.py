"""OmniMedVQA (Hu et al. 2024) as published on the Hugging Face hub (foreverbeliever/OmniMedVQA, unpacked
``OmniMedVQA.zip``): one JSON list per source dataset in ``QA_information/Open-access/`` (and
``QA_information/Restricted-access/``, whose images are not distributed), each question with ``question_id``,
``question``, ``gt_answer`` (the text of the right option), ``option_A`` .. ``option_D`` (two to four of them),
``image_path`` (relative to the folder, ``Images/...``), ``question_type`` and ``modality_type`` (one question
of the release calls it ``modality``; that name is read where ``modality_type`` is absent).

Splits: ``open-access`` (what MedEvalKit and most papers report) and ``all`` (open and restricted access).
Subsets: ``question_type`` and ``modality_type``.
"""

from __future__ import annotations

from pathlib import Path

from ...data.errors import DataError
from .common import Benchmark, BenchItem, choice_item, image_file, read_json, split_files, text_field

LAYOUT = """DIR/
  QA_information/
    Open-access/<source dataset>.json      (lists of {question_id, question, gt_answer, option_A..option_D,
    Restricted-access/<source dataset>.json  image_path, question_type, modality_type, dataset})
  Images/
    <source dataset>/...png"""

FOLDERS = {"open-access": ("Open-access",), "all": ("Open-access", "Restricted-access")}


def _read(root: Path, split: str) -> list[BenchItem]:
    items = []
    for folder in FOLDERS[split]:
        for path in split_files(root / "QA_information", f"{folder}/*.json", f"OmniMedVQA {folder} questions"):
            rows = read_json(path)
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
            for n, row in enumerate(rows):
                where = f"{path} item {n}"
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected an object, got {type(row).__name__}")
                qid = text_field(row, "question_id", where)
                where = f"{path} question_id {qid}"
                options = {x: text_field(row, f"option_{x}", where) for x in "ABCD" if f"option_{x}" in row}
                truth = text_field(row, "gt_answer", where)
                letters = [x for x, text in options.items() if text == truth]
                if len(letters) != 1:
                    raise DataError(f"{where}: field 'gt_answer' {truth!r} matches {len(letters)} of the options "
                                    f"{options}, expected exactly one")
                # one question of the release names the field "modality"
                modality = "modality_type" if "modality_type" in row or "modality" not in row else "modality"
                subsets = {"question_type": text_field(row, "question_type", where),
                           "modality_type": text_field(row, modality, where)}
                image = image_file(root, text_field(row, "image_path", where), f"{where} field 'image_path'")
                items.append(choice_item(qid, text_field(row, "question", where), options, letters[0], [image],
                                         where, subsets))
    return items


BENCHMARK = Benchmark(name="omnimedvqa", title="OmniMedVQA", splits=("open-access", "all"), read=_read,
                      layout=LAYOUT, source="huggingface.co/datasets/foreverbeliever/OmniMedVQA",
                      subsets=("question_type", "modality_type"))
