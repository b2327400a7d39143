"""The record: one row of a qoqmed jsonl file, its validation and (de)serialisation.

A row looks like::

    {"id": "ct-000123", "domain": "ct", "dataset": "climb_mini/ct", "split": "train",
     "problem": "<image><image>\\nQuestion ... Options: A, B, C.", "answer": "A, B",
     "images": ["ct/climb_mini_ct/000123/slice_0.png", ...], "ecg": ["ecg/.../000012.npy"],
     "volumes": ["ct/lidc/0007/series", {"path": "mri/brats/0001/t1.nii.gz", "slices": 4, "window": "brain"}],
     "boxes": [{"bbox_2d": [x1, y1, x2, y2], "label": "A", "image": 1}],
     "segmentation_path": "ct/climb_mini_ct/000123/mask.png", "difficulty": "easy"}

Conventions:

- Paths are relative to the folder of the jsonl file that holds the row.
- ``problem`` holds one ``<image>`` per entry of ``images``, one ``<volume>`` per entry of ``volumes`` and one
  ``<ecg>`` per entry of ``ecg``, in prompt order. A row with no placeholder of a kind gets them added before the
  text (see :func:`place_inputs`, which the inference pipeline uses too). A row with some placeholders but the
  wrong count is an error.
- A volume (CT/MRI: a DICOM series folder, NIfTI, multi-frame DICOM; or an ultrasound video) is a path or an
  object ``{"path", "slices", "window", "axis"}``; when the record is loaded its ``<volume>`` becomes ``slices``
  (default 4) ``<image>`` placeholders, one per uniformly sampled slice (see ``qoqmed.data.volumes``).
- Boxes are ``[x1, y1, x2, y2]`` in original pixels of ``images[image]``, pixel-edge coordinates (a box covering
  pixel columns 3..7 is ``x1=3, x2=8``).
- ``segmentation_path`` is a binary mask of the image of the first box (image 0 when there are no boxes).

CLIMB's LLaVA-style rows are read as well: the first human turn of ``conversations`` is the problem, ``label``
(a string or list) or else the first gpt turn (its ``\\boxed{}`` content if any) the answer, and ``image``/``video``
(single paths) are read as ``images``/``videos``.

Rows in the reference (QoQ-Med) layout are accepted too: ``time-series`` is read as ``ecg``, ``videos`` as
``volumes`` (with ``<video>`` placeholders read as ``<volume>``), ``bbox`` becomes one
box on image 0 labelled with the answer (the reference's ``[0, 0, 0, 0]`` placeholder means no box), a missing
``domain`` comes from the first path component of ``images[0]`` (``"ct/..." -> "ct"``; ``volumes[0]`` for a row
without images), a missing ``dataset`` from the first two, and a missing ``id`` from the line number.

Domain names go through ``qoqmed.data.domains.canonical_domain``: the released data's folder names (``derm``,
``MAMMO``...) become built-in domains, and any other well-formed name (``oct``) is kept, lower-cased, as a user
domain.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rewards.parsing import split_labels
from .domains import DOMAIN_NAME_RULE, canonical_domain
from .errors import DataError, printable
from .files import TENSOR_SUFFIXES
from .limits import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE
from .windows import WINDOWS

# How questions and rationales name each domain's pictures; one table, so converted rows and warm-start answers agree.
MODALITY_NAMES: Mapping[str, str] = {
    "ecg": "ECG", "chest_xray": "chest X-ray", "mammography": "mammogram", "dermoscopy": "dermoscopy image",
    "fundus": "fundus photograph", "pathology": "histopathology slide", "ct": "CT scan", "ultrasound": "ultrasound",
    "mri": "MRI scan", "multimodal": "combined record", "ehr": "health record",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
DIFFICULTIES: tuple[str, ...] = ("easy", "hard")
IMAGE_TOKEN = "<image>"
ECG_TOKEN = "<ecg>"
VOLUME_TOKEN = "<volume>"
VIDEO_TOKEN = "<video>"  # the reference's name for the same thing
PLACEHOLDER_ORDER = (IMAGE_TOKEN, VOLUME_TOKEN, ECG_TOKEN)
DEFAULT_VOLUME_SLICES = 4
MAX_VOLUME_SLICES = 64

# Keys this module reads; anything else in a row is kept verbatim in Record.extra (LLaVA's conversations, label,
# image and video are consumed by from_llava when it uses them).
_KNOWN_KEYS = frozenset(
    {
        "id", "domain", "dataset", "split", "problem", "answer", "images", "ecg", "boxes",
        "segmentation_path", "difficulty", "time-series", "bbox", "videos", "volumes",
    }
)


@dataclass(frozen=True)
class Box:
    """A box around one finding: ``bbox_2d`` is ``[x1, y1, x2, y2]`` in original pixels of ``images[image]``."""

    bbox_2d: tuple[float, float, float, float]
    label: str
    image: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The jsonl form of the box."""
        return {"bbox_2d": list(self.bbox_2d), "label": self.label, "image": self.image}


