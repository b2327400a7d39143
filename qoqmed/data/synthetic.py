"""CLIMB-mini: a small synthetic benchmark in the CLIMB layout, for tests, tutorials and CPU smoke training.

Nine clinical domains with real label names (taken from the public datasets that CLIMB builds on), rendered as
cheap modality-looking images, head/brain volumes as slice stacks, breast ultrasound clips and simulated 8-lead
ECGs. Each abnormal class paints a large lesion (in easy rows a quarter to a half of the image side) in its own
colour or grey level, with the modality's typical shape or texture on top, on a low-variance background; ECG classes
differ in rate, QRS width and amplitude, baseline and ST level. The cues are meant to show in coarse statistics of
14-28 pixel patches and 200 ms signal windows, so that a tiny model trained for minutes on a CPU can learn the task
and be graded on grounding. The data carry no clinical meaning and must never be used to judge a real model's
medical ability.

Output (``generate_climb_mini``)::

    out_dir/train.jsonl, val.jsonl, test.jsonl          rows as described in qoqmed.data.schema
    out_dir/datasheet.md, stats.json                      what was generated, counts per split/domain/label
    out_dir/ecg/climb_mini_ecg/<number>.npy               float32 (8, 2500): I, II, V1..V6, 250 Hz, 10 s, mV
    out_dir/<domain>/climb_mini_<domain>/<number>/image.png             2D domains
    out_dir/<ct|mri>/climb_mini_<domain>/<number>/slice_<k>.png         volumes, inferior to superior
    out_dir/ultrasound/climb_mini_ultrasound/<number>/frame_<k>.png     clips
    out_dir/<domain>/climb_mini_<domain>/<number>/mask.png              rows with a lesion: mask of boxes[0]'s image

The same seed and configuration give byte-identical files.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .boxes import mask_box
from .ecg import ECG_SAMPLES, ECG_SAMPLING_RATE, ENCODER_LEADS
from .schema import DOMAINS, ECG_TOKEN, IMAGE_TOKEN, SPLITS, Box, Record, split_labels, write_records

CLIMB_MINI_VERSION = 2


# --------------------------------------------------------------------------------------------------------------
# Domains and label sets


@dataclass(frozen=True)
class DomainSpec:
    """Label set and prompt wording of one CLIMB-mini domain."""

    labels: tuple[str, ...]
    normal: str | None  # the label with nothing to localise (None: every class has a lesion)
    source: str  # public dataset(s) the label names come from
    modality: str  # sentence naming the input; "{n}" is the number of slices/frames
    question: str
    cues: Mapping[str, str]  # what each class looks like in the synthetic data
    multi_label: bool = False


DOMAIN_SPECS: dict[str, DomainSpec] = {
    "ecg": DomainSpec(
        labels=("Normal", "A. Fib/Aflutter", "Conduction Delay", "Hypertrophy", "Myocardial Infarction",
                "ST/T change"),
        normal="Normal",
        source="PTB-XL / Chapman-Shaoxing / Georgia / CPSC superclasses (as grouped in CLIMB)",
        modality="This is a 12-lead ECG (8 leads shown: I, II, V1-V6; 10 s at 250 Hz).",
        question="What is the diagnosis?",
        cues={
            "Normal": "regular sinus rhythm 62-78 bpm, P before every QRS, narrow QRS, flat baseline",
            "A. Fib/Aflutter": "fast (140-170 bpm), irregularly irregular RR, no P waves, coarse 4-8 Hz fibrillatory "
            "or sawtooth flutter baseline in every lead",
            "Conduction Delay": "slow (48-58 bpm); very wide (about 200 ms), tall, notched R in I, II, V5-V6 and deep "
            "broad QS in V1-V3, discordant T",
            "Hypertrophy": "left-ventricular hypertrophy: narrow but very tall R in I, V4-V6 and very deep S in V1-V3 "
            "(high voltage), lateral strain pattern (ST depression, inverted T in I, V5-V6), normal rate",
            "Myocardial Infarction": "deep wide Q waves, small R and strong ST elevation merging into T in an anterior "
            "(V1-V5) or anterolateral (I, V3-V6) territory; reciprocal ST depression and inverted T elsewhere",
            "ST/T change": "no Q waves and normal QRS voltage; diffuse horizontal ST depression and deeply inverted T "
            "waves in II and V2-V6, rate 80-95 bpm",
        },
    ),
    "chest_xray": DomainSpec(
        labels=("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax"),
        normal="No Finding",
        source="CheXpert / MIMIC-CXR findings",
        modality="This is a frontal chest X-ray.",
        question="Which findings are present? Select all that apply.",
        cues={
            "No Finding": "two dark-grey lungs with faint rib markings, normal mid-grey heart shadow",
            "Cardiomegaly": "very bright central heart shadow wider than half the chest (box: the heart)",
            "Pleural Effusion": "light-grey, homogeneous band filling the lower half of one lung, meniscus rising "
            "laterally",
            "Pneumothorax": "black region without lung markings over the upper lateral part of one lung, the "
            "collapsed lung pushed towards the hilum behind a thin pleural line",
        },
        multi_label=True,
    ),
    "mammography": DomainSpec(
        labels=("BI-RADS 1", "BI-RADS 2", "BI-RADS 5"),
        normal="BI-RADS 1",
        source="VinDr-Mammo BI-RADS assessment categories (1, 2 and 5 of 1-5)",
        modality="This is a mammogram (mediolateral oblique view).",
        question="What is the BI-RADS assessment category?",
        cues={
            "BI-RADS 1": "smooth fibroglandular texture and pectoral muscle only",
            "BI-RADS 2": "large oval, smooth, circumscribed mid-grey mass with a dark fat halo",
            "BI-RADS 5": "very bright (dense) spiculated mass with clustered microcalcifications",
        },
    ),
    "dermoscopy": DomainSpec(
        labels=("melanoma", "melanocytic nevus", "basal cell carcinoma"),
        normal=None,
        source="HAM10000 diagnosis names",
        modality="This is a dermoscopic image of a skin lesion.",
        question="What is the diagnosis?",
        cues={
            "melanoma": "large asymmetric, mostly near-black lesion with an irregular border and dark-brown, "
            "blue-grey and red areas",
            "melanocytic nevus": "round symmetric lesion of uniform mid brown with a smooth border",
            "basal cell carcinoma": "pink pearly nodule with red arborizing vessels and blue-grey ovoid nests",
        },
    ),
    "fundus": DomainSpec(
        labels=("No DR", "Moderate DR", "Proliferative DR"),
        normal="No DR",
        source="APTOS / Messidor-2 diabetic retinopathy grades",
        modality="This is a colour fundus photograph.",
        question="What is the diabetic retinopathy grade?",
        cues={
            "No DR": "orange retina, yellow optic disc, vessels, darker macula",
            "Moderate DR": "large bright-yellow patch of confluent hard exudates dotted with dark-red dot-blot "
            "haemorrhages",
            "Proliferative DR": "large dark-red, boat-shaped preretinal haemorrhage under a tangle of fine new "
            "vessels",
        },
    ),
    "pathology": DomainSpec(
        labels=("lung adenocarcinoma", "lung squamous cell carcinoma", "benign lung tissue"),
        normal="benign lung tissue",
        source="LC25000 lung classes",
        modality="This is an H&E-stained lung tissue tile.",
        question="What is the tissue type?",
        cues={
            "lung adenocarcinoma": "large dark-purple region of glands: small white lumens ringed by dark nuclei",
            "lung squamous cell carcinoma": "large solid red-pink sheet of dark nuclei with orange keratin pearls",
            "benign lung tissue": "pale pink-white alveolar spaces with thin pink walls and sparse nuclei",
        },
    ),
    "ct": DomainSpec(
        labels=("intraparenchymal hemorrhage", "subdural hemorrhage", "no hemorrhage"),
        normal="no hemorrhage",
        source="RSNA intracranial hemorrhage subtypes",
        modality="These are {n} axial slices of a non-contrast head CT, from inferior to superior.",
        question="Is there an intracranial hemorrhage, and of which type?",
        cues={
            "intraparenchymal hemorrhage": "large round, very bright (hyperdense) blob inside the brain on 2 "
            "consecutive slices",
            "subdural hemorrhage": "thick, moderately bright crescent along the inner skull on 2 consecutive slices",
            "no hemorrhage": "skull ring, grey brain, dark ventricles",
        },
    ),
    "ultrasound": DomainSpec(
        labels=("normal", "benign", "malignant"),
        normal="normal",
        source="BUSI (breast ultrasound) classes",
        modality="These are {n} frames of a breast ultrasound clip.",
        question="What is the finding?",
        cues={
            "normal": "speckled tissue layers in a fan-shaped field",
            "benign": "large oval, wider-than-tall, smooth dark-grey mass over a bright band of posterior "
            "enhancement",
            "malignant": "irregular, spiculated, taller-than-wide black mass over a dark posterior shadow",
        },
    ),
    "mri": DomainSpec(
        labels=("glioma", "meningioma", "no tumor"),
        normal="no tumor",
        source="Brain Tumor MRI dataset classes",
        modality="These are {n} axial slices of a contrast-enhanced T1-weighted brain MRI, from inferior to "
        "superior.",
        question="What is the diagnosis?",
        cues={
            "glioma": "large irregular mass inside the brain, mostly dark (necrotic) within a thin enhancing rim, on "
            "2 consecutive slices",
            "meningioma": "large smooth, homogeneously very bright mass against the inner skull, on 2 consecutive "
            "slices",
            "no tumor": "brain with dark ventricles only",
        },
    ),
}
LABELS: dict[str, tuple[str, ...]] = {d: s.labels for d, s in DOMAIN_SPECS.items()}

# Train mix: the paper's skew (CLIMB: one CT dataset is about 68% of rows, the smallest ultrasound set 99 of 2.61M):
# one dominant domain, a few mid-sized ones and three under 1%. ``min_per_domain`` still guarantees every domain a
# few rows, so at small sizes the rare domains come out slightly above their weight (the datasheet has the counts).
DEFAULT_TRAIN_WEIGHTS: dict[str, float] = {
    "ct": 0.61,
    "chest_xray": 0.15,
    "ecg": 0.10,
    "dermoscopy": 0.05,
    "fundus": 0.04,
    "pathology": 0.03,
    "mammography": 0.008,
    "mri": 0.007,
    "ultrasound": 0.005,
}

for _spec in DOMAIN_SPECS.values():  # labels must survive the answer format ("A, B") unchanged
    assert all(split_labels(label) == [label] for label in _spec.labels), _spec.labels
assert tuple(DOMAIN_SPECS) == DOMAINS


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ClimbMiniConfig:
    """Everything that determines a CLIMB-mini build (with the version, the output is a function of this); the
    only home of its defaults, which generate_climb_mini and the recipe's data.synthetic section use."""

    n_train: int = 800
    n_val: int = 144
    n_test: int = 144
    seed: int = 0
    domain_weights: Mapping[str, float] | None = None  # train mix; None: DEFAULT_TRAIN_WEIGHTS
    eval_domain_weights: Mapping[str, float] | None = None  # val/test mix; None: equal per domain
    image_size: int = 112  # 2D images and ultrasound frames (square, multiple of 28)
    volume_size: int = 56  # CT/MRI slices (square, multiple of 28)
    volume_slices: int = 4
    ultrasound_frames: int = 2
    min_per_domain: int = 4  # rows per domain in every split, whatever the weights
    hard_fraction: float = 0.3
    multi_label_prob: float = 0.3  # chest X-ray: chance that an abnormal row has a second finding

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.min_per_domain < 1:
            raise ValueError(f"min_per_domain must be >= 1, got {self.min_per_domain}")
        for name in ("n_train", "n_val", "n_test"):
            n, need = getattr(self, name), len(DOMAINS) * self.min_per_domain
            if not isinstance(n, int) or n < need:
                raise ValueError(f"{name}={n!r} is too small: {len(DOMAINS)} domains x min_per_domain="
                                 f"{self.min_per_domain} needs at least {need}")
        for name in ("image_size", "volume_size"):
            size = getattr(self, name)
            if not isinstance(size, int) or size < 56 or size % 28:
                raise ValueError(f"{name}={size!r} must be a multiple of 28 and at least 56")
        for name in ("volume_slices", "ultrasound_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("hard_fraction", "multi_label_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("domain_weights", "eval_domain_weights"):
            if getattr(self, name) is not None:
                _check_weights(getattr(self, name), name)


def _check_weights(weights: Mapping[str, float], name: str) -> None:
    unknown = sorted(set(weights) - set(DOMAINS))
    if unknown:
        raise ValueError(f"{name}: unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    for domain, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name}[{domain!r}] must be a finite number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{name}: weights sum to 0")


# --------------------------------------------------------------------------------------------------------------
# Plan: which rows exist (domain, labels, difficulty, id) before anything is drawn


@dataclass(frozen=True)
class _Item:
    domain: str
    number: int
    split: str
    labels: tuple[str, ...]
    hard: bool

    @property
    def id(self) -> str:
        return f"{self.domain}-{self.number:06d}"


def allocate(n: int, weights: Mapping[str, float], min_per_domain: int) -> dict[str, int]:
    """Rows per domain: ``min_per_domain`` each, the rest split by weight (largest remainder, ties by order)."""
    total = float(sum(weights.get(d, 0.0) for d in DOMAINS))
    rest = n - min_per_domain * len(DOMAINS)
    if rest < 0:
        raise ValueError(f"n={n} cannot give {min_per_domain} rows to each of {len(DOMAINS)} domains")
    shares = [rest * weights.get(d, 0.0) / total for d in DOMAINS]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(DOMAINS)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: rest - sum(counts)]:
        counts[i] += 1
    return {d: min_per_domain + c for d, c in zip(DOMAINS, counts)}


