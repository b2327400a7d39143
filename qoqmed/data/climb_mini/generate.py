"""Drawing every planned row and writing CLIMB-mini: files, jsonl splits, stats.json and the datasheet."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..boxes import mask_box
from ..domains import DOMAINS
from ..schema import ECG_TOKEN, IMAGE_TOKEN, SPLITS, Box, Record, write_records
from .config import CLIMB_MINI_VERSION, ClimbMiniConfig
from .domains import DOMAIN_SPECS, LABELS
from .ecg import simulate_ecg
from .images import RENDERERS
from .plan import PlannedRow, plan_rows


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel-edge box ``(x1, y1, x2, y2)`` of a non-empty mask (x2, y2 exclusive); :func:`mask_box`, which a drawn
    lesion must not leave empty."""
    box = mask_box(mask)
    if box is None:
        raise ValueError("empty lesion mask")
    return box


def _to_png(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(img * 255.0).astype(np.uint8)).save(path, format="PNG")


def _problem(domain: str, n_images: int, n_ecg: int) -> str:
    spec = DOMAIN_SPECS[domain]
    modality = spec.modality.format(n=n_images)
    if domain == "ultrasound" and n_images == 1:
        modality = "This is a breast ultrasound image."
    elif domain in ("ct", "mri") and n_images == 1:
        modality = modality.replace("These are 1 axial slices", "This is one axial slice")
    tokens = IMAGE_TOKEN * n_images + ECG_TOKEN * n_ecg
    return f"{tokens}\n{modality} {spec.question} Options: {', '.join(spec.labels)}."


def _rng_for(seed: int, item: PlannedRow) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, DOMAINS.index(item.domain), item.number]))


def _make_record(item: PlannedRow, cfg: ClimbMiniConfig, out_dir: Path) -> Record:
    """Draw one planned row, write its files and return its record."""
    rng = _rng_for(cfg.seed, item)
    folder = f"{item.domain}/climb_mini_{item.domain}"
    common = dict(id=item.id, domain=item.domain, dataset=f"climb_mini/{item.domain}", split=item.split,
                  answer=", ".join(item.labels), difficulty="hard" if item.hard else "easy", base_dir=out_dir)
    if item.domain == "ecg":
        rel = f"{folder}/{item.number:06d}.npy"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / rel, simulate_ecg(rng, item.labels[0], item.hard))
        return Record(problem=_problem("ecg", 0, 1), ecg=[rel], **common)

    drawn = RENDERERS[item.domain](rng, item.labels, item.hard, cfg)
    stem = {"ct": "slice", "mri": "slice", "ultrasound": "frame"}.get(item.domain)
    names = [f"{stem}_{i}.png" for i in range(len(drawn.images))] if stem else ["image.png"]
    rels = [f"{folder}/{item.number:06d}/{name}" for name in names]
    for img, rel in zip(drawn.images, rels):
        _to_png(img, out_dir / rel)
    boxes = [Box(tight_box(les.mask), les.label, les.image) for les in drawn.lesions]
    seg = None
    if drawn.lesions:
        first = drawn.lesions[0].image
        mask = np.logical_or.reduce([les.mask for les in drawn.lesions if les.image == first])
        seg = f"{folder}/{item.number:06d}/mask.png"
        _to_png(mask.astype(np.float32), out_dir / seg)
    return Record(problem=_problem(item.domain, len(rels), 0), images=rels, boxes=boxes, segmentation_path=seg,
                  **common)


def _outputs(out_dir: Path) -> list[Path]:
    files = [out_dir / f"{split}.jsonl" for split in SPLITS] + [out_dir / "datasheet.md", out_dir / "stats.json"]
    return files + [out_dir / d / f"climb_mini_{d}" for d in DOMAINS]