@dataclass(frozen=True)
class VolumeRef:
    """A volume or video of a record and how to sample it: ``slices`` uniformly spaced slices, ``window`` a preset
    name or (center, width) (None: the file's own or automatic), ``axis`` a plane name or array axis (None: as
    acquired)."""

    path: str
    slices: int = DEFAULT_VOLUME_SLICES
    window: str | tuple[float, float] | None = None
    axis: str | int | None = None

    def to_json(self) -> str | dict[str, Any]:
        """A bare path when every option is the default, else an object."""
        if self.slices == DEFAULT_VOLUME_SLICES and self.window is None and self.axis is None:
            return self.path
        out: dict[str, Any] = {"path": self.path, "slices": self.slices}
        if self.window is not None:
            out["window"] = self.window if isinstance(self.window, str) else list(self.window)
        if self.axis is not None:
            out["axis"] = self.axis
        return out


@dataclass(frozen=True)
class ECGFormat:
    """How to read an ECG file that is not in the model's layout: its sampling rate ``fs`` (Hz) and optionally the
    names of its channels (``leads``); the reader resamples it and picks the encoder's leads. A row gives it as
    ``{"path": ..., "fs": Hz, "leads": [...]}`` in ``ecg``; a ``.csv`` ECG needs it, since CSV stores no rate."""

    fs: float
    leads: tuple[str, ...] | None = None


@dataclass
class Record:
    """One validated row. Paths stay relative; ``resolve`` joins them with ``base_dir``."""

    id: str
    domain: str
    dataset: str
    problem: str
    answer: str
    images: list[str] = field(default_factory=list)
    ecg: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None
    segmentation_path: str | None = None
    difficulty: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    volumes: list[VolumeRef] = field(default_factory=list)
    ecg_formats: dict[int, ECGFormat] = field(default_factory=dict)  # ecg index -> rate and leads of that file

    @property
    def labels(self) -> list[str]:
        """Ground-truth labels (``answer`` split with ``split_labels``)."""
        return split_labels(self.answer)

    @property
    def mask_image(self) -> int | None:
        """Index into ``images`` of the image that ``segmentation_path`` masks, or None without a mask."""
        if self.segmentation_path is None:
            return None
        return self.boxes[0].image if self.boxes else 0

    def resolve(self, path: str) -> Path:
        """Absolute-or-relative-to-cwd path of a path stored in this record."""
        if self.base_dir is None:
            raise DataError(f"record {self.id!r}: cannot resolve {path!r}: the record has no base_dir")
        return self.base_dir / path

    def files(self) -> list[tuple[str, str]]:
        """``(field, relative path)`` of every file the record references."""
        out = [(f"images[{i}]", p) for i, p in enumerate(self.images)]
        out += [(f"volumes[{i}]", v.path) for i, v in enumerate(self.volumes)]
        out += [(f"ecg[{i}]", p) for i, p in enumerate(self.ecg)]
        if self.segmentation_path is not None:
            out.append(("segmentation_path", self.segmentation_path))
        return out

    def to_dict(self, base_dir: str | Path | None = None) -> dict[str, Any]:
        """The jsonl form. With ``base_dir``, paths are rewritten relative to that folder."""

        def rel(p: str) -> str:
            if base_dir is None or self.base_dir is None:
                return p
            return Path(os.path.relpath(self.base_dir / p, Path(base_dir))).as_posix()

        row: dict[str, Any] = {"id": self.id, "domain": self.domain, "dataset": self.dataset}
        if self.split is not None:
            row["split"] = self.split
        row["problem"] = self.problem
        row["answer"] = self.answer
        row["images"] = [rel(p) for p in self.images]
        row["ecg"] = [rel(p) if i not in self.ecg_formats else _ecg_entry(rel(p), self.ecg_formats[i])
                      for i, p in enumerate(self.ecg)]
        if self.volumes:
            row["volumes"] = [
                rel(v.path) if isinstance(j := v.to_json(), str) else {**j, "path": rel(v.path)} for v in self.volumes
            ]
        row["boxes"] = [b.to_dict() for b in self.boxes]
        row["segmentation_path"] = None if self.segmentation_path is None else rel(self.segmentation_path)
        if self.difficulty is not None:
            row["difficulty"] = self.difficulty
        for key, value in self.extra.items():
            row.setdefault(key, value)
        return row


