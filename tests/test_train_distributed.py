"""Training in 2 CPU processes (gloo; DDP and FSDP2, launched with the shipped accelerate configs) and
kill-and-resume runs, each against an uninterrupted run."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qoqmed.modeling import QoQMedForConditionalGeneration

from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.data.schema import load_records
from qoqmed.train.drpo_state import read_drpo_state
from rl_worker import read_steps as _steps

WORKER, SFT_WORKER = Path(__file__).with_name("rl_worker.py"), Path(__file__).with_name("sft_worker.py")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
DDP_CPU, FSDP2_CPU = CONFIGS / "cpu_2proc.yaml", CONFIGS / "fsdp2_cpu_2proc.yaml"
SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)


@pytest.fixture(scope="module")
def start(mini_records_path, tmp_path_factory):
    records = load_records(mini_records_path)
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    folder = tmp_path_factory.mktemp("start")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, timeout=300, accelerate_config=None, program=(str(WORKER),)):
    """The worker (``program``: a script, or ``-m`` and a module) in one process, or in the processes
    ``accelerate launch`` starts for ``accelerate_config``. On timeout the whole process group is killed, so no
    hung worker outlives the test; ``returncode`` is then None."""
    if accelerate_config:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(accelerate_config),
               "--main_process_port", str(_free_port()), *program, *args]
    else:
        cmd = [sys.executable, *program, *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, None, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _state(path):
    return read_drpo_state(path)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):  # per-domain history and k-means centres
            assert a[k].keys() == b[k].keys(), k
            for d in a[k]:
                np.testing.assert_array_equal(a[k][d], b[k][d])
        else:
            assert a[k] == b[k], k


def test_kill_after_checkpoint_and_resume_matches_an_uninterrupted_run(start, mini_records_path, tmp_path):
    common = [str(start), str(mini_records_path)]
    full = _run([*common, str(tmp_path / "full"), "--max-steps", "3", "--history", "3"])
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run([*common, str(tmp_path / "resumed"), "--max-steps", "3", "--history", "3",
                   "--kill-after-step", "2"])
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-2").exists() and not (tmp_path / "resumed" / "checkpoint-3").exists()
    resumed = _run([*common, str(tmp_path / "resumed"), "--max-steps", "3", "--history", "3", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = _steps(tmp_path / "full" / "advantages_rank0.jsonl"), _steps(tmp_path / "resumed" / "advantages_rank0.jsonl")
    assert [s["step"] for s in a] == [0, 1, 2] and [s["step"] for s in b] == [0, 1, 2]  # killed run: 0, 1; resumed: 2
    for x, y in zip(a, b):
        assert x["param_sum"] == y["param_sum"]  # the resumed policy is the one that was saved, exactly
        assert x["completion_ids"] == y["completion_ids"]  # same sampling RNG state
        assert x["groups"] == y["groups"] and x["rewards"] == y["rewards"]
        assert np.allclose(x["advantages"], y["advantages"], atol=1e-6)
    assert any(abs(v) > 0 for v in b[-1]["advantages"])  # a step with signal, not a trivially equal zero batch
    _same_state(_state(tmp_path / "full" / "checkpoint-2" / "drpo_state.npz"),
                _state(tmp_path / "resumed" / "checkpoint-2" / "drpo_state.npz"))
    final = _state(tmp_path / "full" / "checkpoint-3" / "drpo_state.npz")
    _same_state(final, _state(tmp_path / "resumed" / "checkpoint-3" / "drpo_state.npz"))
    assert sum(len(v) for v in final["domains"].values()) >= 3  # the history really carried over
    logs = json.loads((tmp_path / "resumed" / "rl_logs.json").read_text())
    assert logs["resumed_from"].endswith("checkpoint-2")
    csv_steps = [int(line.split(",")[0]) for line in
                 (tmp_path / "resumed" / "rl_metrics.csv").read_text().splitlines()[1:]]
    assert sorted(set(csv_steps)) == [0, 1, 2]


def test_two_processes_agree_on_advantages_and_train(start, mini_records_path, tmp_path):
    """DDP on 2 CPU processes, launched with the shipped accelerate config."""
    out = tmp_path / "ddp"
    res = _run([str(start), str(mini_records_path), str(out), "--max-steps", "2", "--mode", "reference"],
               timeout=400, accelerate_config=DDP_CPU)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    r0, r1 = _steps(out / "advantages_rank0.jsonl"), _steps(out / "advantages_rank1.jsonl")
    assert len(r0) == len(r1) == 2
    for x, y in zip(r0, r1):
        assert x["rank"] == 0 and y["rank"] == 1
        assert x["groups"] == y["groups"] and x["rewards"] == y["rewards"] and x["advantages"] == y["advantages"]
        assert len(x["groups"]) == 8 and len(x["local"]) == len(y["local"]) == 4  # 2 x 4 rows gathered
        assert np.allclose(x["local"] + y["local"], x["advantages"], atol=1e-6)  # each keeps its own slice
        assert len({g.split("@")[0] for g in x["groups"]}) == 4  # 4 questions x 2 rollouts over both ranks
    state = _state(out / "checkpoint-2" / "drpo_state.npz")
    assert sum(len(v) for v in state["domains"].values()) == 8  # reference history: every question of 2 steps
    logs = json.loads((out / "rl_logs.json").read_text())
    assert len(logs["domains"]) == 2
    assert {k.split("/")[0] for k in logs["domains"][1]} >= {"reward", "mean_abs_scale", "T_g", "k", "n_history"}

    # both processes resume from that checkpoint: one more step, on top of the restored reference history
    res = _run([str(start), str(mini_records_path), str(out), "--max-steps", "3", "--mode", "reference", "--resume"],
               timeout=400, accelerate_config=DDP_CPU)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    r0, r1 = _steps(out / "advantages_rank0.jsonl"), _steps(out / "advantages_rank1.jsonl")
    assert [s["step"] for s in r0] == [s["step"] for s in r1] == [0, 1, 2]
    assert r0[-1]["advantages"] == r1[-1]["advantages"]
    assert json.loads((out / "rl_logs.json").read_text())["resumed_from"].endswith("checkpoint-2")
    state = _state(out / "checkpoint-3" / "drpo_state.npz")
    assert sum(len(v) for v in state["domains"].values()) == 12  # 8 restored + 4 questions of the resumed step


def _final_model(folder):
    model, info = QoQMedForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.state_dict()


def test_fsdp2_on_cpu_trains_with_ecg_on_one_rank_resumes_and_matches_one_process(start, mini_records_path,
                                                                                   tmp_path):
    """FSDP2 (fully_shard, gloo) on 2 CPU processes, launched with the shipped accelerate config. Process 0's
    micro-batches hold only ECG questions and process 1's only image questions, so only the modality-safe forward
    keeps their collectives in step (the worker checks the split at every step)."""
    def fsdp(out, *extra):
        return _run([str(start), str(mini_records_path), str(tmp_path / out), "--max-steps", "3", "--history", "3",
                     "--split-ecg", "--eos-bias", "7.5", *extra], accelerate_config=FSDP2_CPU)

    full = fsdp("full")
    assert full.returncode == 0, full.stderr[-4000:]
    killed = fsdp("resumed", "--kill-after-step", "2")
    assert killed.returncode != 0 and (tmp_path / "resumed" / "checkpoint-2").exists()
    assert not (tmp_path / "resumed" / "checkpoint-3").exists()
    assert any((tmp_path / "resumed" / "checkpoint-2").glob("pytorch_model_fsdp_*"))  # a sharded FSDP checkpoint
    resumed = fsdp("resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    for rank in (0, 1):
        a = _steps(tmp_path / "full" / f"advantages_rank{rank}.jsonl")
        b = _steps(tmp_path / "resumed" / f"advantages_rank{rank}.jsonl")
        assert [s["step"] for s in a] == [s["step"] for s in b] == [0, 1, 2]
        assert all(i.startswith("ecg-") == (rank == 0) for s in a for i in s["ids"])
        for x, y in zip(a, b):
            assert x["param_sum"] == y["param_sum"] and x["completion_ids"] == y["completion_ids"]
            assert x["advantages"] == y["advantages"]
        assert a[2]["param_sum"] != a[0]["param_sum"]  # it trains (the warm-up makes the first update 0)
    _same_state(_state(tmp_path / "full" / "checkpoint-3" / "drpo_state.npz"),
                _state(tmp_path / "resumed" / "checkpoint-3" / "drpo_state.npz"))
    losses = [h["loss"] for h in json.loads((tmp_path / "full" / "rl_logs.json").read_text())["log_history"]
              if "loss" in h]
    resumed_losses = [h["loss"] for h in json.loads((tmp_path / "resumed" / "rl_logs.json").read_text())[
        "log_history"] if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] == resumed_losses[-1]
    final, final_resumed = _final_model(tmp_path / "full" / "model"), _final_model(tmp_path / "resumed" / "model")
    initial = _final_model(start)
    assert all(torch.equal(final[k], final_resumed[k]) for k in final)  # the gathered save, identical
    assert any(not torch.equal(final[k], initial[k]) for k in final)

    # One process scores the same rollouts (every process's completions of step 0, replayed) on one batch of all
    # four questions. On-policy at step 0 the loss is -sum(advantage * tokens) / tokens (+ a KL that is 0 up to
    # rounding): the same float32 terms summed in another order and split over 2 processes, so they agree to
    # float32 rounding (1e-5 relative); the gradient norm passes FSDP's reduce-scatter, hence 1e-4.
    single = _run([str(start), str(mini_records_path), str(tmp_path / "single"), "--max-steps", "1", "--history", "3",
                   "--split-ecg", "--batch-size", "8", "--replay", str(tmp_path / "full")])
    assert single.returncode == 0, single.stderr[-4000:]
    first = json.loads((tmp_path / "full" / "rl_logs.json").read_text())["log_history"][0]
    one = json.loads((tmp_path / "single" / "rl_logs.json").read_text())["log_history"][0]
    assert abs(first["loss"]) > 1e-3  # completions of different lengths: not the trivial zero
    assert one["loss"] == pytest.approx(first["loss"], rel=1e-5)
    assert one["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-4)


def test_fsdp2_on_cpu_without_the_modality_safe_forward_breaks(start, mini_records_path, tmp_path):
    """The same split without ``encoders_every_step``: process 0 runs the ECG encoder where process 1 runs the
    vision tower, so FSDP's parameter gathers no longer pair up. gloo reports the mismatch; NCCL would hang."""
    unsafe = tmp_path / "unsafe_start"
    shutil.copytree(start, unsafe)
    config = json.loads((unsafe / "config.json").read_text())
    config["encoders_every_step"] = False
    (unsafe / "config.json").write_text(json.dumps(config))
    res = _run([str(unsafe), str(mini_records_path), str(tmp_path / "out"), "--max-steps", "1", "--split-ecg"],
               timeout=120, accelerate_config=FSDP2_CPU)
    assert res.returncode != 0  # None: it hung and was killed
    if res.returncode is not None:
        assert "collective mismatch" in res.stderr, res.stderr[-3000:]


