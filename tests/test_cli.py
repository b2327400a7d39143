"""The command line end to end: the quickstart at smoke size, eval on its output, data validation, help."""

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.domains import DOMAINS

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    result = runner.invoke(app, ["quickstart", "--smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_quickstart_writes_report_metrics_and_plots(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert set(metrics["domains"]) == set(DOMAINS)
    for domain in DOMAINS:
        d = metrics["domains"][domain]
        assert d["n"] > 0
        assert 0.0 <= d["macro_f1"] <= 1.0 and 0.0 <= d["paper_balanced_accuracy"] <= 1.0
    assert 0.0 <= metrics["overall"]["macro_f1"] <= 1.0
    assert "iou_mean" in metrics["overall"]
    assert metrics["wall_time_seconds"] > 0
    report = (smoke_run / "report.md").read_text()
    for domain in DOMAINS:
        assert domain in report
    assert "## Probe set (fixed training questions, sampled as in RL): step 0 → 2" in report
    assert "![Probe-set reward by domain](rl_probe_reward.png)" in report
    for png in ("per_domain_f1.png", "rl_reward_by_domain.png", "rl_probe_reward.png"):
        with Image.open(smoke_run / png) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    predictions = (smoke_run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == sum(metrics["domains"][d]["n"] for d in DOMAINS)
    assert (smoke_run / "rl" / "model" / "config.json").exists()


def _without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def test_eval_command_on_the_quickstart_model(smoke_run, tmp_path):
    data = smoke_run / "data" / "val.jsonl"
    runs = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["eval", "--model", str(smoke_run / "rl" / "model"), "--data", str(data),
                                     "--out", str(tmp_path / name), "--max-new-tokens", "16"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        runs.append(tmp_path / name)
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["n"] == len(data.read_text().splitlines())
    assert (runs[0] / "report.md").exists() and (runs[0] / "predictions.jsonl").exists()
    # greedy decoding: a re-run gives the same predictions and metrics
    assert (runs[0] / "predictions.jsonl").read_text() == (runs[1] / "predictions.jsonl").read_text()
    assert _without_timings(metrics) == _without_timings(json.loads((runs[1] / "metrics.json").read_text()))


def test_eval_with_sampled_answers(smoke_run, tmp_path):
    data = smoke_run / "data" / "val.jsonl"
    result = runner.invoke(app, ["eval", "--model", str(smoke_run / "rl" / "model"), "--data", str(data),
                                 "--out", str(tmp_path / "s"), "--max-new-tokens", "16", "--samples", "2",
                                 "--temperature", "1.0", "--seed", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    sampled = json.loads((tmp_path / "s" / "metrics.json").read_text())["sampled"]
    assert sampled["k"] == 2 and {"pass@1", "pass@2", "mean_reward"} <= set(sampled["overall"])
    assert "## Sampled answers (k=2" in (tmp_path / "s" / "report.md").read_text()
    bad = runner.invoke(app, ["eval", "--model", str(smoke_run / "rl" / "model"), "--data", str(data),
                              "--out", str(tmp_path / "bad"), "--samples", "2", "--temperature", "0"])
    assert bad.exit_code != 0 and "--temperature" in bad.output


def test_eval_with_the_released_scorer_and_label_reading(smoke_run, tmp_path):
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"AF": "A. Fib/Aflutter"}))
    base = ["eval", "--model", str(smoke_run / "rl" / "model"), "--data", str(smoke_run / "data" / "val.jsonl"),
            "--max-new-tokens", "8"]
    result = runner.invoke(app, base + ["--out", str(tmp_path / "ref"), "--preset", "reference",
                                        "--label-parser", "reference"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reference" in (tmp_path / "ref" / "report.md").read_text()
    bad = runner.invoke(app, base + ["--out", str(tmp_path / "x"), "--preset", "reference", "--synonyms", str(syn)])
    assert bad.exit_code != 0 and "takes no options" in bad.output
    syn.write_text("[1, 2]")
    bad = runner.invoke(app, base + ["--out", str(tmp_path / "y"), "--synonyms", str(syn)])
    assert bad.exit_code != 0 and "alias -> label" in bad.output


def test_data_validate_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [
        {"id": "a", "domain": "ct", "dataset": "x/ct", "problem": "<image>\nQ?", "answer": "A",
         "images": ["missing.png"]},
        {"id": "b", "domain": "ct", "dataset": "x/ct", "problem": "Q?"},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    result = runner.invoke(app, ["data", "validate", str(bad)])
    assert result.exit_code == 1
    assert "missing.png" in result.output and "answer" in result.output
    assert result.output.count("bad.jsonl") >= 3  # one line per problem, each naming the file
    as_json = runner.invoke(app, ["data", "validate", str(bad), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.output)["ok"] is False


def test_eval_with_a_folder_that_is_not_a_model(tmp_path, mini_records_path):
    result = runner.invoke(app, ["eval", "--model", str(tmp_path), "--data", str(mini_records_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "config.json" in result.output


@pytest.mark.parametrize("args", [["--help"], ["quickstart", "--help"], ["data", "--help"], ["eval", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output


def test_data_stats_counts_and_plot(smoke_run, tmp_path):
    path = smoke_run / "data" / "train.jsonl"
    result = runner.invoke(app, ["data", "stats", str(path), "--json", "--plot", str(tmp_path / "d.png")])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats["n"] == len(rows)
    for domain in DOMAINS:
        assert stats["domains"][domain]["rows"] == sum(r["domain"] == domain for r in rows)
    counts = [v["rows"] for v in stats["domains"].values()]
    assert stats["imbalance_ratio"] == max(counts) / min(counts)
    with Image.open(tmp_path / "d.png") as img:
        assert img.size[0] > 300
    table = runner.invoke(app, ["data", "stats", str(path)])
    assert table.exit_code == 0 and "largest/smallest" in table.output


def test_compare_two_runs(smoke_run, tmp_path):
    result = runner.invoke(app, ["compare", str(smoke_run), str(smoke_run / "metrics.json"), "--out",
                                 str(tmp_path), "--names", "a,b"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = (tmp_path / "compare.md").read_text()
    assert "+0.0%" in table and "ct" in table
    assert (tmp_path / "compare.png").exists()
    missing = runner.invoke(app, ["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nope" in missing.output


def test_quickstart_on_an_earlier_run_asks_for_a_flag_then_overwrites_or_resumes(smoke_run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(smoke_run, again)
    before = sorted(p.relative_to(again) for p in again.rglob("*"))
    refused = runner.invoke(app, ["quickstart", "--smoke", "--out", str(again)])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "already holds a run" in message and "--overwrite" in message and "--resume" in message
    assert "Traceback" not in refused.output and "overwrite=True" not in refused.output
    assert sorted(p.relative_to(again) for p in again.rglob("*")) == before  # nothing touched

    (again / "notes.txt").write_text("mine")  # not a run output: kept
    stale = again / "rl" / "checkpoint-999"
    stale.mkdir()
    replaced = runner.invoke(app, ["quickstart", "--smoke", "--out", str(again), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output + repr(replaced.exception)
    assert (again / "notes.txt").read_text() == "mine" and not stale.exists()
    fresh, first = (_without_timings(json.loads((d / "metrics.json").read_text())) for d in (again, smoke_run))
    assert fresh.pop("final_model") != first.pop("final_model")
    assert fresh == first  # a complete fresh run of the same recipe

    data_written = (again / "data" / "train.jsonl").stat().st_mtime_ns
    resumed = runner.invoke(app, ["quickstart", "--smoke", "--out", str(again), "--resume"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert (again / "data" / "train.jsonl").stat().st_mtime_ns == data_written  # the run's data is reused
    both = runner.invoke(app, ["quickstart", "--smoke", "--out", str(again), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "exclude each other" in both.output