# --------------------------------------------------------------------------------------------------------------
# Parsing


class _Problems:
    """Collects ``(field, reason)`` pairs while a row is parsed."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_name: str, reason: str) -> None:
        self.items.append((field_name, reason))


def _where(line_no: int | None, obj: Any) -> str:
    if line_no is not None:
        return f"line {line_no}"
    if isinstance(obj, Mapping) and isinstance(obj.get("id"), str):
        return f"record {obj['id']!r}"
    return "record"


def _string(obj: Mapping[str, Any], key: str, probs: _Problems, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            probs.add(key, "missing")
        return None
    if not isinstance(value, str):
        probs.add(key, f"must be a string, got {type(value).__name__}")
        return None
    if not value.strip():
        probs.add(key, "must not be empty")
        return None
    return value


def _choice(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], probs: _Problems) -> str | None:
    value = _string(obj, key, probs, required=False)
    if value is not None and value not in allowed:
        probs.add(key, f"{value!r} is not one of {', '.join(allowed)}")
        return None
    return value


def _path_list(value: Any, key: str, probs: _Problems) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        probs.add(key, f"must be a list of paths, got {type(value).__name__}")
        return []
    paths: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            probs.add(f"{key}[{i}]", f"must be a non-empty path string, got {item!r:.60}")
        elif _is_absolute(item):
            probs.add(f"{key}[{i}]", f"{item!r} is absolute; paths must be relative to the jsonl's folder")
        else:
            paths.append(item)
    return paths


def _volumes(value: Any, key: str, probs: _Problems) -> list[VolumeRef]:
    """Volume entries: a path string or {"path", "slices", "window", "axis"}."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, list):
        probs.add(key, f"must be a list of paths or objects, got {type(value).__name__}")
        return []
    refs: list[VolumeRef] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        n_before = len(probs.items)
        if isinstance(item, str):
            paths = _path_list([item], where, _Relabel(probs, where, strip_index=True))
            if paths:
                refs.append(VolumeRef(paths[0]))
            continue
        if not isinstance(item, Mapping):
            probs.add(where, f"must be a path or an object with path, slices, window, axis; got {item!r:.60}")
            continue
        unknown = sorted(set(item) - {"path", "slices", "window", "axis"})
        if unknown:
            probs.add(where, f"unknown key(s) {', '.join(unknown)}; allowed: path, slices, window, axis")
        paths = _path_list([item.get("path")] if item.get("path") is not None else None, where,
                           _Relabel(probs, where, strip_index=True))
        if item.get("path") is None:
            probs.add(f"{where}.path", "missing")
        slices = item.get("slices", DEFAULT_VOLUME_SLICES)
        if isinstance(slices, bool) or not isinstance(slices, int) or not 1 <= slices <= MAX_VOLUME_SLICES:
            probs.add(f"{where}.slices", f"must be an integer 1..{MAX_VOLUME_SLICES}, got {slices!r}")
        window = _volume_window(item.get("window"), f"{where}.window", probs)
        axis = item.get("axis")
        if axis is not None and axis not in ("axial", "coronal", "sagittal", 0, 1, 2) or isinstance(axis, bool):
            probs.add(f"{where}.axis", f"must be axial, coronal, sagittal, 0, 1, 2 or null; got {axis!r}")
        if len(probs.items) == n_before and paths:
            refs.append(VolumeRef(paths[0], slices, window, axis))
    return refs


def _ecg_entry(path: str, fmt: ECGFormat) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "fs": fmt.fs}
    if fmt.leads is not None:
        out["leads"] = list(fmt.leads)
    return out


# ECG files whose sampling rate is stored in the file (WFDB, DICOM) or fixed by the model layout (.npy and .pt
# without a rate, read as 8 leads x 2500 samples at 250 Hz); a .csv stores none.
_RATE_IN_FILE = (".hea", ".dat", ".dcm")
_RATE_FIXED = TENSOR_SUFFIXES


