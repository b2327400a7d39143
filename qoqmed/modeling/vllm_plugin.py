"""vLLM plugin entry point (``vllm.general_plugins`` in pyproject.toml): registers QoQ-Med with vLLM.

vLLM calls :func:`register` in every process it starts. Nothing here imports vLLM until then, so qoqmed imports
without it. Importing this module runs ``qoqmed.modeling``'s ``__init__``, which registers ``QoQMedConfig`` with
transformers' ``AutoConfig``; vLLM reads a model folder's ``config.json`` through it.
"""

from __future__ import annotations

ARCHITECTURE = "QoQMedForConditionalGeneration"


def register() -> None:
    """Make ``architectures: ["QoQMedForConditionalGeneration"]`` folders load with QoQ-Med's vLLM model."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # A "module:Class" string: vLLM imports the model only where it builds one.
        ModelRegistry.register_model(ARCHITECTURE, f"qoqmed.modeling.vllm_qoqmed:{ARCHITECTURE}")
