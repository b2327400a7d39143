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

Modules: ``domains`` (label sets, wording), ``config`` (:class:`ClimbMiniConfig`), ``plan`` (which rows exist),
``ecg`` (the ECG simulator), ``images`` (drawing and one renderer per image domain), ``generate`` (writing it all);
``fusion`` (a separate ``multimodal`` task whose answer needs the ECG, the X-ray and the note together).
"""

from .config import CLIMB_MINI_VERSION, DEFAULT_TRAIN_WEIGHTS, ClimbMiniConfig
from .domains import DOMAIN_SPECS, LABELS, DomainSpec
from .ecg import simulate_ecg
from .fusion import generate_fusion
from .generate import generate_climb_mini, tight_box
from .plan import allocate

__all__ = [
    "CLIMB_MINI_VERSION",
    "ClimbMiniConfig",
    "DEFAULT_TRAIN_WEIGHTS",
    "DOMAIN_SPECS",
    "DomainSpec",
    "LABELS",
    "allocate",
    "generate_climb_mini",
    "generate_fusion",
    "simulate_ecg",
    "tight_box",
]