def _labels_for(domain: str, count: int, cfg: ClimbMiniConfig, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Balanced labels for ``count`` rows of a domain (chest X-ray may add a second finding)."""
    spec = DOMAIN_SPECS[domain]
    primary = rng.permutation(np.arange(count) % len(spec.labels))
    out: list[tuple[str, ...]] = []
    for k in primary:
        chosen = {int(k)}
        if spec.multi_label and spec.labels[k] != spec.normal and rng.random() < cfg.multi_label_prob:
            others = [i for i, lab in enumerate(spec.labels) if i != k and lab != spec.normal]
            chosen.add(int(rng.choice(others)))
        out.append(tuple(spec.labels[i] for i in sorted(chosen)))
    return out


def _plan(cfg: ClimbMiniConfig) -> dict[str, list[_Item]]:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    train_w = dict(cfg.domain_weights) if cfg.domain_weights is not None else DEFAULT_TRAIN_WEIGHTS
    eval_w = dict(cfg.eval_domain_weights) if cfg.eval_domain_weights is not None else {d: 1.0 for d in DOMAINS}
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    next_number = {d: 0 for d in DOMAINS}
    plan: dict[str, list[_Item]] = {}
    for split in SPLITS:
        counts = allocate(sizes[split], train_w if split == "train" else eval_w, cfg.min_per_domain)
        items: list[_Item] = []
        for domain in DOMAINS:
            n = counts[domain]
            labels = _labels_for(domain, n, cfg, rng)
            hard = np.zeros(n, dtype=bool)
            hard[rng.permutation(n)[: int(round(cfg.hard_fraction * n))]] = True
            for k in range(n):
                items.append(_Item(domain, next_number[domain], split, labels[k], bool(hard[k])))
                next_number[domain] += 1
        plan[split] = [items[i] for i in rng.permutation(len(items))]
    return plan


# --------------------------------------------------------------------------------------------------------------
# ECG simulator

# Waves of one beat: (name, offset from the R peak in s, width sigma in s). T is placed per beat (QT follows RR).
_WAVES = ("P", "Q", "R", "S", "T", "R2", "ST")
# Lead gains (mV) of each wave for a normal heart, leads I, II, V1..V6; R2 (R') and ST are off unless a class
# turns them on.
_GAINS = np.array(
    [
        # P     Q      R     S      T     R2   ST
        [0.10, -0.05, 0.80, -0.15, 0.25, 0.0, 0.0],  # I
        [0.15, -0.05, 1.10, -0.20, 0.30, 0.0, 0.0],  # II
        [0.08, 0.00, 0.30, -0.90, 0.05, 0.0, 0.0],  # V1
        [0.08, 0.00, 0.55, -1.10, 0.40, 0.0, 0.0],  # V2
        [0.08, 0.00, 0.85, -0.70, 0.45, 0.0, 0.0],  # V3
        [0.08, -0.05, 1.20, -0.40, 0.45, 0.0, 0.0],  # V4
        [0.08, -0.08, 1.10, -0.20, 0.35, 0.0, 0.0],  # V5
        [0.08, -0.08, 0.90, -0.10, 0.30, 0.0, 0.0],  # V6
    ],
    dtype=np.float64,
)
_W = {name: i for i, name in enumerate(_WAVES)}
_L = {name: i for i, name in enumerate(ENCODER_LEADS)}
_MI_TERRITORIES = (("V1", "V2", "V3", "V4", "V5"), ("I", "V3", "V4", "V5", "V6"))  # anterior, anterolateral


def _beat_times(rng: np.random.Generator, mean_rr: float, cv: float, duration: float) -> np.ndarray:
    """R-peak times covering ``duration`` seconds (with one beat of margin at either end)."""
    times = [rng.uniform(-mean_rr, 0.0)]
    while times[-1] < duration + mean_rr:
        rr = mean_rr * math.exp(cv * rng.standard_normal() - cv * cv / 2)
        times.append(times[-1] + min(max(rr, 0.28), 2.2))
    return np.asarray(times)


def simulate_ecg(rng: np.random.Generator, label: str, hard: bool = False) -> np.ndarray:
    """Simulate a 10 s, 250 Hz, 8-lead (I, II, V1..V6) ECG of one class, in millivolts, shape (8, 2500).

    Every beat is a sum of Gaussian P, Q, R, S and T waves with lead-specific gains. The classes differ in ways
    that show in simple statistics (mean, spread, extremes) of short (200 ms) windows of each lead, not only in fine
    wave shapes:

    - Normal: regular sinus rhythm at 62-78 bpm, narrow QRS, flat baseline.
    - A. Fib/Aflutter: fast (140-170 bpm) irregularly irregular rhythm without P waves, on a coarse 4-8 Hz
      fibrillatory (or sawtooth flutter) baseline present in every window.
    - Conduction Delay: slow (48-58 bpm) rhythm with very wide (about 200 ms), tall, notched R waves in I, II,
      V5-V6, deep broad QS in V1-V3 and discordant T waves.
    - Hypertrophy: left-ventricular-hypertrophy-like high voltage: narrow, very tall R in I and V4-V6, very deep S
      in V1-V3, and a lateral strain pattern (ST depression, inverted T in I, V5-V6) at a normal rate.
    - Myocardial Infarction: deep wide Q waves, small R and strong ST elevation merging into the T wave in one
      territory (anterior V1-V5 or anterolateral I, V3-V6); reciprocal ST depression and inverted T elsewhere.
    - ST/T change: normal QRS without Q waves, diffuse ST depression and deeply inverted T waves in II and V2-V6
      (ischaemia-like repolarisation change without infarction), rate 80-95 bpm.

    ``hard`` keeps each class's character but shrinks the differences (rates closer to normal, smaller QRS
    widening, ST shift and fibrillation), doubles the white noise and, outside AF, adds one premature beat as a
    distractor.
    """
    if label not in LABELS["ecg"]:
        raise ValueError(f"unknown ECG label {label!r}; expected one of {LABELS['ecg']}")
    t = np.arange(ECG_SAMPLES) / ECG_SAMPLING_RATE
    gains = _GAINS.copy()
    width = {"P": 0.022, "Q": 0.008, "R": 0.010, "S": 0.009, "T": 0.045, "R2": 0.014, "ST": 0.05}
    offset = {"P": -0.16, "Q": -0.022, "R": 0.0, "S": 0.024, "R2": 0.075, "ST": 0.13}

    def pick(easy: tuple[float, float], faint: tuple[float, float]) -> float:
        return float(rng.uniform(*(faint if hard else easy)))

    cv = 0.02
    if label == "Normal":
        hr = rng.uniform(62, 78)
    elif label == "A. Fib/Aflutter":
        hr, cv = pick((140, 170), (105, 120)), pick((0.18, 0.26), (0.10, 0.15))
        gains[:, _W["P"]] = 0.0
    elif label == "Conduction Delay":  # left-bundle-branch-block-like: slow, very wide, tall QRS
        hr = pick((48, 58), (55, 64))
        grow = pick((1.9, 2.2), (1.3, 1.45))
        width["R"], width["R2"], width["S"] = pick((0.034, 0.04), (0.018, 0.022)), 0.024, 0.032
        offset["R2"], offset["S"] = 0.06, 0.04
        lateral, septal = [_L["I"], _L["II"], _L["V5"], _L["V6"]], [_L["V1"], _L["V2"], _L["V3"]]
        gains[:, _W["R"]] *= grow
        gains[lateral, _W["R2"]] = 0.7 * grow  # notched (M-shaped) broad R
        gains[lateral, _W["S"]] = 0.0
        gains[septal, _W["R"]] *= 0.3
        gains[septal, _W["S"]] = -1.3 * grow  # deep broad QS
        gains[lateral, _W["T"]] = -0.25  # discordant T
    elif label == "Hypertrophy":  # LVH: high voltage with a narrow QRS (unlike Conduction Delay) and strain
        hr = rng.uniform(66, 80)
        grow = pick((2.1, 2.5), (1.4, 1.6))
        lateral, septal = [_L["I"], _L["V4"], _L["V5"], _L["V6"]], [_L["V1"], _L["V2"], _L["V3"]]
        width["R"] = 0.012
        gains[lateral, _W["R"]] *= grow
        gains[septal, _W["S"]] *= grow
        strain = [_L["I"], _L["V5"], _L["V6"]]
        width["ST"], offset["ST"] = 0.08, 0.2
        gains[strain, _W["ST"]] = -pick((0.2, 0.3), (0.07, 0.1))
        gains[strain, _W["T"]] = -pick((0.3, 0.4), (0.08, 0.12))
    elif label == "ST/T change":  # repolarisation only: QRS untouched, no Q waves, no ST elevation
        hr = pick((80, 95), (72, 84))
        leads = [_L[name] for name in ("II", "V2", "V3", "V4", "V5", "V6")]
        width["ST"], offset["ST"] = 0.1, 0.2
        gains[leads, _W["ST"]] = -pick((0.3, 0.4), (0.1, 0.14))
        gains[leads, _W["T"]] = -pick((0.4, 0.55), (0.1, 0.15))
    else:  # Myocardial Infarction
        hr = rng.uniform(65, 85)
        territory = _MI_TERRITORIES[int(rng.integers(len(_MI_TERRITORIES)))]
        leads = [_L[name] for name in territory]
        others = [i for i in range(len(ENCODER_LEADS)) if i not in leads]
        # ST elevation merging into the T wave, held over most of each beat (a level shift, not a spike)
        width["Q"], width["ST"], offset["ST"] = 0.016, 0.1, 0.21
        gains[leads, _W["Q"]] = -pick((0.7, 0.95), (0.3, 0.4))
        gains[leads, _W["R"]] *= 0.35 if not hard else 0.7
        gains[leads, _W["ST"]] = pick((0.7, 0.9), (0.22, 0.3))
        gains[others, _W["ST"]] = -pick((0.25, 0.35), (0.08, 0.12))  # reciprocal ST depression
        gains[others, _W["T"]] = -pick((0.3, 0.45), (0.1, 0.15))  # and inverted T
    mean_rr = 60.0 / hr

    beats = _beat_times(rng, mean_rr, cv, t[-1])
    if hard and label != "A. Fib/Aflutter":
        j = int(rng.integers(2, len(beats) - 2))
        beats[j] -= rng.uniform(0.25, 0.35) * (beats[j] - beats[j - 1])
    gains *= 1.0 + 0.1 * rng.standard_normal((len(ENCODER_LEADS), 1))  # electrical axis / electrode placement
    amp = 1.0 + 0.05 * rng.standard_normal(len(beats)) + 0.06 * np.sin(2 * np.pi * 0.25 * beats)  # respiration

    rr_prev = np.diff(beats, prepend=beats[0] - mean_rr)
    waves = np.empty((len(_WAVES), ECG_SAMPLES))
    for name, w in _W.items():
        centre = beats + (0.27 * np.sqrt(rr_prev) if name == "T" else offset[name])
        d = t[None, :] - centre[:, None]
        waves[w] = (amp[:, None] * np.exp(-0.5 * (d / width[name]) ** 2)).sum(axis=0)
    ecg = gains @ waves

    if label == "A. Fib/Aflutter":
        if rng.random() < 0.3:  # flutter: sawtooth at 4-5.5 Hz
            phase = rng.uniform(4.0, 5.5) * t + rng.uniform(0, 1)
            f = 2.0 * (phase - np.floor(phase)) - 1.0
        else:
            f = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 2 * np.pi))
                    for _ in range(3)) / 2
        f_amp = pick((0.35, 0.5), (0.08, 0.12))
        f_gain = np.array([0.6, 0.9, 1.0, 0.9, 0.7, 0.6, 0.5, 0.5])
        ecg += f_amp * f_gain[:, None] * f[None, :] * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * t))[None, :]
    ecg += _ecg_noise(rng, t, hard)
    return ecg.astype(np.float32)


def _ecg_noise(rng: np.random.Generator, t: np.ndarray, hard: bool) -> np.ndarray:
    """Baseline wander, mains hum and white noise for 8 leads."""
    n_leads = len(ENCODER_LEADS)
    wander = sum(
        rng.uniform(0.02, 0.05, (n_leads, 1))
        * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 7, (n_leads, 1)))
        for _ in range(2)
    )
    hum = rng.uniform(0.0, 0.01) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t + rng.uniform(0, 7))
    white = rng.normal(0.0, 0.03 if hard else 0.015, (n_leads, len(t)))
    return wander + hum[None, :] + white


# --------------------------------------------------------------------------------------------------------------
# Drawing helpers (float32 images in [0, 1]; grayscale (H, W), colour (H, W, 3))


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a square image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with about ``cells`` blobs across, unit standard deviation."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    out = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return out / max(float(out.std()), 1e-6)


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = _grid(size)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blob(
    rng: np.random.Generator, size: int, cy: float, cx: float, r: float, *, aspect: float = 1.0,
    angle: float | None = None, lobes: float = 0.0, spikes: float = 0.0, n_spikes: int = 10,
) -> np.ndarray:
    """A star-shaped region: an ellipse of radius ``r`` (``r * aspect`` across) with lobulated / spiculated edge."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi) if angle is None else angle
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    edge = np.ones_like(rho)
    if lobes:
        amps = rng.uniform(0.3, 1.0, 4)
        phases = rng.uniform(0, 2 * np.pi, 4)
        edge += lobes * sum(a * np.cos(k * theta + p) for k, a, p in zip(range(2, 6), amps, phases)) / amps.sum()
    if spikes:
        edge += spikes * np.maximum(np.cos(n_spikes * (theta - rng.uniform(0, np.pi))), 0.0) ** 8
    return rho <= r * edge


