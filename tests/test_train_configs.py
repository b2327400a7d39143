"""Shipped training YAMLs and accelerate configs load; `qoqmed sft` and `qoqmed train --resume` work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.train.settings import RLSettings
from qoqmed.train.recipe import RecipeConfig

ROOT = Path(__file__).resolve().parents[1]
TRAINING = sorted(p for p in (ROOT / "qoqmed" / "configs").glob("*.yaml") if not p.name.startswith("experiment"))
ACCELERATE = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_configs_load(path):
    cfg = RecipeConfig.from_yaml(path)
    rl = RLSettings(**{"seed": cfg.seed, **cfg.rl})
    assert rl.batch_size % rl.num_generations == 0


def test_cluster_configs_are_shipped():
    names = {p.name for p in ACCELERATE}
    assert {"single_gpu.yaml", "zero3_8gpu.yaml", "fsdp2_8gpu.yaml", "multinode_zero3.yaml"} <= names
    names = {p.name for p in TRAINING}
    assert {"gpu_single.yaml", "gpu8_zero3.yaml", "gpu8_fsdp2.yaml", "multinode.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))  # rejects unknown keys
    assert cfg.num_processes >= 1
    if "zero3" in path.name:
        assert cfg.distributed_type == "DEEPSPEED" and cfg.deepspeed_config["zero_stage"] == 3
    if "fsdp2" in path.name:
        assert cfg.distributed_type == "FSDP" and cfg.fsdp_config["fsdp_version"] == 2
    if "multinode" in path.name:
        assert cfg.num_machines == 2 and cfg.num_processes == 16


def test_sft_command_trains_a_tiny_model(mini_records_path, tmp_path):
    out = tmp_path / "sft"
    res = CliRunner().invoke(app, ["sft", "--data", str(mini_records_path), "--out", str(out), "--max-steps", "3",
                                   "--batch-size", "4", "--learning-rate", "0.003", "--logging-steps", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "model" / "config.json").exists()
    logs = json.loads((out / "sft_logs.json").read_text())
    assert logs["records"] == 12 and logs["history"]
    bad = CliRunner().invoke(app, ["sft", "--data", str(mini_records_path), "--out", str(out), "--model",
                                   str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "config.json" in bad.output


def test_train_command_has_resume_and_rejects_bad_config(tmp_path):
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "--resume" in res.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rl: {estimator: ppo}\ndata: {synthetic: {n_train: 9}}\n")
    res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2


def _launch_pairs() -> list[tuple[Path, Path]]:
    """(accelerate config, recipe) pairs from the launch command each accelerate config documents."""
    pairs = []
    for path in ACCELERATE:
        text = path.read_text().replace("\\\n#", " ")
        match = re.search(r"accelerate launch --config_file (\S+) .*?-m qoqmed\.cli train (\S+)", text)
        assert match, f"{path.name}: no documented launch command"
        assert (ROOT / match.group(1)).resolve() == path, f"{path.name}: its launch command names {match.group(1)}"
        pairs.append((path, ROOT / match.group(2)))
    return pairs


@pytest.mark.parametrize("config,recipe", _launch_pairs(), ids=lambda p: p.name)
def test_launch_pairs_agree_on_batch_geometry(config, recipe):
    """What the libraries check when the trainer starts, without GPUs: DeepSpeed's gradient accumulation must not
    differ from the trainer's (transformers raises 'ds gradient_accumulation_steps=... vs hf ...'), and every
    generation batch must hold whole groups of rollouts on every process count (TRL's divisibility rule)."""
    from accelerate.commands.config.config_args import ClusterConfig

    assert recipe.exists(), f"{config.name} launches {recipe}, which is not shipped"
    cluster = ClusterConfig.from_yaml_file(str(config))
    rl = RecipeConfig.from_yaml(recipe).rl_settings()
    ds = cluster.deepspeed_config or {}
    if "gradient_accumulation_steps" in ds:
        assert ds["gradient_accumulation_steps"] == rl.gradient_accumulation_steps, (
            f"{config.name}: DeepSpeed gradient_accumulation_steps {ds['gradient_accumulation_steps']} vs "
            f"{recipe.name} rl.gradient_accumulation_steps {rl.gradient_accumulation_steps}")
    generation_batch = rl.batch_size * cluster.num_processes * rl.gradient_accumulation_steps
    assert generation_batch % rl.num_generations == 0, (
        f"{config.name} + {recipe.name}: {generation_batch} rollouts per generation batch is not a multiple of "
        f"{rl.num_generations} rollouts per question")


def _deepspeed_pairs() -> list[tuple[Path, Path]]:
    from accelerate.commands.config.config_args import ClusterConfig

    return [(c, r) for c, r in _launch_pairs() if ClusterConfig.from_yaml_file(str(c)).distributed_type == "DEEPSPEED"]


@pytest.mark.parametrize("config,recipe", _deepspeed_pairs(), ids=lambda p: p.name)
def test_deepspeed_zero3_configs_start_an_engine_on_cpu(config, recipe, tmp_path):
    """The strongest DeepSpeed check without GPUs (tests/deepspeed_worker.py): the launcher's environment, the
    DeepSpeed config accelerate and the trainer make from it for the config's process count, DeepSpeed's own parse
    of it, and a ZeRO-3 engine in one CPU process taking a training step."""
    pytest.importorskip("deepspeed")
    from qoqmed.modeling.tiny import build_tiny

    processor, model = build_tiny(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "deepspeed.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "deepspeed_worker.py"), str(config), str(recipe),
                          str(tmp_path / "model"), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    seen = json.loads(out.read_text())
    rl = RecipeConfig.from_yaml(recipe).rl_settings()
    assert seen["zero_stage"] == seen["engine_zero_stage"] == 3
    assert seen["launcher_env"]["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert seen["micro_batch"] == rl.batch_size
    assert seen["gradient_accumulation_steps"] == rl.gradient_accumulation_steps
    assert seen["train_batch_size"] == rl.batch_size * rl.gradient_accumulation_steps * seen[
        "world_size"]
    assert seen["bf16"] is True and seen["filled"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert seen["partitioned_at_load"]  # zero3_init_flag: no process ever holds the whole model
    assert np.isfinite(seen["loss"]) and seen["changed_tensors"] > 0
    assert seen["gathered_tensors"] == seen["model_tensors"]  # save_model's 16-bit gather is the whole model
