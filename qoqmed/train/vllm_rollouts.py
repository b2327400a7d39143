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
- server mode: TRL's client sends token ids plus, for images, the multimodal ``features`` the server's render
  endpoint returns (vLLM's ``MultiModalFeatures``); each prompt's ECG records are added to those features here, as
  vLLM's serialised ``MultiModalKwargsItem`` of ``ecg_values`` with their placeholder runs and content hashes
  (:func:`ecg_features`), so the server never parses ECG data itself;
- :func:`sync_weights` after each optimiser step: on CPU through the model runner's in-place reload (which repacks
  the weights), then a prefix-cache reset; elsewhere TRL's own sync; the engine's cached image and ECG embeddings are
  dropped as well, since they were computed with the old encoder weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from accelerate.utils import gather_object
from transformers import BatchFeature
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
    """Push the training weights into vLLM: one function for every device and mode.

    On CPU, vLLM repacks linear weights for its kernels when it loads them, so the colocated engine is refilled with
    ``reload_weights`` (in checkpoint format: the names and layout the training model has) and its prefix cache,
    which holds keys and values of the old weights, is dropped. On GPU and in server mode, TRL's sync (in server mode
    NCCL, so GPU only). The engine also drops its encoder cache.
    """
    if generation.mode != "colocate":
        VLLMGeneration.sync_weights(generation)
        if generation.accelerator.is_main_process:  # a dev-mode endpoint, as TRL's prefix-cache reset is
            response = generation.vllm_client.session.post(f"{generation.vllm_client.base_url}/reset_encoder_cache")
            response.raise_for_status()
        return
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


def _check_ecg_blocks(blocks: int, records: torch.Tensor) -> None:
    if blocks != records.shape[0]:
        raise RuntimeError(f"a rollout prompt has {blocks} ECG block(s) but its row {records.shape[0]} ECG "
                           "record(s): the prompts and the rows' records are out of step")


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
        _check_ecg_blocks(blocks, records)
        if not blocks:
            return prompt
        data = {**prompt.get("multi_modal_data", {}), "ecg": [r.float().numpy() for r in records]}
        return {**prompt, "multi_modal_data": data}


def placeholder_runs(ids: list[int], token: int) -> list[dict[str, int]]:
    """``{"offset", "length"}`` of every run of ``token`` in ``ids``: where a server finds each image or ECG."""
    runs: list[dict[str, int]] = []
    for i, t in enumerate(ids):
        if t == token and i and ids[i - 1] == token:
            runs[-1]["length"] += 1
        elif t == token:
            runs.append({"offset": i, "length": 1})
    return runs


def ecg_features(records: torch.Tensor, prompt_ids: list[int], ecg_pad_id: int) -> dict:
    """The ``ecg`` part of a ``/inference/v1/generate`` request's ``features`` for one prompt: its records
    (n, leads, samples) as vLLM's serialised ``ecg_values`` items, each with a hash of its values (the server's
    encoder-cache key) and the run of ECG placeholders it fills in ``prompt_ids`` (expanded, as the processor gives
    them)."""
    from vllm.entrypoints.scale_out.token_in_token_out.mm_serde import encode_mm_kwargs_item
    from vllm.multimodal.hasher import MultiModalHasher
    from vllm.multimodal.inputs import MultiModalKwargsItems

    from ..modeling.vllm_qoqmed import ECG, ECG_FIELDS

    runs = placeholder_runs(prompt_ids, ecg_pad_id)
    _check_ecg_blocks(len(runs), records)
    values = records.float().contiguous()
    items = MultiModalKwargsItems.from_hf_inputs(BatchFeature({"ecg_values": values}), ECG_FIELDS)[ECG]
    return {"mm_hashes": {ECG: [MultiModalHasher.hash_kwargs("sha256", ecg=v.numpy()) for v in values]},
            "mm_placeholders": {ECG: runs},
            "kwargs_data": {ECG: [encode_mm_kwargs_item(item) for item in items]}}