def _ecg_list(value: Any, key: str, probs: _Problems) -> tuple[list[str], dict[int, ECGFormat]]:
    """ECG entries: a path, or ``{"path", "fs", "leads"}`` for a file at another rate or lead order."""
    if value is None:
        return [], {}
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, list):
        probs.add(key, f"must be a list of paths or objects, got {type(value).__name__}")
        return [], {}
    paths: list[str] = []
    formats: dict[int, ECGFormat] = {}
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        n_before = len(probs.items)
        fmt = None
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - {"path", "fs", "leads"})
            if unknown:
                probs.add(where, f"unknown key(s) {', '.join(unknown)}; allowed: path, fs, leads")
            if item.get("path") is None:
                probs.add(f"{where}.path", "missing")
            fmt = _ecg_format(item, where, probs)
            item = item.get("path")
            if item is None:
                continue
        found = _path_list([item], where, _Relabel(probs, where, strip_index=True))
        if not found:
            continue
        suffix = posixpath.splitext(found[0].lower())[1]
        if fmt is None and suffix == ".csv":
            probs.add(where, f"{found[0]!r}: a CSV ECG stores no sampling rate; give it as "
                             '{"path": ..., "fs": <Hz>, "leads": [...]} (leads default to the CSV header)')
        elif fmt is not None and (suffix in _RATE_IN_FILE + _RATE_FIXED or not suffix):
            probs.add(f"{where}.fs", f"{found[0]!r}: " + ("the rate is read from the file"
                                                          if suffix in _RATE_IN_FILE or not suffix else
                                                          "a .pt tensor is read as it is (8 x 2500, the model's "
                                                          "layout); give no fs"))
        if len(probs.items) == n_before:
            if fmt is not None:
                formats[len(paths)] = fmt
            paths.append(found[0])
    return paths, formats


def _ecg_format(item: Mapping[str, Any], where: str, probs: _Problems) -> ECGFormat | None:
    fs, leads = item.get("fs"), item.get("leads")
    if fs is None:
        probs.add(f"{where}.fs", "missing (the sampling rate in Hz)")
        return None
    if not _number(fs) or not MIN_SAMPLING_RATE <= fs <= MAX_SAMPLING_RATE:
        probs.add(f"{where}.fs", f"must be a number of Hz within {MIN_SAMPLING_RATE:g}..{MAX_SAMPLING_RATE:g}, "
                                 f"got {fs!r:.40}")
        return None
    if leads is not None and (not isinstance(leads, list) or not leads
                              or not all(isinstance(x, str) and x.strip() for x in leads)):
        probs.add(f"{where}.leads", f"must be a list of lead names, got {leads!r:.60}")
        return None
    return ECGFormat(float(fs), tuple(leads) if leads is not None else None)


def _volume_window(value: Any, key: str, probs: _Problems) -> str | tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in WINDOWS:
            probs.add(key, f"{value!r} is not a window preset ({', '.join(WINDOWS)}) or [center, width]")
            return None
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value) and value[1] >= 1:
        return (float(value[0]), float(value[1]))
    probs.add(key, f"must be a preset name or [center, width] with width >= 1, got {value!r:.60}")
    return None