def _extent(r: float, aspect: float = 1.0, lobes: float = 0.0, spikes: float = 0.0) -> float:
    """Largest distance from the centre that ``_blob`` with these settings can reach."""
    return r * max(1.0, aspect) * (1.0 + lobes + spikes) + 1.0


def _place(
    rng: np.random.Generator, size: int, extent: float, ok: Callable[[float, float], bool] | None = None,
    margin: float = 1.0,
) -> tuple[float, float]:
    """A random centre keeping a shape of radius ``extent`` inside the image and satisfying ``ok(cy, cx)``."""
    lo, hi = extent + margin, size - extent - margin
    if hi <= lo:
        raise ValueError(f"a lesion of extent {extent:.1f}px does not fit a {size}px image")
    for _ in range(200):
        cy, cx = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if ok is None or ok(cy, cx):
            return cy, cx
    raise ValueError(f"no place found for a lesion of extent {extent:.1f}px in a {size}px image")


def _paint(img: np.ndarray, mask: np.ndarray, value: Any, alpha: float = 1.0, soften: float = 0.6) -> None:
    """Blend ``value`` (scalar, RGB triple or per-pixel array) into ``img`` over ``mask``, in place."""
    a = mask.astype(np.float32)
    if soften:
        a = ndimage.gaussian_filter(a, soften)
    a *= alpha
    value = np.asarray(value, dtype=np.float32)
    if img.ndim == 3:
        a = a[..., None]
    img += a * (value - img)


