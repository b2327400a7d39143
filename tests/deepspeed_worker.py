"""DeepSpeed ZeRO-3 without GPUs, as far as it goes, for one shipped accelerate config + recipe pair.

    python tests/deepspeed_worker.py ACCELERATE_CONFIG RECIPE MODEL_DIR OUT.json

1. The environment ``accelerate launch`` gives the processes for this config (accelerate's own launcher code), the
   DeepSpeed config accelerate's ``DeepSpeedPlugin`` builds from it, and the trainer's fill-in of its ``auto``
   values and consistency check (transformers' ``HfTrainerDeepSpeedConfig``, as the trainer runs it at start), for
   the config's process count and the training arguments the recipe gives on a GPU (bf16 where the GPU would).
2. DeepSpeed's own parse of the result (``DeepSpeedConfig``, which checks the batch geometry) for that process count.
3. The engine itself in one gloo process on the CPU: the model built already partitioned (ZeRO-3 init), one
   optimizer step (all its accumulation micro-steps) through every encoder, and the gathered 16-bit state dict that
   ``save_model`` writes.

Writes what it saw to OUT.json; any failure is an exception (non-zero exit).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env
from transformers.integrations.deepspeed import HfDeepSpeedConfig, HfTrainerDeepSpeedConfig

from qoqmed.modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from qoqmed.train.recipe import RecipeConfig
from qoqmed.train.rl import make_grpo_config


def launcher_env(config: Path) -> dict[str, str]:
    """The ACCELERATE_* variables ``accelerate launch --config_file config`` sets for its processes."""
    # port 0: a free one (the configured port may be taken on this machine)
    args = launch_command_parser().parse_args(["--config_file", str(config), "--main_process_port", "0", "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    assert args.use_deepspeed, f"{config.name} does not launch DeepSpeed"
    # as accelerate's launch_command does before its DeepSpeed launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def autos(node, path="") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in autos(v, f"{path}.{k}".lstrip("."))]
    return [path] if node == "auto" else []


class DataParallel:
    """What DeepSpeed asks an ``mpu`` for: the data-parallel size of the run being checked."""

    def __init__(self, size: int):
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


def main() -> None:
    config, recipe, model_dir, out = (Path(p) for p in sys.argv[1:5])
    import deepspeed
    import deepspeed.comm.torch
    from deepspeed.runtime.config import DeepSpeedConfig

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (minutes of C++ build) that one process never
    # uses; gloo carries the collectives instead
    deepspeed.comm.torch.build_shm_op = lambda: None

    env = launcher_env(config)
    os.environ.update(env)
    cluster = ClusterConfig.from_yaml_file(str(config))
    settings = RecipeConfig.from_yaml(recipe).rl_settings()
    if settings.bf16 is None:  # what the recipe means on a GPU
        settings = replace(settings, bf16=env["ACCELERATE_MIXED_PRECISION"] == "bf16")
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    args = make_grpo_config(settings, out.parent / "run")
    type(args).world_size = property(lambda self: cluster.num_processes)  # the config's processes, not this one's
    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(plugin.deepspeed_config))
    hf.trainer_config_process(args)
    processor = QoQMedProcessor.from_pretrained(model_dir)
    # finalize reads the model's hidden size only; its config stands in for it (a model built now would be
    # partitioned over a process group that does not exist yet)
    shape = SimpleNamespace(config=QoQMedForConditionalGeneration.config_class.from_pretrained(model_dir))
    hf.trainer_config_finalize(args, shape, settings.max_steps)
    filled = hf.config
    left = autos(filled)
    if left:
        raise ValueError(f"{config.name}: DeepSpeed config keeps 'auto' at {left}")

    with socket.socket() as s:  # a free port: other runs may hold the usual one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo")
    parsed = DeepSpeedConfig(copy.deepcopy(filled), mpu=DataParallel(cluster.num_processes))

    # the engine, for one process: the same config with the batch of one process
    local = copy.deepcopy(filled)
    local["train_batch_size"] = local["train_micro_batch_size_per_gpu"] * local["gradient_accumulation_steps"]
    keep = HfDeepSpeedConfig(local)  # noqa: F841 - from_pretrained builds the model partitioned while it lives
    model = QoQMedForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    partitioned = all(p.numel() == 0 and p.ds_numel > 0 for p in model.parameters())
    # a step large enough to show in the 16-bit gather (the recipes' 1e-6 is below bf16's resolution)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=local)
    batch = processor(text=["Which findings are present?"], return_tensors="pt")
    engine.train()
    before = {k: v.clone() for k, v in engine._zero3_consolidated_16bit_state_dict().items()}
    for _ in range(local["gradient_accumulation_steps"]):  # the engine updates at the accumulation boundary
        loss = engine(**batch, labels=batch["input_ids"]).loss
        engine.backward(loss)
        engine.step()
    loss = loss.detach()
    state = engine._zero3_consolidated_16bit_state_dict()  # what save_model writes (zero3_save_16bit_model)
    result = {
        "launcher_env": env, "filled": filled, "zero_stage": parsed.zero_optimization_stage,
        "train_batch_size": parsed.train_batch_size, "micro_batch": parsed.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": parsed.gradient_accumulation_steps, "bf16": parsed.bfloat16_config.enabled,
        "world_size": cluster.num_processes, "partitioned_at_load": partitioned, "loss": loss.item(),
        "engine_zero_stage": engine.zero_optimization_stage(), "gathered_tensors": len(state),
        "changed_tensors": sum(not torch.equal(before[k], v) for k, v in state.items()),
        "model_tensors": len(model.state_dict()),
    }
    out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
