"""FSDP on CPU processes (gloo), for running the sharded training path on a machine without GPUs.

PyTorch's FSDP2 (``fully_shard``) works on CPU tensors over gloo, but accelerate 1.15 switches a run to FSDP only
for accelerator devices: with CPU processes it keeps ``MULTI_CPU`` and drops the FSDP plugin, so an FSDP config
silently trains unsharded (DDP). :func:`fsdp_on_cpu` makes accelerate's state take the plugin there too, so the
same FSDP2 code (sharding, sharded checkpoints, gathered saves) runs on CPU as on GPUs. With GPUs, or without an
FSDP plugin, it changes nothing.

:class:`ShardedTrainerMixin` is the one place the trainers (RL and the supervised warm start) apply it, together
with the gathered save a sharded state dict needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from accelerate.state import AcceleratorState, PartialState
import torch
from accelerate.utils import DistributedType, is_peft_model
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


@contextmanager
def fsdp_on_cpu() -> Iterator[None]:
    """Within this block, an ``Accelerator`` created with an FSDP plugin on CPU processes runs FSDP."""
    original = AcceleratorState.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        fsdp_plugin = kwargs.get("fsdp_plugin")  # Accelerator passes every plugin by keyword
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # what accelerate does for accelerator devices (AcceleratorState.__init__), skipped for CPUs
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type  # every later state reads it

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


class ShardedTrainerMixin:
    """For a transformers ``Trainer`` subclass, listed before the trainer class: FSDP on CPU processes too, an LM
    head that trains like every other FSDP unit, and a final ``save_model`` that writes the whole model under a
    sharded state dict.

    accelerate shards the LM head as its own FSDP unit, gathered when the head is called. TRL's fused loss (SFT and
    GRPO) reads the head's weight without calling it and gathers the shards itself (``DTensor.full_tensor``),
    whose backward leaves each process the gradient of its own micro-batch for its shard instead of the average
    over processes: a wrong head update that no error reports. Gathered through FSDP before the loss, the head's
    gradient is reduce-scattered (averaged) with the others.

    With ``fsdp_state_dict_type: SHARDED_STATE_DICT`` transformers' ``save_model`` writes no weights at all.
    Checkpoints keep their sharded engine state (fast, what resuming reads); the final model is gathered here, by
    every process, and written by the main one.
    """

    def create_accelerator_and_postprocess(self) -> None:
        with fsdp_on_cpu():
            super().create_accelerator_and_postprocess()
        if self.is_fsdp_enabled and is_peft_model(self.model):
            # saving and merging adapters read whole weights, which FSDP holds as shards: refused before training
            # rather than failing after it
            raise ValueError("LoRA adapters are not supported under FSDP: launch a LoRA run with a DDP "
                             "(e.g. configs/accelerate/cpu_2proc.yaml, or multi-GPU without FSDP) or a DeepSpeed "
                             "config, or drop the recipe's lora section to fine-tune in full under FSDP")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = getattr(self.accelerator.unwrap_model(model), "get_output_embeddings", lambda: None)()
        if isinstance(head, FSDPModule) and torch.is_grad_enabled():
            head.unshard()  # resharded by FSDP's post-backward, after its gradient is reduce-scattered
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call or not self.is_fsdp_enabled or "FULL_STATE_DICT" in str(
                self.accelerator.state.fsdp_plugin.state_dict_type):
            return super().save_model(output_dir, _internal_call)
        state_dict = self.accelerator.get_state_dict(self.model)  # the whole model, on the main process
        if self.args.should_save:
            self._save(output_dir, state_dict=state_dict)


def is_sharded(model) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (a forward then needs every process)."""
    return any(isinstance(p, DTensor) for p in model.parameters())