def leaves_folder(path: str) -> bool:
    """Whether a relative path climbs out of the folder it is relative to ("../x", "a/../../x"), judged from
    its text: rows come from strangers, so where a path points is decided before anything is opened."""
    normal = posixpath.normpath(path.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", path))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coords(value: Any, key: str, probs: _Problems) -> tuple[float, float, float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_number(v) for v in value):
        probs.add(key, f"must be 4 finite numbers [x1, y1, x2, y2], got {value!r:.80}")
        return None
    x1, y1, x2, y2 = value
    if min(x1, y1) < 0:
        probs.add(key, f"coordinates must be >= 0, got {list(value)}")
        return None
    if not (x1 < x2 and y1 < y2):
        probs.add(key, f"needs x1 < x2 and y1 < y2, got {list(value)}")
        return None
    return (x1, y1, x2, y2)


def _boxes(value: Any, n_images: int, probs: _Problems) -> list[Box]:
    if value is None:
        return []
    if not isinstance(value, list):
        probs.add("boxes", f"must be a list, got {type(value).__name__}")
        return []
    if value and n_images == 0:
        probs.add("boxes", "boxes need an image, but `images` is empty")
        return []
    boxes: list[Box] = []
    for i, item in enumerate(value):
        key = f"boxes[{i}]"
        if not isinstance(item, Mapping):
            probs.add(key, f"must be an object with bbox_2d, label, image; got {type(item).__name__}")
            continue
        n_before = len(probs.items)
        coords = _coords(item.get("bbox_2d"), f"{key}.bbox_2d", probs)
        label = _string(item, "label", _Relabel(probs, key))
        image = item.get("image")
        if image is None:
            if n_images == 1:
                image = 0
            else:
                probs.add(f"{key}.image", f"missing; required when the record has {n_images} images")
        elif not isinstance(image, int) or isinstance(image, bool):
            probs.add(f"{key}.image", f"must be an integer index, got {image!r}")
        elif not 0 <= image < n_images:
            probs.add(f"{key}.image", f"index {image} out of range for {n_images} image(s)")
        if len(probs.items) == n_before and coords is not None and label is not None:
            boxes.append(Box(coords, label, image))
    return boxes


class _Relabel(_Problems):
    """Prefixes field names with a parent key (for fields nested in a box); or, with ``strip_index``, reports
    under the parent key alone (a one-element list parsed for an entry that is already indexed)."""

    def __init__(self, parent: _Problems, prefix: str, strip_index: bool = False) -> None:
        self.parent, self.prefix, self.strip_index = parent, prefix, strip_index

    def add(self, field_name: str, reason: str) -> None:
        self.parent.add(self.prefix if self.strip_index else f"{self.prefix}.{field_name}", reason)


def _reference_box(obj: Mapping[str, Any], answer: str | None, probs: _Problems) -> list[Box]:
    value = obj.get("bbox")
    if value is None or value == [] or (isinstance(value, list) and value == [0, 0, 0, 0]):
        return []
    coords = _coords(value, "bbox", probs)
    if coords is None or answer is None:
        return []
    return [Box(coords, answer, 0)]


def place_inputs(text: str, counts: Mapping[str, int]) -> tuple[str, list[tuple[str, int, int]]]:
    """Add the placeholders ``text`` lacks for ``counts`` (token -> number of inputs); return the text and, for each
    kind whose placeholders are present but miscounted, ``(token, found, expected)``.

    A kind with no placeholder in the text gets its tokens in front of it: images, volumes, then ECGs, then a line
    break. One rule for rows read from disk and for inference prompts, and the layout of every row this package
    writes (CLIMB-mini, the converters), so that a model sees its inputs where it saw them in training.
    """
    missing, mismatches = "", []
    for token in PLACEHOLDER_ORDER:
        expected, found = counts.get(token, 0), text.count(token)
        if found == 0:
            missing += token * expected
        elif found != expected:
            mismatches.append((token, found, expected))
    return (f"{missing}\n{text}" if missing else text), mismatches


NOTES_LABEL = "Clinical notes: "


def append_notes(text: str, notes: str | None) -> str:
    """``text`` followed by clinical notes (EHR text) on their own line: the one layout of notes in training rows
    (whose ``ehr`` field holds the notes, so evaluation can drop them) and in inference prompts."""
    return f"{text}\n{NOTES_LABEL}{notes.strip()}" if notes and notes.strip() else text


def _infer_domain(paths: list[str]) -> str | None:
    return paths[0].split("/")[0] if paths else None


def from_llava(obj: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A LLaVA-style row (``conversations``, ``label``, ``image``/``video``) in this module's layout, and the
    ``(field, reason)`` problems met. Rows without ``conversations`` come back unchanged."""
    row = dict(obj)
    problems: list[tuple[str, str]] = []
    for single, plural in (("image", "images"), ("video", "videos")):
        if single in row and plural not in row:
            row[plural] = row.pop(single)
    if "conversations" not in row or "problem" in row:
        return row, problems
    turns = row.pop("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) for t in turns):
        return row, [("conversations", "must be a list of {from, value} objects")]
    human = [t.get("value") for t in turns if t.get("from") in ("human", "user")]
    gpt = [t.get("value") for t in turns if t.get("from") in ("gpt", "assistant")]
    if human and isinstance(human[0], str):
        row["problem"] = human[0]
    else:
        problems.append(("conversations", "has no human turn with text"))
    label = row.pop("label", None)
    if isinstance(label, list):
        label = ", ".join(str(v) for v in label)
    if label is None and gpt and isinstance(gpt[0], str):
        boxed = re.search(r"\\boxed\{(.*)\}", gpt[0], flags=re.S)
        label = boxed.group(1).strip() if boxed else gpt[0].strip()
    if label is None:
        problems.append(("label", "missing, and no gpt turn to take the answer from"))
    elif "answer" not in row:
        row["answer"] = str(label)
    return row, problems


@dataclass
class _RowInputs:
    """The files a row lists, under the keys it used (``volumes`` or ``videos``, ``ecg`` or ``time-series``)."""

    images: list[str]
    volumes: list[VolumeRef]
    volume_key: str
    ecg: list[str]
    ecg_key: str
    ecg_formats: dict[int, ECGFormat]  # entries given with their own rate and leads, by position

    def named_paths(self) -> list[tuple[str, str]]:
        return ([(f"images[{i}]", x) for i, x in enumerate(self.images)]
                + [(f"{self.volume_key}[{i}]", v.path) for i, v in enumerate(self.volumes)]
                + [(f"{self.ecg_key}[{i}]", x) for i, x in enumerate(self.ecg)])


def _parse(obj: Any, base_dir: Path, line_no: int | None,
           allow_outside: bool = False) -> tuple[Record | None, list[tuple[str, str]]]:
    """A row as a Record, or every problem found in it as (field, reason) pairs, in field order."""
    probs = _Problems()
    if not isinstance(obj, Mapping):
        probs.add("<row>", f"must be a JSON object, got {type(obj).__name__}")
        return None, probs.items
    obj, llava_problems = from_llava(obj)
    for field_name, reason in llava_problems:
        probs.add(field_name, reason)

    rid = _string(obj, "id", probs, required=line_no is None)
    if rid is None and obj.get("id") is None and line_no is not None:
        rid = f"row-{line_no}"
    problem = _string(obj, "problem", probs)
    answer = _string(obj, "answer", probs)
    if answer is not None and not split_labels(answer):
        probs.add("answer", f"{answer!r} holds no label")
    inputs = _row_inputs(obj, probs)
    domain = _row_domain(obj, inputs, probs)
    dataset = _row_dataset(obj, inputs, probs)
    split = _choice(obj, "split", SPLITS, probs)
    difficulty = _choice(obj, "difficulty", DIFFICULTIES, probs)
    boxes = _row_boxes(obj, inputs, answer, probs)
    seg = _row_mask(obj, inputs, probs)
    if problem is not None:
        problem = _placed_problem(problem, inputs, probs)
    if not allow_outside:
        for field_name, rel in inputs.named_paths() + ([("segmentation_path", seg)] if seg else []):
            if leaves_folder(rel):
                probs.add(field_name, f"{rel!r} leaves the dataset folder; paths must stay inside the jsonl's folder "
                                      "(allow it explicitly with allow_outside=True, CLI --allow-outside-paths)")

    if probs.items:
        return None, probs.items
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    record = Record(
        id=rid, domain=domain, dataset=dataset, problem=problem, answer=answer, images=inputs.images, ecg=inputs.ecg,
        boxes=boxes, split=split, segmentation_path=seg, difficulty=difficulty, extra=extra, base_dir=Path(base_dir),
        volumes=inputs.volumes, ecg_formats=inputs.ecg_formats,
    )
    return record, []


def _row_inputs(obj: Mapping, probs: _Problems) -> _RowInputs:
    images = _path_list(obj.get("images"), "images", probs)
    if "volumes" in obj and "videos" in obj:
        probs.add("videos", "given together with `volumes`; use one of them")
    volume_key = "volumes" if "volumes" in obj else "videos"
    volumes = _volumes(obj.get(volume_key), volume_key, probs)
    if "ecg" in obj and "time-series" in obj:
        probs.add("time-series", "given together with `ecg`; use one of them")
    ecg_key = "ecg" if "ecg" in obj else "time-series"
    ecg, ecg_formats = _ecg_list(obj.get(ecg_key), ecg_key, probs)
    return _RowInputs(images, volumes, volume_key, ecg, ecg_key, ecg_formats)


def _row_domain(obj: Mapping, inputs: _RowInputs, probs: _Problems) -> str | None:
    """The row's domain, or where it has none, the one its first input's path or its ECG implies."""
    domain = _string(obj, "domain", probs, required=False)
    source = ""
    if domain is None and obj.get("domain") is None:
        domain, source = _infer_domain(inputs.images), " (from images[0])"
        if domain is None and inputs.volumes:
            domain, source = _infer_domain([inputs.volumes[0].path]), f" (from {inputs.volume_key}[0])"
        if domain is None and inputs.ecg:
            domain, source = "ecg", ""
        if domain is None:
            probs.add("domain", "missing and cannot be derived (no images, volumes or ECG)")
    if domain is not None:
        named, domain = domain, canonical_domain(domain)
        if domain is None:
            probs.add("domain", f"{named!r}{source} is not a domain name: {DOMAIN_NAME_RULE}")
    return domain


def _row_dataset(obj: Mapping, inputs: _RowInputs, probs: _Problems) -> str | None:
    """The row's dataset, or where it has none, ``<domain>/<dataset>`` from its first input's path."""
    dataset = _string(obj, "dataset", probs, required=False)
    if dataset is None and obj.get("dataset") is None:
        first = inputs.images[0] if inputs.images else inputs.volumes[0].path if inputs.volumes else ""
        parts = first.split("/") if first else []
        if len(parts) >= 3:
            dataset = f"{parts[0]}/{parts[1]}"
        else:
            probs.add("dataset", "missing and cannot be derived from images[0] (needs <domain>/<dataset>/...)")
    return dataset


def _row_boxes(obj: Mapping, inputs: _RowInputs, answer: str | None, probs: _Problems) -> list[Box]:
    """``boxes``, or the reference format's single ``bbox``."""
    if "boxes" in obj and obj.get("bbox"):
        probs.add("bbox", "given together with `boxes`; use one of them")
    images = inputs.images
    boxes = _boxes(obj.get("boxes"), len(images), probs) if "boxes" in obj else _reference_box(obj, answer, probs)
    if boxes and not images and "boxes" not in obj:
        probs.add("bbox", "a box needs an image, but `images` is empty")
    return boxes


def _row_mask(obj: Mapping, inputs: _RowInputs, probs: _Problems) -> str | None:
    seg = obj.get("segmentation_path")
    if seg is not None:
        if not isinstance(seg, str) or not seg.strip():
            probs.add("segmentation_path", f"must be a path string or null, got {seg!r:.60}")
            seg = None
        elif _is_absolute(seg):
            probs.add("segmentation_path", f"{seg!r} is absolute; paths must be relative to the jsonl's folder")
            seg = None
        elif not inputs.images:
            probs.add("segmentation_path", "a mask needs an image, but `images` is empty")
    return seg


def _placed_problem(problem: str, inputs: _RowInputs, probs: _Problems) -> str:
    """The question with one placeholder per input file, missing ones added where the pipeline puts them."""
    if inputs.volume_key == "videos":
        problem = problem.replace(VIDEO_TOKEN, VOLUME_TOKEN)
    elif VIDEO_TOKEN in problem:
        probs.add("problem", f"has {VIDEO_TOKEN} placeholder(s); rows with `volumes` use {VOLUME_TOKEN}")
    keys = {IMAGE_TOKEN: "images", VOLUME_TOKEN: inputs.volume_key, ECG_TOKEN: inputs.ecg_key}
    problem, mismatches = place_inputs(problem, {IMAGE_TOKEN: len(inputs.images), VOLUME_TOKEN: len(inputs.volumes),
                                                 ECG_TOKEN: len(inputs.ecg)})
    for token, found, expected in mismatches:
        probs.add("problem", f"has {found} {token} placeholder(s) but {keys[token]} lists {expected} file(s)")
    return problem


def _entries(value: Any) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Mapping)) else list(value) if isinstance(value, list) else []


