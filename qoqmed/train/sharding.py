"""FSDP on CPU processes (gloo), for running the sharded training path on a machine without GPUs.

PyTorch's FSDP2 (``fully_shard``) works on CPU tensors over gloo, but accelerate 1.15 switches a run to FSDP only
for accelerator devices: with CPU processes it keeps ``MULTI_CPU`` and drops the FSDP plugin, so an FSDP config
silently trains unsharded (DDP). :func:`fsdp_on_cpu` makes accelerate's state take the plugin there too, so the
same FSDP2 code (sharding, sharded checkpoints, gathered saves) runs on CPU as on GPUs. With GPUs, or without an
FSDP plugin, it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


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
