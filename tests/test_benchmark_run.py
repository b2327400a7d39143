"""End to end: every benchmark answered by the tiny random model from its fixture, the report, the command line
and the comparison of runs."""

import json

import pytest
from typer.testing import CliRunner

from benchmark_layouts import MAKERS, make_mmmu
from qoqmed.cli import app
from qoqmed.eval.benchmarks import get_benchmark
from qoqmed.eval.benchmarks.prompts import build_problem, system_turn
from qoqmed.eval.benchmarks.protocol import summarize
from qoqmed.eval.benchmarks.run import evaluate_benchmark
from qoqmed.modeling.tiny import TinySpec, build_tiny

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    processor, model = build_tiny(["yes no liver lung A B C D E boxed answer option letter"], SPEC, seed=0)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return processor, model, out


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_benchmark_end_to_end(name, tiny, tmp_path):
    processor, model, _ = tiny
    data = MAKERS[name](tmp_path / "data")
    results = evaluate_benchmark(model, processor, name, data, tmp_path / "out", max_new_tokens=6, batch_size=4,
                                 show_progress=False, model_name="tiny")
    items = get_benchmark(name).load(data)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [i.id for i in items] and results["questions"] == len(items)
    assert results["overall"] == summarize(rows)          # the results are the rows' summary, nothing else
    assert results["settings"] == {"benchmark": name, "split": get_benchmark(name).splits[0], "protocol": "qoqmed",
                                   "prompt_style": "qoqmed", "max_new_tokens": 6, "max_images": 6, "seed": 42,
                                   "temperature": 0.0, "decoding": "greedy", "batch_size": 4}
    for field in get_benchmark(name).subsets:
        per_value = results["subsets"][field]
        assert sum(s["n"] for s in per_value.values()) == len(items)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"# {get_benchmark(name).title}: tiny" in report and "| overall | " in report
    assert all(isinstance(r["response"], str) for r in rows)


def test_greedy_answers_are_the_same_on_every_run(tiny, tmp_path):
    processor, model, _ = tiny
    data = MAKERS["vqa-rad"](tmp_path / "data")
    runs = []
    for k in range(2):
        evaluate_benchmark(model, processor, "vqa-rad", data, tmp_path / f"o{k}", max_new_tokens=6,
                           show_progress=False)
        runs.append([json.loads(x)["response"] for x in (tmp_path / f"o{k}" / "predictions.jsonl").read_text().splitlines()])
    assert runs[0] == runs[1]


def test_questions_over_the_image_limit_are_counted(tiny, tmp_path):
    processor, model, _ = tiny
    data = make_mmmu(tmp_path / "data", images_in_first=7)
    results = evaluate_benchmark(model, processor, "mmmu-med", data, tmp_path / "out", max_new_tokens=4,
                                 show_progress=False)
    assert results["questions_over_image_limit"] == 1
    first = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert (first["images"], first["images_shown"]) == (7, 6)
    assert "Questions with more than 6 images (shown their first 6): 1." in (tmp_path / "out" / "report.md").read_text()


def test_prompts_per_style(tmp_path):
    item = get_benchmark("vqa-rad").load(MAKERS["vqa-rad"](tmp_path / "d"))[0]
    assert build_problem(item, 1, "plain") == "<image>\nis there a fracture?\nAnswer yes or no."
    assert build_problem(item, 1, "qoqmed").endswith("Answer yes or no, inside \\boxed{}.")
    assert system_turn("plain") is None and "\\boxed{}" in system_turn("qoqmed")
    choice = get_benchmark("pmc-vqa").load(MAKERS["pmc-vqa"](tmp_path / "p"))[0]
    assert build_problem(choice, 1, "plain") == (
        "<image>\nWhat imaging modality is used?\nA. CT\nB. MRI\nC. PET\nD. Ultrasound\n"
        "Answer with the option's letter from the given choices directly.")


def test_cli_benchmark_runs_and_compare(tiny, tmp_path):
    _, _, model_dir = tiny
    data = MAKERS["slake"](tmp_path / "slake")
    base = ["eval", "--model", str(model_dir), "--data", str(data), "--benchmark", "slake", "--max-new-tokens", "4"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "SLAKE (English) (test, 3 questions)" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--protocol", "medevalkit", "--prompt-style",
                            "plain"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["settings"]["protocol"] == "medevalkit"
    r = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compared["settings_that_differ"] == {"protocol": {"a": "qoqmed", "b": "medevalkit"},
                                                "prompt_style": {"a": "qoqmed", "b": "plain"}}
    assert "Settings that differ" in (tmp_path / "cmp" / "compare.md").read_text()
    for bad, message in ((["--protocol", "lmms"], "protocol='lmms'"), (["--split", "dev"], "split 'dev'"),
                         (["--prompt-style", "fancy"], "prompt style 'fancy'")):
        r = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), *bad])
        assert r.exit_code == 2 and message in r.output, r.output