def row_files(obj: Any, allow_outside: bool = False) -> list[tuple[str, str, str, Any]]:
    """``(field, kind, path, options)`` for every file entry of a raw row that is itself well formed, whatever
    else is wrong with the row; kind is ``image``, ``volume`` (options: its ``VolumeRef``), ``ecg`` (options: its
    ``ECGFormat`` or None) or ``mask``. Bulk validation reads these files for rows that fail the schema, so one
    pass reports every problem of a row. Paths that leave the folder are left out unless ``allow_outside``."""
    if not isinstance(obj, Mapping):
        return []
    obj, _ = from_llava(obj)
    out: list[tuple[str, str, str, Any]] = []
    volume_key = "volumes" if "volumes" in obj else "videos"
    ecg_key = "ecg" if "ecg" in obj else "time-series"
    for key, kind in (("images", "image"), (volume_key, "volume"), (ecg_key, "ecg")):
        for i, item in enumerate(_entries(obj.get(key))):
            where, ignored = f"{key}[{i}]", _Problems()
            if kind == "image":
                found = [(p, None) for p in _path_list([item], where, ignored)]
            elif kind == "volume":
                found = [(v.path, v) for v in _volumes([item], where, ignored)]
            else:
                paths, formats = _ecg_list([item], where, ignored)
                found = [(p, formats.get(0)) for p in paths]
            out += [(where, kind, path, options) for path, options in found]
    seg = obj.get("segmentation_path")
    if isinstance(seg, str) and seg.strip() and not _is_absolute(seg):
        out.append(("segmentation_path", "mask", seg, None))
    return [item for item in out if allow_outside or not leaves_folder(item[2])]


