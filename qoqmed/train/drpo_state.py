"""The DRPO estimator's state in a checkpoint, stored without pickle.

Checkpoint folders get shared, so resuming one must never run code from it. The state is an ``.npz`` archive read
with ``allow_pickle=False``: one ``meta`` entry (UTF-8 JSON: the configuration, the running counts and the domain
names) and one plain numeric array per domain for its reward history and its k-means centres.

States written by earlier versions (``drpo_state.pt``, a pickled dict of numpy arrays) are still read, through
``torch.load(weights_only=True)`` with only numpy's array types allowed; anything else in such a file is refused.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import DataError

DRPO_STATE_FILE = "drpo_state.npz"
LEGACY_DRPO_STATE_FILE = "drpo_state.pt"
_ARRAY_SECTIONS = ("domains", "centres")  # per-domain arrays; everything else in a state is JSON
_JSON_KEY_TYPES = (str, int, float, bool)


def write_drpo_state(state: dict[str, Any], path: str | Path) -> None:
    """Write :meth:`qoqmed.algos.drpo.DRPO.state_dict` output to ``path`` (``.npz``, no pickled objects)."""
    meta = {k: v for k, v in state.items() if k not in _ARRAY_SECTIONS}
    names = sorted({d for section in _ARRAY_SECTIONS for d in state.get(section, {})}, key=repr)
    for d in names:
        if not isinstance(d, _JSON_KEY_TYPES):
            raise ValueError(f"DRPO state: domain {d!r} is a {type(d).__name__}; only str/int/float/bool domain "
                             "names can be stored")
    # JSON object keys are strings, so the counts are stored as [name, count] pairs to keep each name's type
    meta["seen"] = [[d, int(n)] for d, n in state.get("seen", {}).items()]
    meta["domain_names"] = names
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for section in _ARRAY_SECTIONS:
        for d, values in state.get(section, {}).items():
            arrays[f"{section}/{names.index(d)}"] = np.asarray(values)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    Path(path).write_bytes(buffer.getvalue())


def read_drpo_state(path: str | Path) -> dict[str, Any]:
    """The state dict stored at ``path``: the ``.npz`` format, or a legacy ``.pt`` of plain numpy arrays.

    Raises :class:`DataError` naming the file when it is unreadable or holds anything but plain data.
    """
    path = Path(path)
    if path.suffix == ".pt":
        return _read_legacy(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive["meta"]).decode("utf-8"))
            names = meta.pop("domain_names")
            state = dict(meta)
            state["seen"] = {d: int(n) for d, n in meta.get("seen", [])}
            for section in _ARRAY_SECTIONS:
                state[section] = {}
            for key in archive.files:
                section, _, index = key.partition("/")
                if section in _ARRAY_SECTIONS:
                    values = archive[key]
                    if values.dtype.kind not in "fiu":
                        raise ValueError(f"{key} holds {values.dtype} values, expected numbers")
                    state[section][names[int(index)]] = values
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, MemoryError,
            zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable DRPO state ({type(exc).__name__}: {exc})") from exc
    return state


def _read_legacy(path: Path) -> dict[str, Any]:
    """A ``drpo_state.pt`` from an earlier version, unpickled with only numpy's plain array types allowed."""
    import torch

    allowed = [np.ndarray, np.dtype, np._core.multiarray._reconstruct,
               *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32"))]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises UnpicklingError, RuntimeError or others
        # torch's own message suggests weights_only=False, the very thing to avoid here: name only the culprit
        culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        reason = f"it refers to {culprit.group(1)}" if culprit else f"{type(exc).__name__}"
        raise DataError(
            f"{path}: refused to load this DRPO state: it holds more than plain arrays and numbers, and loading it "
            f"could run code ({reason}). Resume from a checkpoint written by this version of qoqmed, or start the "
            "run again") from exc
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a DRPO state (a {type(state).__name__}, expected a dict)")
    return state