def _lines(size: int, paths: Sequence[Sequence[tuple[float, float]]], width: int = 1) -> np.ndarray:
    """Mask of polylines given as [(x, y), ...] point lists."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for pts in paths:
        draw.line([(float(x), float(y)) for x, y in pts], fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def _dots(size: int, centres: Sequence[tuple[float, float]], radii: Sequence[float]) -> np.ndarray:
    """Mask of filled discs at (y, x) centres."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for (y, x), r in zip(centres, radii):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(canvas) > 0


def _curve(rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], bend: float,
           n: int = 16) -> list[tuple[float, float]]:
    """A quadratic Bezier from ``start`` to ``end`` (x, y), bowed sideways by ``bend`` times its length."""
    (x0, y0), (x1, y1) = start, end
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    nx, ny = -(y1 - y0), x1 - x0
    cx, cy = mx + bend * nx, my + bend * ny
    s = np.linspace(0, 1, n)
    xs = (1 - s) ** 2 * x0 + 2 * (1 - s) * s * cx + s**2 * x1
    ys = (1 - s) ** 2 * y0 + 2 * (1 - s) * s * cy + s**2 * y1
    return list(zip(xs.tolist(), ys.tolist()))


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Add white noise and clip to [0, 1]."""
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0, out=img)


@dataclass
class _Lesion:
    image: int
    mask: np.ndarray
    label: str


@dataclass
class _Drawn:
    images: list[np.ndarray]
    lesions: list[_Lesion] = field(default_factory=list)


def _contrast(hard: bool) -> float:
    """Opacity of a lesion's class colour: hard rows keep each class's colour but show it fainter."""
    return 0.7 if hard else 0.95


def _size(rng: np.random.Generator, hard: bool, easy: tuple[float, float], faint: tuple[float, float]) -> float:
    """A lesion radius as a fraction of the image side: large in easy rows, smaller in hard ones."""
    return float(rng.uniform(*(faint if hard else easy)))


# --------------------------------------------------------------------------------------------------------------
# Renderers, one per image domain: (rng, labels, hard, cfg) -> _Drawn
#
# Each abnormal class paints a large region (easy rows: about a quarter to a half of the image side, several
# 28x28-pixel cells) in its own colour or grey level, so classes differ in the mean and contrast of whole patches,
# with the modality's typical shape or texture drawn on top. Backgrounds are kept low in variance.


def _render_chest_xray(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    k = _contrast(hard)
    img = np.full((s, s), 0.05, dtype=np.float32)
    img[_ellipse(s, 0.56 * s, 0.5 * s, 0.52 * s, 0.47 * s)] = 0.48
    cy, ry, rx = 0.46 * s, 0.30 * s, 0.16 * s
    jitter = rng.uniform(-0.02, 0.02) * s
    lungs = [(cy, 0.30 * s + jitter, -1), (cy, 0.70 * s + jitter, 1)]  # (cy, cx, side: -1 left of image)
    ribs = 0.03 * np.sin(2 * np.pi * (yy + 0.3 * s * ((xx - 0.5 * s) / s) ** 2) / (s / 6.5))
    ribs += 0.015 * _smooth_noise(rng, s, 10)
    masks = [_ellipse(s, ly, lx, ry, rx) for ly, lx, _ in lungs]
    for m in masks:
        img[m] = 0.28 + ribs[m]
    img[(np.abs(xx - 0.5 * s - jitter) < 0.06 * s) & (yy > 0.12 * s)] = 0.58  # mediastinum / spine
    # Heart: normal size and grey; cardiomegaly makes it much wider and brighter.
    big = "Cardiomegaly" in labels
    heart_rx = _size(rng, hard, (0.25, 0.28), (0.19, 0.21)) * s if big else rng.uniform(0.13, 0.15) * s
    heart = _ellipse(s, 0.68 * s, 0.53 * s + jitter, (0.15 if hard else 0.18) * s if big else 0.14 * s, heart_rx)
    _paint(img, heart, 0.58)
    drawn = _Drawn([img])
    if big:
        _paint(img, heart, 0.96, alpha=k)
        drawn.lesions.append(_Lesion(0, heart, "Cardiomegaly"))
    sides = rng.permutation(2)
    if "Pleural Effusion" in labels:  # homogeneous bright band filling one lung base, meniscus rising laterally
        (ly, lx, side), lung = lungs[sides[0]], masks[sides[0]]
        level = ly + ry * _size(rng, hard, (-0.2, 0.05), (0.35, 0.5))
        lateral = lx + side * rx
        d = np.clip(1.0 - np.abs(xx - lateral) / (2 * rx), 0.0, 1.0)
        effusion = lung & (yy > level - 0.12 * s * d**2) & ~heart  # the heart stays in front: one colour each
        _paint(img, effusion, 0.78, alpha=k)
        drawn.lesions.append(_Lesion(0, effusion, "Pleural Effusion"))
    if "Pneumothorax" in labels:  # black lateral region without markings, lung collapsed towards the hilum
        (ly, lx, side), lung = lungs[sides[1]], masks[sides[1]]
        f = _size(rng, hard, (1.0, 1.2), (0.55, 0.7))
        collapsed = _ellipse(s, ly + 0.2 * ry * f, lx - side * 0.35 * rx * f, ry * (1 - 0.3 * f),
                             rx * (1 - 0.5 * f))
        ptx = lung & ~collapsed & (yy < ly + 0.45 * ry) & ~heart
        _paint(img, collapsed & lung & ~heart, 0.42, alpha=0.6 * k)
        _paint(img, ptx, 0.0, alpha=k)
        pleura = ndimage.binary_dilation(ptx) & collapsed & lung & ~heart
        _paint(img, pleura, 0.6, alpha=0.8, soften=0.0)
        drawn.lesions.append(_Lesion(0, ptx, "Pneumothorax"))
    if hard:  # ECG electrode on the chest wall
        ey, ex = _place(rng, s, 0.05 * s, lambda y, x: 0.15 * s < y < 0.9 * s and 0.15 * s < x < 0.85 * s)
        r = 0.035 * s
        _paint(img, _ellipse(s, ey, ex, r, r) & ~_ellipse(s, ey, ex, 0.55 * r, 0.55 * r), 0.95, alpha=0.8)
    drawn.images[0] = _finish(img + 0.01 * _smooth_noise(rng, s, 6), rng, 0.015)
    return drawn


def _render_mammography(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    right = bool(rng.random() < 0.5)  # chest wall on the right edge
    depth = (s - xx) if right else xx  # distance from the chest wall
    reach = rng.uniform(0.78, 0.86) * s
    breast = _ellipse(s, 0.5 * s, s if right else 0.0, 0.47 * s, reach)
    img = np.full((s, s), 0.02, dtype=np.float32)
    tissue = 0.3 + 0.035 * _smooth_noise(rng, s, 5) + 0.015 * _smooth_noise(rng, s, 14) - 0.08 * depth / s
    img[breast] = tissue[breast]
    pectoral = breast & (depth < 0.3 * s * (1.0 - yy / (0.45 * s)))
    img[pectoral] = 0.45
    drawn = _Drawn([img])
    label, k = labels[0], _contrast(hard)
    if label != DOMAIN_SPECS["mammography"].normal:
        benign = label == "BI-RADS 2"
        if benign:  # large, smooth, mid-grey oval
            r, aspect, lobes, spikes = _size(rng, hard, (0.18, 0.21), (0.11, 0.13)), rng.uniform(0.7, 0.85), 0.04, 0.0
        else:  # very dense spiculated mass
            r, aspect, lobes, spikes = _size(rng, hard, (0.14, 0.16), (0.09, 0.1)), rng.uniform(0.85, 1.0), 0.1, 0.4
        r *= s
        ext = _extent(r, 1.0, lobes, spikes)

        def inside(y: float, x: float) -> bool:
            d = s - x if right else x
            return ((y - 0.5 * s) / (0.47 * s - ext)) ** 2 + (d / (reach - ext)) ** 2 < 1 and d > 0.3 * s + 0.5 * ext

        cy, cx = _place(rng, s, ext, inside)
        mass = _blob(rng, s, cy, cx, r, aspect=aspect, lobes=lobes, spikes=spikes,
                     n_spikes=int(rng.integers(9, 14))) & breast
        if benign:
            halo = ndimage.binary_dilation(mass, iterations=2) & ~mass
            _paint(img, halo, 0.1, alpha=0.8 * k)
            _paint(img, mass, 0.62, alpha=k)
        else:
            _paint(img, mass, 0.96, alpha=k)
            n = int(rng.integers(8, 14))
            ang, rad = rng.uniform(0, 2 * np.pi, n), r * 0.7 * np.sqrt(rng.uniform(0, 1, n))
            calc = _dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))), [0.8] * n) & mass
            _paint(img, calc, 1.0, alpha=k, soften=0.0)
        drawn.lesions.append(_Lesion(0, mass, label))
    if hard:  # skin marker (metal BB) near the skin line
        by, bx = _place(rng, s, 0.04 * s,
                        lambda y, x: bool(breast[int(y), int(x)]) and (s - x if right else x) > 0.5 * s)
        _paint(img, _ellipse(s, by, bx, 0.025 * s, 0.025 * s), 1.0, alpha=0.9)
    drawn.images[0] = _finish(img, rng, 0.015)
    return drawn


_SKIN_TONES = ((0.94, 0.80, 0.70), (0.91, 0.75, 0.63), (0.86, 0.68, 0.56))


def _render_dermoscopy(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    tone = np.asarray(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], dtype=np.float32)
    img = tone[None, None, :] * (1.0 + 0.025 * _smooth_noise(rng, s, 8)[..., None])
    img = img.astype(np.float32)
    label, k = labels[0], _contrast(hard)
    cy, cx = s / 2 + rng.uniform(-0.08, 0.08, 2) * s
    if label == "melanoma":  # large, asymmetric, near-black with blue-grey and red areas
        r = _size(rng, hard, (0.2, 0.23), (0.12, 0.14)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(1.1, 1.3), lobes=0.3)
        base = np.broadcast_to(np.array([0.22, 0.12, 0.09], np.float32), img.shape).copy()
        n1, n2 = _smooth_noise(rng, s, 7), _smooth_noise(rng, s, 7)
        base[n1 > 0.6] = (0.07, 0.05, 0.05)  # black
        base[n2 > 0.9] = (0.36, 0.40, 0.52)  # blue-grey veil
        base[(n1 < -1.0) & (n2 < 0)] = (0.55, 0.18, 0.18)  # red
        _paint(img, lesion, base, alpha=k)
    elif label == "melanocytic nevus":  # round, symmetric, uniform medium brown
        r = _size(rng, hard, (0.17, 0.2), (0.1, 0.12)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(0.92, 1.08), lobes=0.04)
        dist = np.hypot(yy - cy, xx - cx) / r
        shade = (0.54 - 0.05 * np.clip(1 - dist, 0, 1))[..., None] * np.array([1.0, 0.6, 0.32], np.float32)
        _paint(img, lesion, shade, alpha=k, soften=1.0)
    else:  # basal cell carcinoma: pink pearly nodule, red arborizing vessels, blue-grey nests
        r = _size(rng, hard, (0.17, 0.2), (0.1, 0.12)) * s
        lesion = _blob(rng, s, cy, cx, r, aspect=rng.uniform(0.9, 1.15), lobes=0.1)
        _paint(img, lesion, (0.95, 0.45, 0.6), alpha=k, soften=1.2)
        paths = []
        for _ in range(int(rng.integers(4, 7))):
            a = rng.uniform(0, 2 * np.pi)
            start = (cx + 0.1 * r * math.cos(a), cy + 0.1 * r * math.sin(a))
            end = (cx + 0.85 * r * math.cos(a + 0.4), cy + 0.85 * r * math.sin(a + 0.4))
            paths.append(_curve(rng, start, end, rng.uniform(-0.3, 0.3)))
        _paint(img, _lines(s, paths) & lesion, (0.72, 0.06, 0.12), alpha=k, soften=0.0)
        n = int(rng.integers(4, 7))
        ang, rad = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.2, 0.7, n) * r
        nests = _dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))), rng.uniform(0.12, 0.2, n) * r)
        _paint(img, nests & lesion, (0.48, 0.52, 0.70), alpha=k)
    drawn = _Drawn([img], [_Lesion(0, lesion, label)])
    if hard:  # hairs across the field
        paths = [_curve(rng, tuple(rng.uniform(0, s, 2)), tuple(rng.uniform(0, s, 2)), rng.uniform(-0.2, 0.2))
                 for _ in range(int(rng.integers(2, 5)))]
        _paint(img, _lines(s, paths), (0.15, 0.10, 0.08), alpha=0.8, soften=0.0)
    vignette = np.clip((np.hypot(yy - s / 2, xx - s / 2) - 0.48 * s) / (0.08 * s), 0, 1)[..., None]
    drawn.images[0] = _finish(img * (1 - vignette), rng, 0.012)
    return drawn


def _render_fundus(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    yy, xx = _grid(s)
    rr = np.hypot(yy - s / 2, xx - s / 2) / (0.46 * s)
    retina = rr <= 1.0
    base = np.array([0.80, 0.36, 0.15], np.float32)
    img = base * (1.0 - 0.2 * rr**2 + 0.02 * _smooth_noise(rng, s, 6))[..., None]
    img[~retina] = 0.0
    img = img.astype(np.float32)
    left = bool(rng.random() < 0.5)
    dy, dx = s / 2 + rng.uniform(-0.04, 0.04) * s, (0.27 if left else 0.73) * s
    my, mx = s / 2 + rng.uniform(-0.03, 0.03) * s, (0.55 if left else 0.45) * s
    _paint(img, _ellipse(s, my, mx, 0.08 * s, 0.08 * s), (0.62, 0.26, 0.10), alpha=0.6, soften=2.0)  # macula
    vessels = []
    for up in (-1, 1):
        for reach in (0.62, 0.4):
            end = (mx + (0.35 if left else -0.35) * s * reach / 0.62, my + up * reach * 0.55 * s)
            vessels.append(_curve(rng, (dx, dy), end, up * (0.25 if left else -0.25)))
    _paint(img, _lines(s, vessels, width=max(1, s // 56)) & retina, (0.58, 0.14, 0.06), alpha=0.8, soften=0.0)
    _paint(img, _ellipse(s, dy, dx, 0.065 * s, 0.06 * s), (0.98, 0.88, 0.68), alpha=0.95, soften=1.0)  # disc
    drawn = _Drawn([img])
    label, k = labels[0], _contrast(hard)
    if label != DOMAIN_SPECS["fundus"].normal:
        r = _size(rng, hard, (0.17, 0.2), (0.11, 0.13)) * s
        ext = _extent(r, lobes=0.2)

        def away_from_disc(y: float, x: float) -> bool:
            return (math.hypot(y - s / 2, x - s / 2) < 0.44 * s - ext
                    and math.hypot(y - dy, x - dx) > 0.07 * s + ext)

        cy, cx = _place(rng, s, ext, away_from_disc)
        unit = s / 112
        if label == "Moderate DR":  # confluent yellow hard exudates with dark-red dot-blot haemorrhages
            region = _blob(rng, s, cy, cx, r, lobes=0.2) & retina
            canvas = np.broadcast_to(np.array([1.0, 0.86, 0.28], np.float32), img.shape).copy()
            n = int(rng.integers(8, 14))
            ang, rad = rng.uniform(0, 2 * np.pi, n), 0.85 * r * np.sqrt(rng.uniform(0, 1, n))
            canvas[_dots(s, list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang))),
                         rng.uniform(1.5, 3.0, n) * unit)] = (0.45, 0.04, 0.04)
            _paint(img, region, canvas, alpha=k)
        else:  # Proliferative DR: large dark-red preretinal haemorrhage with a tangle of new vessels
            haem = _ellipse(s, cy, cx, 0.75 * r, r) & (yy > cy - 0.45 * r) & retina  # boat shape: flat top
            paths = [_curve(rng, (cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 0) * r),
                            (cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 0.2) * r), rng.uniform(-0.6, 0.6))
                     for _ in range(int(rng.integers(8, 13)))]
            nv = _lines(s, paths, width=max(1, round(unit))) & retina
            _paint(img, nv, (0.55, 0.02, 0.06), alpha=k, soften=0.0)
            _paint(img, haem, (0.30, 0.02, 0.02), alpha=k)
            region = nv | haem
        drawn.lesions.append(_Lesion(0, region, label))
    if hard:  # dust on the lens: a soft grey spot
        gy, gx = _place(rng, s, 0.06 * s, lambda y, x: math.hypot(y - s / 2, x - s / 2) < 0.35 * s)
        _paint(img, _ellipse(s, gy, gx, 0.04 * s, 0.04 * s), (0.35, 0.3, 0.28), alpha=0.35, soften=1.5)
    drawn.images[0] = _finish(img, rng, 0.012)
    return drawn


def _render_pathology(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s = cfg.image_size
    unit = s / 112
    stroma = np.array([0.93, 0.74, 0.85], np.float32)
    img = np.broadcast_to(stroma, (s, s, 3)) * (1.0 + 0.02 * _smooth_noise(rng, s, 10)[..., None])
    img = img.astype(np.float32)
    alveoli = _smooth_noise(rng, s, 9) > 0.15
    _paint(img, alveoli, (0.98, 0.93, 0.97), alpha=0.6, soften=0.8)
    n = int(30 * unit * unit)
    pts = rng.uniform(0, s, (n, 2))
    walls = ~alveoli[pts[:, 0].astype(int), pts[:, 1].astype(int)]
    nuclei = _dots(s, [tuple(p) for p in pts[walls]], [1.2 * unit] * int(walls.sum()))
    _paint(img, nuclei, (0.45, 0.28, 0.62), alpha=0.8, soften=0.0)
    label, k = labels[0], _contrast(hard)
    drawn = _Drawn([img])
    if label != DOMAIN_SPECS["pathology"].normal:
        r = _size(rng, hard, (0.23, 0.26), (0.13, 0.15)) * s
        cy, cx = _place(rng, s, _extent(r, lobes=0.2))
        region = _blob(rng, s, cy, cx, r, lobes=0.2)
        yy, xx = _grid(s)
        if label == "lung adenocarcinoma":  # dense dark-purple sheet of glands with small white lumens
            canvas = np.broadcast_to(np.array([0.42, 0.22, 0.62], np.float32), img.shape).copy()
            m = int(rng.integers(4, 7))
            ang, rad = rng.uniform(0, 2 * np.pi, m), 0.65 * r * np.sqrt(rng.uniform(0, 1, m))
            cen = list(zip(cy + rad * np.sin(ang), cx + rad * np.cos(ang)))
            lumen_r = rng.uniform(2.0, 3.5, m) * unit
            canvas[_dots(s, cen, lumen_r + 1.5 * unit) & ~_dots(s, cen, lumen_r)] = (0.25, 0.10, 0.45)
            canvas[_dots(s, cen, lumen_r)] = (0.96, 0.93, 0.97)
        else:  # squamous cell carcinoma: solid red-pink keratinising sheet, dark nuclei, keratin pearls
            canvas = np.broadcast_to(np.array([0.90, 0.30, 0.40], np.float32), img.shape).copy()
            m = int(30 * unit * unit)
            nuc = rng.uniform(cy - r, cy + r, m), rng.uniform(cx - r, cx + r, m)
            canvas[_dots(s, list(zip(*nuc)), [1.6 * unit] * m)] = (0.45, 0.10, 0.30)
            for _ in range(int(rng.integers(1, 3))):
                py, px = cy + rng.uniform(-0.5, 0.5) * r, cx + rng.uniform(-0.5, 0.5) * r
                d = np.hypot(yy - py, xx - px)
                pearl = d < 5.5 * unit
                canvas[pearl & (np.sin(d / unit * 1.6) > 0)] = (0.99, 0.55, 0.40)
                canvas[pearl & (np.sin(d / unit * 1.6) <= 0)] = (0.85, 0.32, 0.36)
        _paint(img, region, canvas, alpha=k, soften=0.8)
        drawn.lesions.append(_Lesion(0, region, label))
    if hard:  # tissue fold: a darker pink band
        p0, p1 = tuple(rng.uniform(0, s, 2)), tuple(rng.uniform(0, s, 2))
        _paint(img, _lines(s, [_curve(rng, p0, p1, 0.1)], width=int(4 * unit)), (0.80, 0.50, 0.70), alpha=0.45)
    drawn.images[0] = _finish(img, rng, 0.012)
    return drawn


def _slice_plan(rng: np.random.Generator, n: int, hard: bool) -> list[tuple[int, float]]:
    """Slices showing the lesion as (index, size factor), the larger first: 2 consecutive slices (1 if n == 1).

    Two, not more, so that the reference answer (one box per slice) stays short.
    """
    if n == 1:
        return [(0, 1.0)]
    k = int(rng.integers(n - 1))
    main, other = (k, k + 1) if rng.random() < 0.5 else (k + 1, k)
    return [(main, 1.0), (other, 0.7 if hard else 0.85)]


def _head(s: int, k: int, n: int) -> tuple[float, float, float]:
    """(centre, ry, rx) of the inner skull on slice k of n (the head is widest near the middle)."""
    f = 0.84 + 0.16 * math.sin(math.pi * (k + 0.5) / n)
    return s / 2, 0.40 * s * f, 0.34 * s * f


def _render_volume(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig,
                   domain: str) -> _Drawn:
    s, n = cfg.volume_size, cfg.volume_slices
    ct = domain == "ct"
    label = labels[0]
    normal = label == DOMAIN_SPECS[domain].normal
    plan = [] if normal else _slice_plan(rng, n, hard)
    # One lesion geometry for the volume; slices show it at different sizes.
    angle = rng.uniform(0, 2 * np.pi)
    rel = rng.uniform(0.0, 0.25)  # intra-axial centre, as a fraction of the brain radius
    radius = _size(rng, hard, (0.17, 0.2), (0.11, 0.13))
    slices, lesions = [], []
    for k in range(n):
        c, ry, rx = _head(s, k, n)
        brain = _ellipse(s, c, c, ry, rx)
        skull = _ellipse(s, c, c, ry + 0.05 * s, rx + 0.05 * s) & ~brain
        img = np.zeros((s, s), np.float32)
        if ct:
            img[brain] = 0.4 + 0.015 * _smooth_noise(rng, s, 6)[brain]
            img[skull] = 1.0
        else:
            img[brain] = 0.45 + 0.02 * _smooth_noise(rng, s, 6)[brain]
            cortex = brain & ~_ellipse(s, c, c, ry - 0.04 * s, rx - 0.04 * s)
            img[cortex] = 0.38
            scalp = _ellipse(s, c, c, ry + 0.08 * s, rx + 0.08 * s) & ~_ellipse(s, c, c, ry + 0.05 * s, rx + 0.05 * s)
            img[scalp] = 0.5
        if 0 < k < n - 1 or n <= 2:  # ventricles on the middle slices
            vent = (_ellipse(s, c - 0.02 * s, c - 0.06 * s, 0.09 * s, 0.03 * s)
                    | _ellipse(s, c - 0.02 * s, c + 0.06 * s, 0.09 * s, 0.03 * s))
            img[vent & brain] = 0.15
        size = dict(plan).get(k)
        if size is not None:
            mask = _volume_lesion(rng, img, s, c, ry, rx, brain, label, hard, radius * size, angle, rel)
            lesions.append(_Lesion(k, mask, label))
        slices.append(img)
    if hard:  # a small dark lacune on a random slice
        k = int(rng.integers(n))
        c, ry, rx = _head(s, k, n)
        ly, lx = _place(rng, s, 0.05 * s, lambda y, x: ((y - c) / ry) ** 2 + ((x - c) / rx) ** 2 < 0.4)
        _paint(slices[k], _ellipse(s, ly, lx, 0.035 * s, 0.035 * s), 0.25 if ct else 0.2, alpha=0.7)
    slices = [_finish(img, rng, 0.015) for img in slices]
    order = {k: i for i, (k, _) in enumerate(plan)}
    lesions.sort(key=lambda les: order[les.image])
    return _Drawn(slices, lesions)


def _volume_lesion(rng: np.random.Generator, img: np.ndarray, s: int, c: float, ry: float, rx: float,
                   brain: np.ndarray, label: str, hard: bool, radius: float, angle: float, rel: float) -> np.ndarray:
    """Draw one slice's cross-section of a CT/MRI lesion (radius: fraction of the side) into ``img``; return its mask.

    Grey levels tell the classes apart: CT subdural blood is moderately bright (0.68), intraparenchymal blood very
    bright (0.95); an MRI meningioma is homogeneously very bright (0.95), a glioma mostly dark (necrosis) inside a
    thin bright rim.
    """
    yy, xx = _grid(s)
    k = _contrast(hard)
    r = radius * s
    if label == "subdural hemorrhage":  # thick crescent along the inner skull
        width = r
        inner = _ellipse(s, c - 0.9 * width * math.sin(angle), c - 0.9 * width * math.cos(angle), ry - 0.2 * width,
                         rx - 0.2 * width)  # shifted away from the lesion side
        theta = np.arctan2(yy - c, xx - c)
        mask = brain & ~inner & (np.cos(theta - angle) > 0.05)
        _paint(img, mask, 0.68, alpha=k)
        return mask
    if label == "meningioma":  # dural-based, against the inner skull
        r *= 1.15
        cy, cx = c + (ry - 0.75 * r) * math.sin(angle), c + (rx - 0.75 * r) * math.cos(angle)
        mask = _blob(rng, s, cy, cx, r, lobes=0.05) & brain
        _paint(img, mask, 0.95, alpha=k)
        return mask
    cy, cx = c + rel * ry * math.sin(angle), c + rel * rx * math.cos(angle)
    if label == "intraparenchymal hemorrhage":
        mask = _blob(rng, s, cy, cx, r, lobes=0.12, aspect=rng.uniform(0.8, 1.0)) & brain
        _paint(img, mask, 0.95, alpha=k)
        return mask
    # glioma: thin enhancing rim around a large dark necrotic core
    mask = _blob(rng, s, cy, cx, r, lobes=0.25) & brain
    core = ndimage.binary_erosion(mask, iterations=max(1, round(0.12 * r)))
    _paint(img, mask, 0.95, alpha=k, soften=0.4)
    _paint(img, core, 0.06, alpha=k, soften=0.4)
    return mask


def _render_ct(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    return _render_volume(rng, labels, hard, cfg, "ct")


def _render_mri(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    return _render_volume(rng, labels, hard, cfg, "mri")


def _render_ultrasound(rng: np.random.Generator, labels: tuple[str, ...], hard: bool, cfg: ClimbMiniConfig) -> _Drawn:
    s, n = cfg.image_size, cfg.ultrasound_frames
    pad = max(2, s // 28)  # probe motion between frames, in pixels
    big = s + 2 * pad
    yy, xx = _grid(big)
    tissue = np.full((big, big), 0.5, np.float32)
    tissue[yy < 0.12 * big] = 0.75  # skin
    tissue[(yy >= 0.12 * big) & (yy < 0.3 * big)] = 0.35  # subcutaneous fat
    tissue += 0.04 * _smooth_noise(rng, big, 7)
    label, k = labels[0], _contrast(hard)
    lesion = None
    if label != DOMAIN_SPECS["ultrasound"].normal:
        if label == "benign":  # wide, smooth, grey (hypoechoic) oval over a bright posterior band
            r, aspect, lobes, spikes = _size(rng, hard, (0.19, 0.22), (0.12, 0.14)), rng.uniform(0.6, 0.7), 0.05, 0.0
        else:  # taller-than-wide, spiculated, black mass over a dark posterior shadow
            r, aspect, lobes, spikes = _size(rng, hard, (0.12, 0.14), (0.075, 0.09)), rng.uniform(1.3, 1.5), 0.2, 0.4
        r *= s
        ext = _extent(r, aspect, lobes, spikes)
        cy, cx = _place(rng, big, ext, lambda y, x: 0.36 * big < y < 0.6 * big and 0.3 * big < x < 0.7 * big,
                        margin=pad + 1)
        lesion = _blob(rng, big, cy, cx, r, aspect=aspect, angle=0.0, lobes=lobes, spikes=spikes,
                       n_spikes=int(rng.integers(7, 12)))
        cols = lesion.any(axis=0)
        below = (yy > cy) & cols[None, :] & (yy < cy + 2.2 * ext) & ~lesion
        if label == "benign":
            _paint(tissue, below, 0.9, alpha=0.8 * k, soften=1.5)  # posterior enhancement
            _paint(tissue, lesion, 0.25, alpha=k)
        else:
            _paint(tissue, below, 0.1, alpha=0.8 * k, soften=1.5)  # posterior shadow
            _paint(tissue, lesion, 0.0, alpha=k)
    if hard:  # hyperechoic fat lobule
        hy, hx = _place(rng, big, 0.06 * s, lambda y, x: 0.35 * big < y < 0.85 * big, margin=pad + 1)
        _paint(tissue, _ellipse(big, hy, hx, 0.035 * s, 0.055 * s), 0.8, alpha=0.6)
    sy, sx = _grid(s)
    ang = np.arctan2(sx - s / 2, sy + 0.15 * s)
    dist = np.hypot(sx - s / 2, sy + 0.15 * s)
    fan = (np.abs(ang) < math.radians(40)) & (dist > 0.2 * s) & (dist < 1.12 * s)
    gain = np.exp(-0.3 * sy / s)  # depth attenuation
    drawn = _Drawn([])
    for f in range(n):
        oy, ox = pad, pad
        if f > 0:
            oy, ox = pad + int(rng.integers(-pad, pad + 1)), pad + int(rng.integers(-pad, pad + 1))
        frame = tissue[oy:oy + s, ox:ox + s] * gain
        speckle = rng.rayleigh(1.0, (s, s)).astype(np.float32) / math.sqrt(math.pi / 2)
        frame = np.where(fan, frame * (0.6 + 0.4 * speckle), 0.0).astype(np.float32)
        drawn.images.append(_finish(frame, rng, 0.01))
        if lesion is not None:
            drawn.lesions.append(_Lesion(f, lesion[oy:oy + s, ox:ox + s] & fan, label))
    return drawn


_RENDERERS: dict[str, Callable[[np.random.Generator, tuple[str, ...], bool, ClimbMiniConfig], _Drawn]] = {
    "chest_xray": _render_chest_xray,
    "mammography": _render_mammography,
    "dermoscopy": _render_dermoscopy,
    "fundus": _render_fundus,
    "pathology": _render_pathology,
    "ct": _render_ct,
    "ultrasound": _render_ultrasound,
    "mri": _render_mri,
}


# --------------------------------------------------------------------------------------------------------------
# Writing


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


def _rng_for(seed: int, item: _Item) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, DOMAINS.index(item.domain), item.number]))


def _make_record(item: _Item, cfg: ClimbMiniConfig, out_dir: Path) -> Record:
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

    drawn = _RENDERERS[item.domain](rng, item.labels, item.hard, cfg)
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
    d = asdict(cfg)
    d["domain_weights"] = dict(cfg.domain_weights) if cfg.domain_weights is not None else dict(DEFAULT_TRAIN_WEIGHTS)
    d["eval_domain_weights"] = (dict(cfg.eval_domain_weights) if cfg.eval_domain_weights is not None
                                else {dom: 1.0 for dom in DOMAINS})
    return d


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
    for split, items in _plan(config).items():
        records[split] = [_make_record(item, config, out_dir) for item in items]
        write_records(records[split], out_dir / f"{split}.jsonl")
    stats = _stats(config, records)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / "datasheet.md").write_text(_datasheet(stats), encoding="utf-8")
    return stats


__all__ = [
    "CLIMB_MINI_VERSION",
    "ClimbMiniConfig",
    "DEFAULT_TRAIN_WEIGHTS",
    "DOMAIN_SPECS",
    "DomainSpec",
    "LABELS",
    "allocate",
    "generate_climb_mini",
    "simulate_ecg",
    "tight_box",
]