def parse_record(obj: Any, base_dir: str | Path, line_no: int | None = None, allow_outside: bool = False) -> Record:
    """Validate one row (a parsed JSON object) and return it as a ``Record``.

    Raises ``DataError`` listing every problem of the row as ``<where>: <field>: <reason>``. Paths that leave
    ``base_dir`` ("../") are problems unless ``allow_outside``.
    """
    record, problems = _parse(obj, Path(base_dir), line_no, allow_outside)
    if problems:
        where = _where(line_no, obj)
        lines = [f"{where}: {f}: {reason}" for f, reason in problems]
        raise DataError("\n".join(lines), lines)
    assert record is not None
    return record


@dataclass(frozen=True)
class Problem:
    """One problem found in a jsonl file: where (file, line, field), the referenced file if any, and why."""

    source: str
    line: int | None
    field: str
    reason: str
    file: str | None = None
    record_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        middle = f"{self.field}: {self.file}" if self.file else self.field
        return printable(f"{where}: {middle}: {self.reason}")

    def to_dict(self) -> dict[str, Any]:
        """The problem as JSON-ready values, every text made printable (file names and ids come from the rows)."""
        text = {"source": self.source, "id": self.record_id, "field": self.field, "file": self.file,
                "reason": self.reason}
        out = {k: None if v is None else printable(v) for k, v in text.items()}
        return {"source": out["source"], "line": self.line, **{k: out[k] for k in ("id", "field", "file", "reason")}}