def _stats(cfg: ClimbMiniConfig, records: Mapping[str, list[Record]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "CLIMB-mini", "version": CLIMB_MINI_VERSION, "config": _config_dict(cfg),
                           "labels": {d: list(v) for d, v in LABELS.items()}, "splits": {}}
    for split, recs in records.items():
        per_domain: dict[str, Any] = {}
        for domain in DOMAINS:
            rows = [r for r in recs if r.domain == domain]
            labels = Counter(label for r in rows for label in r.labels)
            per_domain[domain] = {
                "rows": len(rows),
                "labels": {label: labels.get(label, 0) for label in LABELS[domain]},
                "difficulty": {d: sum(r.difficulty == d for r in rows) for d in ("easy", "hard")},
                "boxes": sum(len(r.boxes) for r in rows),
            }
        out["splits"][split] = {"rows": len(recs), "domains": per_domain}
    return out


def _config_dict(cfg: ClimbMiniConfig) -> dict[str, Any]:
    return {**asdict(cfg), "domain_weights": cfg.train_weights(), "eval_domain_weights": cfg.eval_weights()}


def _datasheet(stats: Mapping[str, Any]) -> str:
    cfg = stats["config"]
    lines = [
        f"# CLIMB-mini v{CLIMB_MINI_VERSION} datasheet",
        "",
        "Synthetic benchmark in the CLIMB layout, generated by `qoqmed.data.synthetic.generate_climb_mini`. "
        "The images and signals are drawn by simple programs; they carry no clinical meaning. Use them to test "
        "code, to run tutorials and to check that training learns anything at all, never to judge medical "
        "ability. No patient data went into them.",
        "",
        "## Generation",
        "",
        f"- seed {cfg['seed']}; rows: train {cfg['n_train']}, val {cfg['n_val']}, test {cfg['n_test']}; "
        f"at least {cfg['min_per_domain']} rows per domain per split",
        f"- 2D images and ultrasound frames {cfg['image_size']}x{cfg['image_size']} px; CT/MRI: "
        f"{cfg['volume_slices']} slices of {cfg['volume_size']}x{cfg['volume_size']} px (inferior to superior), "
        f"lesion on 2 consecutive slices; ultrasound: clips of {cfg['ultrasound_frames']} frame(s) with probe "
        "motion, lesion on every frame; ECG: float32 (8, 2500), leads I, II, V1-V6, 250 Hz, 10 s, millivolts",
        "- train mix (weights): " + ", ".join(f"{d} {w:g}" for d, w in cfg["domain_weights"].items()),
        "- val/test mix (weights): " + ", ".join(f"{d} {w:g}" for d, w in cfg["eval_domain_weights"].items()),
        "- cues: in `easy` rows each abnormal class paints a large lesion (about a quarter to a half of the image "
        "side, several 28x28-pixel cells) in its own colour or grey level on a low-variance background, so classes "
        "differ in the mean and contrast of whole patches; shape and texture come on top. ECG classes differ in "
        "rate, QRS width and amplitude, baseline activity and ST level, visible in 200 ms windows of each lead",
        f"- difficulty: {cfg['hard_fraction']:.0%} of each domain's rows are `hard` (the same class colour, "
        "fainter and smaller; ECG differences shrunk, more noise; plus a distractor that is not a finding: ECG "
        "electrode, skin marker, hairs, lens dust, tissue fold, lacune, fat lobule, premature beat); the rest are "
        "`easy`",
        f"- chest X-ray is multi-label: an abnormal row gets a second finding with probability "
        f"{cfg['multi_label_prob']:g}; the answer lists labels in option order, joined by \", \"",
        "",
        "## Domains and labels",
        "",
        "| domain | label names from | label | what the synthetic data show |",
        "|---|---|---|---|",
    ]
    for domain, spec in DOMAIN_SPECS.items():
        for i, label in enumerate(spec.labels):
            lines.append(f"| {domain if i == 0 else ''} | {spec.source if i == 0 else ''} | {label} | "
                         f"{spec.cues[label]} |")
    lines += [
        "",
        "## Boxes and masks",
        "",
        "- `boxes`: one per lesion and image, `bbox_2d` = `[x1, y1, x2, y2]` tight around the drawn lesion in "
        "original pixels, pixel-edge convention (x2, y2 exclusive), `image` = index into `images`. Classes with "
        "nothing to localise (" + ", ".join(s.normal for s in DOMAIN_SPECS.values() if s.normal) + ") and ECG "
        "rows have `boxes: []`.",
        "- `segmentation_path`: binary mask (0/255 PNG) of the image of `boxes[0]`, the union of the lesions drawn "
        "on that image; null when there are no boxes. Distractors are never in a box or a mask.",
        "",
        "## Counts",
        "",
        "| split | " + " | ".join(DOMAINS) + " | total |",
        "|---|" + "---|" * (len(DOMAINS) + 1),
    ]
    for split, st in stats["splits"].items():
        lines.append(f"| {split} | " + " | ".join(str(st["domains"][d]["rows"]) for d in DOMAINS)
                     + f" | {st['rows']} |")
    lines += ["", "Per-label counts are in `stats.json`.", ""]
    return "\n".join(lines)


def generate_climb_mini(
    out_dir: str | Path, config: ClimbMiniConfig | None = None, overwrite: bool = False, **settings: Any,
) -> dict[str, Any]:
    """Generate CLIMB-mini into ``out_dir`` and return its statistics (also written to ``stats.json``).

    ``settings`` are :class:`ClimbMiniConfig` fields (``n_train=...``, ``seed=...``), its defaults the rest;
    ``config``, when given, replaces them all. Existing CLIMB-mini outputs in ``out_dir`` are an error unless
    ``overwrite`` is set, in which case only those outputs are removed first.
    """
    if config is None:
        config = ClimbMiniConfig(**settings)
    config.validate()
    out_dir = Path(out_dir)
    existing = [p for p in _outputs(out_dir) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds CLIMB-mini output ({existing[0].name}, ...); "
                              "pass overwrite=True to replace it")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    records: dict[str, list[Record]] = {}
    for split, items in plan_rows(config).items():
        records[split] = [_make_record(item, config, out_dir) for item in items]
        write_records(records[split], out_dir / f"{split}.jsonl")
    stats = _stats(config, records)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / "datasheet.md").write_text(_datasheet(stats), encoding="utf-8")
    return stats
