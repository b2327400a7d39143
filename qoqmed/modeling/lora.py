"""LoRA adapters on QoQ-Med through peft: which modules they target, and loading or merging an adapter folder.

An adapter folder (``adapter_model.safetensors`` + ``adapter_config.json`` + the processor) stands wherever a model
folder is expected: :func:`load_model` finds its base model through ``base_model_name_or_path`` (a local folder)
and returns the base with the adapter merged in, so inference runs at the full model's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .modeling_qoqmed import QoQMedForConditionalGeneration
from .processing_qoqmed import QoQMedProcessor

ADAPTER_CONFIG = "adapter_config.json"
# The linear layers of a Qwen2 decoder block. The vision tower's blocks reuse some of these names (gate_proj,
# up_proj, down_proj), so targets are matched inside the language model only.
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The multimodal parts a LoRA run may train in full (peft modules_to_save) next to the adapters: names as in
# QoQMedModel, keyed by the setting that switches them on.
FULLY_TRAINABLE = {"projector": "ecg_projector", "ecg_encoder": "ecg_encoder"}


def language_model_targets(names: list[str] | tuple[str, ...]) -> str:
    """peft ``target_modules`` (a regex matched against whole module names) for ``names`` in the language model."""
    unknown = sorted(set(names) - set(LM_PROJECTIONS))
    if unknown or not names:
        raise ValueError(f"target_modules {list(names)}: choose a non-empty subset of {list(LM_PROJECTIONS)}")
    return rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(sorted(set(names)))})"


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> Path:
    """The local base model folder an adapter folder was trained on (``base_model_name_or_path``)."""
    config_path = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path}: cannot read the adapter config: {exc}") from exc
    if not base:
        raise ValueError(f"{config_path}: base_model_name_or_path is empty; the base model is unknown")
    base = Path(base)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{config_path}: base_model_name_or_path {str(base)!r} is not a model folder here "
                                "(no config.json); copy the base model there, or merge the adapter where the base "
                                "exists (qoqmed model merge-lora)")
    return base


def load_model(path: str | Path, dtype: torch.dtype | None = None) -> QoQMedForConditionalGeneration:
    """The model saved in ``path``: a full model folder, or an adapter folder merged into its base."""
    path = Path(path)
    if is_adapter_folder(path):
        from peft import PeftModel

        base = QoQMedForConditionalGeneration.from_pretrained(adapter_base(path), dtype=dtype)
        return PeftModel.from_pretrained(base, path).merge_and_unload()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json or {ADAPTER_CONFIG}; pass a folder written by "
                                "save_pretrained (a run's rl/model or sft_model, or a LoRA adapter folder)")
    return QoQMedForConditionalGeneration.from_pretrained(path, dtype=dtype)


def load_model_and_processor(path: str | Path, dtype: torch.dtype | None = None):
    """(model, processor) of a model or adapter folder; both kinds carry their processor."""
    return load_model(path, dtype), QoQMedProcessor.from_pretrained(path)


def merge_adapter(adapter: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the base of ``adapter`` with the adapter merged in, and the processor, as a full model folder."""
    if not is_adapter_folder(adapter):
        raise FileNotFoundError(f"{adapter}: no {ADAPTER_CONFIG}; not a LoRA adapter folder")
    model, processor = load_model_and_processor(adapter, dtype)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)
