"""Input modalities of a record and ablation: the same rows with some modalities dropped, for comparing a fused
model's single-modality and fused inputs (the QoQ-Med paper's Table 4).

A record's inputs fall into three modalities:

- ``ecg``: its ECG files;
- ``image``: its images and volumes (with their boxes and mask);
- ``text``: its clinical notes, the row's ``ehr`` field, which the problem carries at its end as
  ``"\\nClinical notes: <ehr>"`` (:func:`qoqmed.data.schema.append_notes`). The question itself always stays.

:func:`keep_modalities` returns a copy of a record holding only the modalities asked for: the files of the others
are removed from the record and their placeholders from the problem, so the model sees the question and the kept
inputs only. An input set is written ``ecg+image`` (:func:`parse_input_sets` reads a comma-separated list of them).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from .errors import DataError
from .schema import ECG_TOKEN, IMAGE_TOKEN, VOLUME_TOKEN, Record, append_notes

__all__ = ["MODALITIES", "TABLE4_INPUT_SETS", "input_set_name", "keep_modalities", "parse_input_sets",
           "record_modalities"]

MODALITIES: tuple[str, ...] = ("ecg", "image", "text")
# The paper's comparison: each modality alone, then all fused.
TABLE4_INPUT_SETS: tuple[frozenset[str], ...] = (
    frozenset({"ecg"}), frozenset({"image"}), frozenset({"text"}), frozenset(MODALITIES))


def input_set_name(modalities: Collection[str]) -> str:
    """``ecg+image+text`` style name of an input set, in :data:`MODALITIES` order."""
    return "+".join(m for m in MODALITIES if m in modalities)


def parse_input_sets(text: str) -> list[frozenset[str]]:
    """Input sets from ``"ecg,image,text,ecg+image+text"`` (``table4`` for exactly that list); ValueError naming
    the unknown modality or the repeated set."""
    if text.strip().lower() == "table4":
        return list(TABLE4_INPUT_SETS)
    sets: list[frozenset[str]] = []
    for item in text.split(","):
        names = frozenset(n.strip().lower() for n in item.split("+") if n.strip())
        unknown = sorted(names - set(MODALITIES))
        if not names or unknown:
            raise ValueError(f"input set {item.strip()!r}: " + (f"unknown modality {', '.join(unknown)}" if unknown
                             else "empty") + f"; modalities are {', '.join(MODALITIES)} joined by '+'")
        if names in sets:
            raise ValueError(f"input set {input_set_name(names)!r} is listed twice")
        sets.append(names)
    return sets


def record_modalities(record: Record) -> frozenset[str]:
    """The modalities a record has inputs of."""
    present = {"ecg": bool(record.ecg), "image": bool(record.images or record.volumes),
               "text": bool(_notes(record))}
    return frozenset(m for m, has in present.items() if has)


def _notes(record: Record) -> str | None:
    notes = record.extra.get("ehr")
    if notes is not None and not isinstance(notes, str):
        raise DataError(f"record {record.id!r}: ehr: must be a string (the clinical notes), got "
                        f"{type(notes).__name__}")
    return notes if notes and notes.strip() else None


def keep_modalities(record: Record, keep: Collection[str]) -> Record:
    """A copy of ``record`` with only the modalities in ``keep`` (see the module docstring)."""
    unknown = sorted(set(keep) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modality {', '.join(unknown)}; modalities are {', '.join(MODALITIES)}")
    problem, changes = record.problem, {}
    if "text" not in keep and (notes := _notes(record)) is not None:
        with_notes = append_notes("", notes)
        if not problem.endswith(with_notes):
            raise DataError(f"record {record.id!r}: problem does not end with its ehr notes "
                            f"({with_notes.strip()[:40]!r}...), so they cannot be dropped from it")
        problem = problem[: -len(with_notes)]
        changes["extra"] = {k: v for k, v in record.extra.items() if k != "ehr"}
    if "image" not in keep:
        problem = problem.replace(IMAGE_TOKEN, "").replace(VOLUME_TOKEN, "")
        changes.update(images=[], volumes=[], boxes=[], segmentation_path=None)
    if "ecg" not in keep:
        problem = problem.replace(ECG_TOKEN, "")
        changes.update(ecg=[], ecg_formats={})
    return replace(record, problem=problem.lstrip("\n") if problem != record.problem else problem, **changes)
