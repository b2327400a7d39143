"""benchmarks/gpu_check.py at toy size on the CPU: every row measured, out-of-memory rows recorded, not fatal."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROWS = ["init (random weights on the device)", "generate (transformers, greedy)", "SFT step, LoRA", "DRPO step, LoRA",
        "SFT step, full", "DRPO step, full (+ reference copy)"]


@pytest.fixture(scope="module")
def gpu_check():
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_size_measures_every_row(gpu_check, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the check runs 3B/7B; this test is its CPU run")
    out = tmp_path / "check.json"
    gpu_check.main(["--size", "toy", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["name"]
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ROWS and all(r["status"] == "ok" for r in rows.values()), result["rows"]
    assert rows[ROWS[0]]["init_s"] > 0 and rows[ROWS[0]]["parameters"] > 0
    for name in ROWS[1:]:
        assert rows[name]["step_s"] > 0 and rows[name]["first_step_s"] > 0 and rows[name]["peak_memory_gib"] > 0
    assert rows[ROWS[1]]["tokens"] == 2 * 8 and rows[ROWS[1]]["tokens_per_s"] > 0
    lora, full = rows["SFT step, LoRA"]["trainable"], rows["SFT step, full"]["trainable"]
    assert 0 < lora < full < rows[ROWS[0]]["parameters"]  # full tuning leaves the vision tower frozen
    table = out.with_suffix(".md").read_text()
    assert all(f"| toy | {name} | ok |" in table for name in ROWS)


def test_a_row_out_of_memory_is_recorded_and_the_check_goes_on(gpu_check):
    rows = []

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    gpu_check.run_row(rows, "7B", "DRPO step, full", oom)
    gpu_check.run_row(rows, "7B", "next", lambda: {"step_s": 1.0})
    assert rows[0] == {"size": "7B", "row": "DRPO step, full", "status": "OOM",
                       "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert rows[1]["status"] == "ok"
