"""vLLM plugin entry point (``vllm.general_plugins`` in pyproject.toml), and the shape of QoQ-Med's vLLM requests.

vLLM calls :func:`register` in every process it starts. Nothing here imports vLLM until then, so qoqmed imports
without it. Importing this module runs ``qoqmed.modeling``'s ``__init__``, which registers ``QoQMedConfig`` with
transformers' ``AutoConfig``; vLLM reads a model folder's ``config.json`` through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .configuration_qoqmed import QoQMedConfig
from .modeling_qoqmed import placeholder_token_ids

ARCHITECTURE = "QoQMedForConditionalGeneration"


def register() -> None:
    """Make ``architectures: ["QoQMedForConditionalGeneration"]`` folders load with QoQ-Med's vLLM model."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # A "module:Class" string: vLLM imports the model only where it builds one.
        ModelRegistry.register_model(ARCHITECTURE, f"qoqmed.modeling.vllm_qoqmed:{ARCHITECTURE}")


def vllm_request(prompt: str, images: Sequence = (), ecgs: Sequence = ()) -> dict:
    """One request for ``vllm.LLM.generate``: ``prompt`` as ``QoQMedProcessor.apply_chat_template`` writes it, with
    one placeholder block per image (volume slices included) and per ECG record, in prompt order."""
    data: dict = {}
    if len(images):
        data["image"] = list(images)
    if len(ecgs):
        data["ecg"] = [np.asarray(e, dtype=np.float32) for e in ecgs]
    return {"prompt": prompt, "multi_modal_data": data} if data else {"prompt": prompt}


def blocked_words(config: QoQMedConfig, tokenizer) -> list[str]:
    """The placeholder tokens, for ``SamplingParams(bad_words=...)``: vLLM then never samples them, as transformers'
    ``suppress_tokens`` does for ``generate``."""
    return tokenizer.convert_ids_to_tokens(placeholder_token_ids(config))
