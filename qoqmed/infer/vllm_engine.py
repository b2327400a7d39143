"""Generation through vLLM for ``QoQMedPipeline`` (``qoqmed serve --engine vllm``): the same prompts, inputs and
answers as the transformers engine, with vLLM's continuous batching and paged KV cache.

    pipe = QoQMedPipeline(VLLMEngine("quickstart_out/rl/model"), QoQMedProcessor.from_pretrained(...))

Needs the ``vllm`` extra (``pip install qoqmed[vllm]``). The model folder is the one transformers loads; vLLM finds
QoQ-Med's model through the plugin in ``qoqmed.modeling.vllm_plugin``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..modeling import QoQMedConfig, QoQMedProcessor
from ..modeling.vllm_plugin import blocked_words, vllm_request

# Inputs one prompt may hold; vLLM sizes its encoder cache for this many at most.
DEFAULT_LIMITS = {"image": 32, "ecg": 8}


class VLLMEngine:
    """A ``vllm.LLM`` over a saved QoQ-Med folder, generating for prepared queries."""

    def __init__(self, path: str | Path, *, limits: dict[str, int] | None = None, max_model_len: int | None = None,
                 kv_cache_gib: float | None = None, seed: int = 0, **llm_kwargs):
        """``limits``: images (volume slices included) and ECG records per prompt; ``max_model_len``: the longest
        prompt + answer in tokens (default: the model's positions); ``kv_cache_gib``: KV cache size on CPU
        (``VLLM_CPU_KVCACHE_SPACE``); ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``)."""
        if kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gib:g}"  # read when the engine process starts
        import torch
        from vllm import LLM

        # Compiling the model costs minutes on a CPU for little gain; CUDA graphs on a GPU are worth it.
        llm_kwargs.setdefault("enforce_eager", not torch.cuda.is_available())
        path = Path(path)
        config = QoQMedConfig.from_pretrained(path)
        processor = QoQMedProcessor.from_pretrained(path)
        self.limits = dict(limits or DEFAULT_LIMITS)
        self.llm = LLM(model=str(path), max_model_len=max_model_len, seed=seed, limit_mm_per_prompt=self.limits,
                       **llm_kwargs)
        self.max_positions = int(self.llm.llm_engine.model_config.max_model_len)
        self._bad_words = blocked_words(config, processor.tokenizer)
        self._lock = threading.Lock()  # vllm.LLM serves one caller at a time

    def generate(self, prepared: Sequence, max_new: int, decoding) -> list[list[int]]:
        """The new token ids of every ``PreparedQuery``, up to and including the end-of-turn token where it stopped;
        ``decoding`` is the pipeline's ``Decoding``."""
        from vllm import SamplingParams

        # top_k=0: no top-k cut-off, whatever the folder's generation_config says (as the transformers engine).
        params = SamplingParams(max_tokens=max_new, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0,
                                seed=decoding.seed, bad_words=self._bad_words)
        requests = [vllm_request(q.prompt, [v.image for v in q.visuals], q.ecgs) for q in prepared]
        with self._lock:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()
