"""CLIMB-mini's fusion task: a synthetic ``multimodal`` domain whose answer needs the ECG, the chest X-ray and the
note together (a miniature of the QoQ-Med paper's Table 4 setting).

Each row draws three independent findings, each present with probability 1/2:

- ECG: atrial fibrillation (else normal sinus rhythm), drawn by CLIMB-mini's ECG simulator;
- image: a pleural effusion (else no finding) on a chest X-ray, drawn by CLIMB-mini's chest X-ray renderer, with
  its box and mask;
- note: fever (else afebrile) in a short clinical note with unrelated filler sentences, in the row's ``ehr``.

The answer to "Is the patient at high risk?" is "Yes" when at least two of the three findings are present (a
majority vote). Two modalities settle the answer only when they agree, so a model that ignores any one modality
reaches about 75% accuracy at best (exactly 75% in expectation), and one that reads all three 100%. Each row keeps
its findings in ``findings`` ({"ecg", "image", "text"} -> bool), so that bound can be checked on the data.

Output (``generate_fusion``)::

    out_dir/train.jsonl, val.jsonl, test.jsonl
    out_dir/multimodal/climb_mini_fusion/<number>/ecg.npy, image.png, mask.png
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..schema import SPLITS, Box, Record, append_notes, write_records
from .config import ClimbMiniConfig
from .ecg import simulate_ecg
from .generate import _to_png, tight_box
from .images import RENDERERS

__all__ = ["FUSION_DATASET", "FUSION_QUESTION", "fusion_label", "generate_fusion"]

FUSION_DATASET = "climb_mini/fusion"
FUSION_QUESTION = "Is the patient at high risk? Options: Yes, No."
_FOLDER = "multimodal/climb_mini_fusion"
_FILLER = ("No known drug allergies.", "Lives with family.", "Reports mild fatigue.", "Appetite is normal.",
           "Takes no regular medication.", "Slept poorly last night.", "Ambulating independently.")


def fusion_label(findings: dict[str, bool]) -> str:
    """The answer: "Yes" when at least two of the three findings are present."""
    return "Yes" if sum(findings.values()) >= 2 else "No"


def _note(rng: np.random.Generator, fever: bool) -> str:
    temperature = f"{rng.uniform(38.6, 39.8):.1f}" if fever else f"{rng.uniform(36.2, 37.2):.1f}"
    vital = f"Temperature {temperature} C, " + ("febrile with chills." if fever else "afebrile.")
    filler = list(rng.choice(_FILLER, size=2, replace=False))
    return " ".join([filler[0], vital, filler[1]])


def _row(number: int, split: str, rng: np.random.Generator, cfg: ClimbMiniConfig, out_dir: Path) -> Record:
    findings = {m: bool(rng.random() < 0.5) for m in ("ecg", "image", "text")}
    folder = f"{_FOLDER}/{number:06d}"
    (out_dir / folder).mkdir(parents=True, exist_ok=True)
    np.save(out_dir / folder / "ecg.npy", simulate_ecg(rng, "A. Fib/Aflutter" if findings["ecg"] else "Normal"))
    drawn = RENDERERS["chest_xray"](rng, ("Pleural Effusion",) if findings["image"] else ("No Finding",), False, cfg)
    _to_png(drawn.images[0], out_dir / folder / "image.png")
    boxes, seg = [], None
    if drawn.lesions:
        boxes = [Box(tight_box(les.mask), les.label, 0) for les in drawn.lesions]
        seg = f"{folder}/mask.png"
        _to_png(np.logical_or.reduce([les.mask for les in drawn.lesions]).astype(np.float32), out_dir / seg)
    note = _note(rng, findings["text"])
    return Record(id=f"fusion-{number:06d}", domain="multimodal", dataset=FUSION_DATASET, split=split,
                  problem=append_notes(f"<image><ecg>\n{FUSION_QUESTION}", note), answer=fusion_label(findings),
                  images=[f"{folder}/image.png"], ecg=[f"{folder}/ecg.npy"], boxes=boxes, segmentation_path=seg,
                  extra={"ehr": note, "findings": findings}, base_dir=out_dir)


def generate_fusion(out_dir: str | Path, n_train: int = 96, n_val: int = 16, n_test: int = 32, seed: int = 0,
                    overwrite: bool = False) -> dict[str, int]:
    """Write the fusion task's splits and files to ``out_dir``; returns rows per split. The same seed gives the
    same rows. Existing output is an error unless ``overwrite``."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts.values()) or not n_train:
        raise ValueError(f"row counts must be integers >= 0 (train >= 1), got {counts}")
    out_dir = Path(out_dir)
    existing = [p for p in [out_dir / f"{s}.jsonl" for s in SPLITS] + [out_dir / _FOLDER] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds fusion-task output ({existing[0].name}, ...); pass "
                              "overwrite=True to replace it")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    cfg, number = ClimbMiniConfig(), 0
    for split in SPLITS:
        records = []
        for _ in range(counts[split]):
            records.append(_row(number, split, rng, cfg, out_dir))
            number += 1
        if records:
            write_records(records, out_dir / f"{split}.jsonl")
    return {s: n for s, n in counts.items() if n}