def test_fsdp2_on_cpu_warm_start_is_sharded_saves_the_whole_model_and_matches_one_process(start, mini_records_path,
                                                                                          tmp_path):
    """The supervised warm start under the shipped FSDP2 config on 2 CPU processes (2 rows each) against one
    process taking the same 4 rows per step. The first step starts from the same weights on the same rows, so the
    loss is the same answer-token sum over the same token count (every process's), computed in float32 in another
    split: equal to float32 rounding (1e-5 relative); the gradient norm also passes FSDP's reduce-scatter, hence
    1e-4. Measured: the losses equal, the gradient norms 2e-6 apart. A loss averaged per process instead moves
    the first loss by 1.1e-5, its gradient norm by 7e-4 and the second loss by 6e-4 (relative)."""
    sharded = _run([str(start), str(mini_records_path), str(tmp_path / "fsdp"), "--batch-size", "2"],
                   accelerate_config=FSDP2_CPU, program=[str(SFT_WORKER)])
    assert sharded.returncode == 0, sharded.stderr[-4000:]
    single = _run([str(start), str(mini_records_path), str(tmp_path / "single"), "--batch-size", "4"],
                  program=[str(SFT_WORKER)])
    assert single.returncode == 0, single.stderr[-4000:]

    ranks = [json.loads((tmp_path / "fsdp" / f"sft_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["distributed_type"] == "FSDP" and r["sharded"] for r in ranks)  # not DDP in disguise
    one = json.loads((tmp_path / "single" / "sft_rank0.json").read_text())
    assert one["distributed_type"] == "NO" and not one["sharded"]
    steps, steps_one = ranks[0]["history"][:2], one["history"][:2]
    assert [h["step"] for h in steps] == [h["step"] for h in steps_one] == [1, 2] and steps[0]["loss"] > 0
    assert steps_one[0]["loss"] == pytest.approx(steps[0]["loss"], rel=1e-5)
    assert steps_one[0]["grad_norm"] == pytest.approx(steps[0]["grad_norm"], rel=1e-4)
    # the second step starts from weights the first one updated: the LM head too, averaged over both processes
    # (each process's own gradient alone on its half of the head moves the gradient norm by 2.3e-3 and this loss
    # by 2.4e-4 relative)
    assert steps_one[1]["loss"] == pytest.approx(steps[1]["loss"], rel=1e-5)

    # the warm-started model is written whole, though each process held half of it
    assert not any((tmp_path / "fsdp" / "model").glob("pytorch_model_fsdp*"))
    trained, initial = _final_model(tmp_path / "fsdp" / "model"), _final_model(start)
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)


def test_fsdp2_on_cpu_refuses_lora_before_training(start, mini_records_path, tmp_path):
    """LoRA under FSDP stops when the trainer is built, naming what to launch instead, before any step runs."""
    run = _run([str(start), str(mini_records_path), str(tmp_path / "fsdp"), "--batch-size", "2", "--lora"],
               accelerate_config=FSDP2_CPU, program=[str(SFT_WORKER)])
    assert run.returncode not in (0, None), run.stderr[-4000:]
    assert "LoRA adapters are not supported under FSDP" in run.stderr and "cpu_2proc.yaml" in run.stderr
    assert not (tmp_path / "fsdp" / "sft").exists() or not any((tmp_path / "fsdp" / "sft").glob("checkpoint-*"))
    assert not (tmp_path / "fsdp" / "model").exists()


def test_fsdp2_on_cpu_recipe_keeps_the_warm_started_model(mini_records_path, tmp_path):
    """``qoqmed train`` with the warm start enabled, launched with the shipped FSDP2 config: the warm-started model
    RL starts from is written whole, and the warm-start evaluation (main process only) reads it from there."""
    recipe = {"data": {"train": str(mini_records_path), "test": str(mini_records_path)},
              "model": {"init": "tiny", "hidden_size": 64, "intermediate_size": 128, "vision_depth": 1},
              "sft": {"max_steps": 2, "batch_size": 2, "progress_bar": False},
              "rl": {"num_generations": 2, "batch_size": 4, "max_steps": 1, "max_completion_length": 8,
                     "progress_bar": False},
              "eval": {"max_new_tokens": 4, "evaluate_warm_start": True}}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    res = _run(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")],
               accelerate_config=FSDP2_CPU, program=["-m", "qoqmed.cli"])
    assert res.returncode == 0, res.stderr[-4000:]
    assert _final_model(tmp_path / "run" / "sft_model").keys() == _final_model(tmp_path / "run" / "rl" / "model").keys()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warm_start"]["overall"]["n"] == 12