def merge_features(image: dict | None, ecg: dict | None) -> dict | None:
    """One prompt's ``features`` with the modalities of both (either may be None). A payload one side lacks is
    None per item of that side: the server's cached copy, as a missing payload means to it."""
    if image is None or ecg is None:
        return image or ecg
    merged = {}
    for key in ("mm_hashes", "mm_placeholders", "kwargs_data", "mm_metadata"):
        if image.get(key) is None and ecg.get(key) is None:
            continue
        merged[key] = {m: items for part in (image, ecg) for m, items in
                       (part.get(key) or {m: [None] * len(h) for m, h in part["mm_hashes"].items()}).items()}
    return merged


class _QoQMedClient:
    """TRL's VLLMClient whose ``generate`` adds each prompt's ECG records to the multimodal features it sends
    (``rows``: the records of each distinct prompt of the next call, set by :func:`_generate_gathering_ecg`)."""

    def __init__(self, client, ecg_pad_id: int):
        self._client, self._ecg_pad_id = client, ecg_pad_id
        self.rows: list[torch.Tensor] | None = None

    def __getattr__(self, name):
        return getattr(self._client, name)

    def generate(self, prompts: list[list[int]], features: list[dict | None] | None = None, **kwargs):
        rows, self.rows = self.rows, None
        if rows is not None and any(r.shape[0] for r in rows):
            if len(rows) != len(prompts):
                raise RuntimeError(f"vLLM got {len(prompts)} prompts for {len(rows)} rows with ECG records")
            features = [merge_features(f, ecg_features(r, p, self._ecg_pad_id) if r.shape[0] else None)
                        for f, r, p in zip(features or [None] * len(prompts), rows, prompts, strict=True)]
        return self._client.generate(prompts=prompts, features=features, **kwargs)


def _post_with_token_names(post: Callable[..., dict], url: str, **kwargs) -> dict:
    """The client's ``_post``, with log-prob tokens named as TRL reads them: vLLM 0.32's ``/inference/v1/generate``
    names each by its integer ``token_id``, TRL 1.16 parses ``"token": "token_id:<id>"`` (what the completions
    endpoints send, and left as they are)."""
    answer = post(url, **kwargs)
    for choice in answer.get("choices", ()) if isinstance(answer, dict) else ():
        for entry in (choice.get("logprobs") or {}).get("content") or ():
            for item in (entry, *entry.get("top_logprobs", ())):
                if "token_id" in item and "token" not in item:
                    item["token"] = f"token_id:{item.pop('token_id')}"
    return answer


def _generate_gathering_ecg(generation: VLLMGeneration, ecg_rows: Callable[[], list[torch.Tensor] | None],
                            generate: Callable, **kwargs):
    """Server mode: TRL's generate, after every process's ECG records went to the main process, which sends all
    prompts (the gather runs on every process, as TRL's gather of the prompts does)."""
    rows = ecg_rows()
    rows = gather_object(rows if rows is not None else [torch.empty(0)] * len(kwargs["prompts"]))
    if generation.accelerator.is_main_process:
        generation.vllm_client.rows = rows[::kwargs["num_generations"]]  # one per distinct prompt, as TRL sends
    return generate(**kwargs)


def attach_vllm(generation: VLLMGeneration, ecg_rows: Callable[[], list[torch.Tensor] | None],
                ecg_start_id: int, ecg_pad_id: int, pads: frozenset[int]) -> None:
    """Give the trainer's VLLMGeneration the weight sync of :func:`sync_weights` and QoQ-Med's requests, ECG records
    included (``ecg_rows()``: the records of each row being generated, or None outside generation; ``pads``: the
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
        return
    if generation.accelerator.is_main_process:
        client = generation.vllm_client
        client._post = partial(_post_with_token_names, client._post)
        generation.vllm_client = _QoQMedClient(client, ecg_pad_id)
    generation.generate = partial(_generate_gathering_ecg, generation, ecg_rows, generation.generate)
