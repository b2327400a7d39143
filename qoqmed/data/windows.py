"""Display windows for CT and MR volumes: the named presets and the ``preset`` / ``center,width`` text form.

Kept apart from the readers so the row schema can check a window name without importing anything that reads
files; the CLI and the server parse ``--window`` / ``window`` with the same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# (center, width) in Hounsfield units; common radiology presets.
WINDOWS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (35.0, 40.0),
    "bone": (400.0, 1800.0),
})


def parse_window(text: str | None) -> str | tuple[float, float] | None:
    """``'lung'`` -> ``'lung'``, ``'40,400'`` -> ``(40.0, 400.0)``, empty or None -> None (the file's own window).

    Preset names are checked where the volume is read (``qoqmed.data.volumes.resolve_window``), which knows its
    units; ValueError here only for a malformed ``center,width``.
    """
    if text is None or not text.strip():
        return None
    if "," in text:
        try:
            center, width = (float(v) for v in text.split(","))
        except ValueError as exc:
            raise ValueError(f"window {text!r} must be a preset name or 'center,width'") from exc
        return (center, width)
    return text.strip()
