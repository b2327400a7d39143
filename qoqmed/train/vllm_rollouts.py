"""Rollouts through vLLM (TRL's ``use_vllm``): ECG records to the sampler, and a weight sync that also works on CPU.

TRL's vLLM backend (``trl.generation.vllm_generation.VLLMGeneration``, written against TRL 1.16) samples from token
ids and images only, and pushes the trained weights through ``model.load_weights``, which fails on CPU: vLLM's CPU
linear layers keep a packed copy of their weights that only its (re)load path rebuilds. :func:`attach_vllm` fills
both gaps on the trainer's VLLMGeneration object, without copying any of TRL's code:

- colocate mode: each prompt's ECG records ride in ``multi_modal_data["ecg"]`` (a list of ``(leads, samples)``
  float32 arrays in the order of their ECG blocks, as ``qoqmed.modeling.vllm_plugin.vllm_request`` writes it), and
  the processor's expanded placeholder runs are cut to one token each, which vLLM expands again;
- :func:`engine_dtype`: the colocated engine computes in the dtype the training pass uses (TRL starts it with
  vLLM's "auto", which samples a float32 model in bfloat16 or float16);
- :func:`sync_weights` after each optimiser step: on CPU through the model runner's in-place reload (which repacks
  the weights), then a prefix-cache reset; elsewhere TRL's own sync; in colocate mode the engine's cached image and
  ECG embeddings are dropped as well, since they were computed with the old encoder weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from trl.generation.vllm_generation import VLLMGeneration


@contextmanager
def engine_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block, TRL starts colocated vLLM engines in ``dtype``.

    vLLM's "auto" dtype downcasts float32 checkpoints, so a model trained in float32 (on CPU) would be sampled in
    half precision, and the sampled tokens' log-probs would differ from the training pass by several 1e-2.
    """
    import trl.generation.vllm_generation as backend

    if not hasattr(backend, "LLM"):  # vLLM not installed: TRL's own error says so
        yield
        return
    start = backend.LLM
    backend.LLM = partial(start, dtype=dtype)
    try:
        yield
    finally:
        backend.LLM = start


def sync_weights(generation: VLLMGeneration) -> None:
    """Push the training weights into vLLM: one function for every device.

    On CPU, vLLM repacks linear weights for its kernels when it loads them, so the colocated engine is refilled with
    ``reload_weights`` (in checkpoint format: the names and layout the training model has) and its prefix cache,
    which holds keys and values of the old weights, is dropped. On GPU and in server mode, TRL's sync. A colocated
    engine also drops its encoder cache.
    """
    if generation.mode != "colocate":
        return VLLMGeneration.sync_weights(generation)
    if generation.accelerator.device.type == "cpu":
        runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
        generation.llm.reset_prefix_cache()
    else:
        VLLMGeneration.sync_weights(generation)
    # the engine reuses image and ECG embeddings of inputs it has seen: those of the old encoder weights must go
    # (the scheduler's record of them too, or the next step misses the cache it believes it has)
    generation.llm.llm_engine.reset_encoder_cache()


def collapse_runs(ids: list[int], pads: frozenset[int]) -> list[int]:
    """``ids`` with every run of one placeholder token cut to a single token.

    The processor expands each image or ECG block to its full count of placeholders, and vLLM expands each
    placeholder of a token prompt again, so the engine gets one per block and expands it to the same count.
    """
    return [t for i, t in enumerate(ids) if t not in pads or i == 0 or ids[i - 1] != t]


class _QoQMedRequests:
    """vLLM's ``LLM`` whose ``generate`` turns TRL's requests into QoQ-Med's: placeholder runs collapsed, and each
    prompt's ECG records added to its multimodal data."""

    def __init__(self, llm, ecg_rows: Callable[[], list[torch.Tensor] | None], ecg_start_id: int,
                 pads: frozenset[int]):
        self._llm, self._ecg_rows, self._ecg_start_id, self._pads = llm, ecg_rows, ecg_start_id, pads

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, prompts, *args, **kwargs):
        rows = self._ecg_rows()
        if rows is not None and any(r.shape[0] for r in rows):
            if len(rows) != len(prompts):
                raise RuntimeError(f"vLLM got {len(prompts)} prompts for {len(rows)} rows with ECG records; ECG "
                                   "rollouts need rl.rollout.tensor_parallel_size 1")
            prompts = [self._add_ecg(p, r) for p, r in zip(prompts, rows, strict=True)]
        prompts = [{**p, "prompt_token_ids": collapse_runs(p["prompt_token_ids"], self._pads)}
                   if isinstance(p, dict) and "prompt_token_ids" in p else p for p in prompts]
        return self._llm.generate(prompts, *args, **kwargs)

    def _add_ecg(self, prompt: dict, records: torch.Tensor) -> dict:
        blocks = prompt["prompt_token_ids"].count(self._ecg_start_id)
        if blocks != records.shape[0]:
            raise RuntimeError(f"a rollout prompt has {blocks} ECG block(s) but its row {records.shape[0]} ECG "
                               "record(s): the prompts and the rows' records are out of step")
        if not blocks:
            return prompt
        data = {**prompt.get("multi_modal_data", {}), "ecg": [r.float().numpy() for r in records]}
        return {**prompt, "multi_modal_data": data}


def attach_vllm(generation: VLLMGeneration, ecg_rows: Callable[[], list[torch.Tensor] | None],
                ecg_start_id: int, pads: frozenset[int]) -> None:
    """Give the trainer's VLLMGeneration the weight sync of :func:`sync_weights` and, in colocate mode, QoQ-Med's
    requests (``ecg_rows()``: the records of each row being generated, or None outside generation; ``pads``: the
    image and ECG placeholder ids)."""
    if generation.mode == "colocate" and generation.accelerator.device.type == "cpu":
        model = generation.model
        if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
            # a tied lm_head is not reloaded with the embeddings, so its packed copy would keep the start weights
            raise ValueError("vLLM rollouts on CPU need untied input and output embeddings "
                             "(config tie_word_embeddings: false); train this model with rl.rollout.engine hf")
    generation.sync_weights = partial(sync_weights, generation)
    if generation.mode == "colocate":
        generation.llm = _QoQMedRequests(generation.llm, ecg_rows, ecg_start_id, pads)
