"""Training in 2 processes (torchrun, gloo) and a kill-and-resume run, each against an uninterrupted run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.data.schema import load_records
from qoqmed.train.drpo_state import read_drpo_state

WORKER = Path(__file__).with_name("rl_worker.py")
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


def _run(args, timeout=300, torchrun=False):
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port),
               str(WORKER), *args]
    else:
        cmd = [sys.executable, str(WORKER), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _steps(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


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


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")
def test_two_processes_agree_on_advantages_and_train(start, mini_records_path, tmp_path):
    out = tmp_path / "ddp"
    res = _run([str(start), str(mini_records_path), str(out), "--max-steps", "2", "--mode", "reference"],
               timeout=400, torchrun=True)
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
               timeout=400, torchrun=True)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    r0, r1 = _steps(out / "advantages_rank0.jsonl"), _steps(out / "advantages_rank1.jsonl")
    assert [s["step"] for s in r0] == [s["step"] for s in r1] == [0, 1, 2]
    assert r0[-1]["advantages"] == r1[-1]["advantages"]
    assert json.loads((out / "rl_logs.json").read_text())["resumed_from"].endswith("checkpoint-2")
    state = _state(out / "checkpoint-3" / "drpo_state.npz")
    assert sum(len(v) for v in state["domains"].values()) == 12  # 8 restored + 4 questions of the resumed step