def parse_json_line(text: str) -> Any:
    """One JSON value from a line of text: ``json.loads``, with a nesting too deep for the parser (which would
    raise RecursionError) reported as a DataError, and malformed JSON as a DataError saying where."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError:
        raise DataError("invalid JSON (nested too deeply to parse)") from None


def read_jsonl_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a regular file")
    try:
        with path.open(encoding="utf-8") as fh:
            return list(enumerate(fh, start=1))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def scan_records(path: str | Path, check_files: bool = True,
                 allow_outside: bool = False) -> tuple[list[tuple[int, Record]], list[Problem]]:
    """Parse every row of a jsonl file: ``(line, record)`` for the valid rows and every problem of the others.

    With ``check_files``, every referenced file must exist (a volume may be a folder). Paths that leave the
    jsonl's folder ("../") are problems unless ``allow_outside``. Raises ``DataError`` only when the file itself
    cannot be read.
    """
    path = Path(path)
    lines = read_jsonl_lines(path)
    base_dir, src = path.parent, str(path)
    problems: list[Problem] = []
    records: list[tuple[int, Record]] = []
    first_line: dict[str, int] = {}
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            obj = parse_json_line(line)
        except DataError as exc:
            problems.append(Problem(src, line_no, "<json>", str(exc)))
            continue
        record, row_problems = _parse(obj, base_dir, line_no, allow_outside)
        rid = obj.get("id") if isinstance(obj, Mapping) and isinstance(obj.get("id"), str) else None
        problems += [Problem(src, line_no, f, reason, record_id=rid) for f, reason in row_problems]
        if record is None:
            if check_files:  # the row's files are reported along with its schema problems
                for key, kind, rel, _ in row_files(obj, allow_outside):
                    full = base_dir / rel
                    if not (full.is_file() or (kind == "volume" and full.is_dir())):
                        reason = "not a regular file" if full.exists() else "file not found"
                        problems.append(Problem(src, line_no, key, reason, str(full), rid))
            continue
        if record.id in first_line:
            problems.append(Problem(src, line_no, "id", f"{record.id!r} duplicates line {first_line[record.id]}",
                                    record_id=record.id))
            continue
        first_line[record.id] = line_no
        if check_files:
            for key, rel in record.files():
                full = base_dir / rel
                # A volume may be a folder (a DICOM series); every other reference is one file.
                if not (full.is_file() or (key.startswith("volumes") and full.is_dir())):
                    reason = "not a regular file" if full.exists() else "file not found"
                    problems.append(Problem(src, line_no, key, reason, str(full), record.id))
        records.append((line_no, record))
    return records, problems


def load_records(path: str | Path, check_files: bool = True, allow_outside: bool = False) -> list[Record]:
    """Read and validate a jsonl file; with ``check_files``, also check that every referenced file exists;
    with ``allow_outside``, accept paths that leave the jsonl's folder ("../").

    Every problem of every row is collected and raised at once in one ``DataError`` whose lines read
    ``<file>:<line>: <field>: <reason>`` (``<file>:<line>: <field>: <referenced file>: <reason>`` for files).
    ``qoqmed.data.validate.validate_records`` also reads every referenced file.
    """
    path = Path(path)
    records, problems = scan_records(path, check_files, allow_outside)
    if problems:
        lines = [str(p) for p in problems]
        raise DataError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(lines), lines)
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    return [r for _, r in records]


def write_records(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as jsonl (UTF-8, one row per line), paths rewritten relative to the file's folder.

    The file is written to a temporary name first and renamed, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record.to_dict(base_dir=path.parent), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
