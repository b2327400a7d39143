"""The released QoQ-Med time-series weights, in their checkpoint layout, into a qoqmed model (and back).

The released time-series model keeps its ECG path in one module, ``time_series_embedding``: ``encoder`` is an
ECG-JEPA encoder under the official ECG-JEPA names (``W_P``, ``encoder_blocks.blocks.<i>``, ``norm``,
``pos_embed``) and ``linear`` the ``Linear(768, hidden)`` that maps its pooled output to one LLM token. In qoqmed
these are ``model.ecg_encoder`` (native names; the official names are translated by
``qoqmed.modeling.ecg_encoder``) and ``model.ecg_projector`` (``linear`` projector, ``pooled`` token mode, as the
released model used them).

The conversion is strict: every ``time_series_embedding.*`` key must find its place with the right shape, every
ECG weight of the model must be given, the position table must be the fixed 2D sin-cos one, and nothing is copied
unless all of it fits. The language and vision weights are untouched (build the model from the released
Qwen2.5-VL-layout checkpoint with ``qoqmed model init``, then load the ECG weights with this).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .ecg_encoder import ECGCheckpointError, load_ecg_jepa_state_dict, native_to_official_key

__all__ = ["RELEASED_PREFIX", "split_released_state", "load_released_time_series", "released_time_series_state",
           "read_released_time_series"]

RELEASED_PREFIX = "time_series_embedding."
_ENCODER, _LINEAR = RELEASED_PREFIX + "encoder.", RELEASED_PREFIX + "linear."


def split_released_state(state: Mapping[str, torch.Tensor], source: str = "checkpoint"
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(encoder state in the official ECG-JEPA names, linear state)`` from a state dict in the released layout.

    Keys outside ``time_series_embedding.`` are ignored (the LLM and vision weights); a ``module.`` or ``model.``
    prefix in front of it is accepted. Raises :class:`ECGCheckpointError` when there is no time-series weight or
    when a key under the prefix is neither the encoder nor the linear map.
    """
    encoder, linear, unexpected = {}, {}, []
    for key, value in state.items():
        at = key.find(RELEASED_PREFIX)
        if at < 0 or key[:at] not in ("", "module.", "model."):
            continue
        name = key[at:]
        if name.startswith(_ENCODER):
            encoder[name[len(_ENCODER):]] = value
        elif name.startswith(_LINEAR):
            linear[name[len(_LINEAR):]] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ECGCheckpointError(f"{source}: unexpected time-series key(s) {', '.join(sorted(unexpected)[:8])}; "
                                 f"the released layout has only {_ENCODER}* and {_LINEAR}*")
    if not encoder and not linear:
        raise ECGCheckpointError(f"{source}: no {RELEASED_PREFIX}* weights; not a released time-series checkpoint")
    return encoder, linear


def load_released_time_series(model, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy released-layout time-series weights into a QoQ-Med model's ECG encoder and projector, strictly.

    The model must use a ``linear`` projector and ``pooled`` ECG tokens (the released model's), with the encoder
    size of the checkpoint. Raises :class:`ECGCheckpointError` listing every problem; nothing is copied unless
    everything fits.
    """
    inner = model.model
    config = model.config
    if config.ecg_projector != "linear" or config.ecg_token_mode != "pooled":
        raise ECGCheckpointError(f"{source}: the released model maps the pooled encoder output through one Linear; "
                                 f"this model has ecg_projector={config.ecg_projector!r}, ecg_token_mode="
                                 f"{config.ecg_token_mode!r} (build it with --projector linear --ecg-tokens pooled)")
    encoder_state, linear_state = split_released_state(state, source)
    projector = inner.ecg_projector
    expected = projector.state_dict()
    problems = [f"{_LINEAR}{k}: missing" for k in expected if k not in linear_state]
    problems += [f"{_LINEAR}{k}: unexpected" for k in linear_state if k not in expected]
    problems += [f"{_LINEAR}{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                 for k, v in linear_state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems += [f"{_LINEAR}{k}: contains NaN or infinite values" for k, v in linear_state.items()
                 if k in expected and v.is_floating_point() and not torch.isfinite(v).all()]
    if not encoder_state:
        problems.append(f"{_ENCODER}*: missing (no encoder weights)")
    if problems:
        raise ECGCheckpointError(f"{source}: the released time-series projector does not fit this model:\n  "
                                 + "\n  ".join(problems))
    # The encoder is checked (and copied) first: the projector is copied only once the encoder fitted.
    load_ecg_jepa_state_dict(inner.ecg_encoder, encoder_state, source=f"{source} [{_ENCODER}*]")
    projector.load_state_dict(linear_state, strict=True)


def released_time_series_state(model) -> dict[str, torch.Tensor]:
    """The model's ECG encoder and projector in the released layout (the inverse of
    :func:`load_released_time_series`), e.g. to compare with a released checkpoint or to export."""
    inner = model.model
    if model.config.ecg_projector != "linear":
        raise ValueError("only a linear ECG projector has a released-layout counterpart")
    out = {_ENCODER + native_to_official_key(k): v.detach().clone()
           for k, v in inner.ecg_encoder.state_dict().items()}
    out[_ENCODER + "pos_embed"] = inner.ecg_encoder.pos_embed.detach().clone().unsqueeze(0)
    out.update({_LINEAR + k: v.detach().clone() for k, v in inner.ecg_projector.state_dict().items()})
    return out


def read_released_time_series(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``time_series_embedding.*`` tensors of a released checkpoint: a ``.safetensors`` file, a folder of
    ``*.safetensors`` shards (only those keys are read), or a ``.pt``/``.pth``/``.bin`` state dict read with
    ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ECGCheckpointError(f"{path}: no *.safetensors files in the checkpoint folder")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: released checkpoint not found")
    out: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt") as fh:
                    for key in fh.keys():
                        if RELEASED_PREFIX in key:
                            out[key] = fh.get_tensor(key)
            except Exception as exc:  # safetensors raises its own error types on corrupt files
                raise ECGCheckpointError(f"{file}: cannot read safetensors file ({exc})") from exc
            continue
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in several types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ECGCheckpointError(f"{file}: cannot be read as a PyTorch state dict ({first})") from exc
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise ECGCheckpointError(f"{file}: expected a state dict, got {type(obj).__name__}")
        out.update({k: v for k, v in obj.items() if isinstance(k, str) and RELEASED_PREFIX in k
                    and isinstance(v, torch.Tensor)})
    if not out:
        raise ECGCheckpointError(f"{path}: no {RELEASED_PREFIX}* weights; not a released time-series checkpoint")
    return out
