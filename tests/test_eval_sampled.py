"""Sampled evaluation: what RL optimises (mean reward, accuracy, pass@k at the RL temperature) beside greedy."""

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.schema import load_records
from qoqmed.eval import compute_metrics, write_report
from qoqmed.eval.evaluate import evaluate_sampled, generate_responses, pass_at_k
from qoqmed.eval.metrics import compute_sampled_metrics
from qoqmed.eval.report import format_sampled_table
from qoqmed.modeling.tiny import TinySpec, build_tiny

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 0, 4) == 0
    assert pass_at_k(4, 4, 1) == 1 and pass_at_k(4, 4, 4) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    for bad in [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_pass_at_k_is_the_chance_that_k_of_the_samples_hold_a_correct_one():
    for n, c, k in itertools.product(range(1, 7), range(7), range(1, 7)):
        if c > n or k > n:
            continue
        draws = list(itertools.combinations([True] * c + [False] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))


def _sample(domain, accuracy, reward=None, iou=None, format_ok=True):
    return {"domain": domain, "accuracy_reward": accuracy, "reward": accuracy if reward is None else reward,
            "iou": iou, "format_ok": format_ok}


def test_sampled_metrics_by_hand():
    groups = [
        # ecg: one question solved once in 4, one never (constant accuracy 0)
        [_sample("ecg", 1.0), _sample("ecg", 0.0), _sample("ecg", 0.0), _sample("ecg", 0.0, format_ok=False)],
        [_sample("ecg", 0.0, 0.2), _sample("ecg", 0.0, 0.4), _sample("ecg", 0.0, 0.2), _sample("ecg", 0.0, 0.2)],
        # chest_xray: always right (constant accuracy and reward), IoU on two samples
        [_sample("chest_xray", 1.0, iou=0.5), _sample("chest_xray", 1.0, iou=0.25), _sample("chest_xray", 1.0),
         _sample("chest_xray", 1.0)],
    ]
    m = compute_sampled_metrics(groups)
    assert m["k"] == 4 and m["questions"] == 3 and list(m["domains"]) == ["chest_xray", "ecg"]
    ecg, cxr = m["domains"]["ecg"], m["domains"]["chest_xray"]
    assert ecg["pass@1"] == pytest.approx(0.125) and ecg["pass@4"] == pytest.approx(0.5)
    assert ecg["mean_accuracy"] == pytest.approx(0.125) and ecg["mean_reward"] == pytest.approx((0.25 + 0.25) / 2)
    assert ecg["format_rate"] == pytest.approx(7 / 8) and ecg["mean_iou"] is None and ecg["iou_n"] == 0
    assert ecg["constant_accuracy"] == 0.5 and ecg["constant_reward"] == 0.0
    assert ecg["questions"] == 2 and ecg["samples"] == 8
    assert cxr["pass@1"] == cxr["pass@4"] == cxr["constant_accuracy"] == cxr["constant_reward"] == 1.0
    assert cxr["mean_iou"] == pytest.approx(0.375) and cxr["iou_n"] == 2
    overall = m["overall"]  # unweighted mean over domains; IoU only from the domain that has one
    assert overall["pass@1"] == pytest.approx((0.125 + 1) / 2) and overall["pass@4"] == pytest.approx(0.75)
    assert overall["constant_accuracy"] == pytest.approx(0.75) and overall["mean_iou"] == pytest.approx(0.375)
    assert overall["questions"] == 3 and overall["samples"] == 12 and overall["domains"] == ["chest_xray", "ecg"]
    json.dumps(m)
    one = compute_sampled_metrics([[_sample("ecg", 1.0)], [_sample("ecg", 0.5)]])
    assert one["k"] == 1 and "pass@1" in one["overall"] and one["overall"]["constant_accuracy"] == 1.0
    assert "pass@1" in format_sampled_table({**one, "temperature": 1.0}) and "pass@1 | pass@1" not in (
        format_sampled_table({**one, "temperature": 1.0}))
    with pytest.raises(ValueError, match="same number"):
        compute_sampled_metrics([[_sample("ecg", 1.0)], [_sample("ecg", 1.0), _sample("ecg", 0.0)]])
    with pytest.raises(ValueError, match="several domains"):
        compute_sampled_metrics([[_sample("ecg", 1.0), _sample("mri", 1.0)]])
    with pytest.raises(ValueError):
        compute_sampled_metrics([])


@pytest.fixture(scope="module")
def setup(mini_records_path):
    records = load_records(mini_records_path)
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    return records[:6], processor, model


def _no_timing(metrics):
    return {key: value for key, value in metrics.items() if key != "eval_seconds"}


def test_sampled_eval_is_reproducible_and_leaves_the_callers_rng(setup, tmp_path):
    records, processor, model = setup
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a, rows = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=1, out_dir=tmp_path,
                               max_new_tokens=12, show_progress=False)
    assert torch.equal(state, torch.random.get_rng_state())
    b, rows_b = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=1, max_new_tokens=12,
                                 show_progress=False)
    assert _no_timing(a) == _no_timing(b) and rows == rows_b and len(rows) == 18
    _, other = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=2, max_new_tokens=12,
                                show_progress=False)
    assert [r["response"] for r in rows] != [r["response"] for r in other]
    # rows: record order, then sample order
    assert [r["id"] for r in rows] == [rec.id for rec in records for _ in range(3)]
    assert [r["sample"] for r in rows] == [0, 1, 2] * 6
    assert {"reward", "accuracy_reward", "iou", "format_ok"} <= set(rows[0])
    assert set(a["domains"]) == {r.domain for r in records}
    assert a["k"] == 3 and a["temperature"] == 1.2 and a["top_p"] == 1.0 and a["seed"] == 1
    keys = {"mean_reward", "mean_accuracy", "mean_iou", "format_rate", "pass@1", "pass@3", "constant_accuracy"}
    assert keys <= set(a["overall"]) and all(keys <= set(d) for d in a["domains"].values())
    assert all(0.0 <= a["overall"][key] <= 1.0 for key in keys - {"mean_iou"})
    assert a["overall"]["pass@1"] <= a["overall"]["pass@3"]
    json.dumps(a)
    written = (tmp_path / "sampled_predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == rows


def test_bad_arguments_are_clear_errors(setup):
    records, processor, model = setup
    for k in (0, -1):
        with pytest.raises(ValueError, match="k="):
            evaluate_sampled(model, processor, records, k=k)
    for temperature in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            evaluate_sampled(model, processor, records, k=2, temperature=temperature)
    with pytest.raises(ValueError, match="top_p"):
        evaluate_sampled(model, processor, records, k=2, top_p=0)
    with pytest.raises(ValueError, match="seed"):
        evaluate_sampled(model, processor, records, k=2, seed=-1)
    with pytest.raises(ValueError, match="samples"):
        generate_responses(model, processor, records, samples=-1, show_progress=False)


def test_one_sample_at_near_zero_temperature_is_the_greedy_answer(setup):
    records, processor, model = setup
    greedy = generate_responses(model, processor, records, max_new_tokens=12, show_progress=False)
    _, rows = evaluate_sampled(model, processor, records, k=1, temperature=1e-7, seed=5, max_new_tokens=12,
                               show_progress=False)
    assert [r["response"] for r in rows] == greedy


def test_copies_of_a_record_sample_independently_and_greedy_is_unchanged(setup):
    records, processor, model = setup
    torch.manual_seed(0)
    sampled = generate_responses(model, processor, records, max_new_tokens=12, show_progress=False, samples=2,
                                 temperature=5.0)
    assert all(isinstance(s, list) and len(s) == 2 for s in sampled)
    assert any(s[0] != s[1] for s in sampled)
    greedy = generate_responses(model, processor, records, max_new_tokens=12, show_progress=False)
    assert greedy == generate_responses(model, processor, records, max_new_tokens=12, show_progress=False)
    assert all(isinstance(g, str) for g in greedy)


def _greedy_rows():
    return [{"id": i, "domain": "ecg", "dataset": "ecg/x", "true_labels": ["A"], "pred_labels": [p], "iou": None,
             "format_ok": True} for i, p in enumerate("AAB")]


def test_report_adds_the_sampled_table_and_is_unchanged_without_it(tmp_path):
    metrics = compute_metrics(_greedy_rows())
    plain = (write_report(metrics, tmp_path / "plain")["report"]).read_text()
    groups = [[_sample("ecg", 1.0), _sample("ecg", 0.0)], [_sample("ecg", 0.0), _sample("ecg", 0.0)]]
    sampled = {"k": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3, **compute_sampled_metrics(groups)}
    report = (write_report({**metrics, "sampled": sampled}, tmp_path / "s")["report"]).read_text()
    assert "Sampled" not in plain and "sampled" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "## Sampled answers (k=2, T=0.7, top_p=0.9, seed=3)" in report
    assert "| domain | questions | mean reward | accuracy | pass@1 | pass@2 | constant-accuracy share |" in report
    assert "| ecg | 2 | 0.250 | 0.250 | 0.250 | 0.500 | 0.500 |" in report
    # the sampled table comes right after the greedy one; the rest of the report is as before
    assert report.index("## Per domain") < report.index("## Sampled answers") < report.index("## Per dataset")
    start, end = report.index("## Sampled answers"), report.index("![per_domain_f1]")
    assert report[:start] + report[end:] == plain
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["sampled"]["overall"]["pass@2"] == 0.5


runner = CliRunner()


@pytest.fixture(scope="module")
def saved_model(mini_records_path, tmp_path_factory):
    records = load_records(mini_records_path)
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records], SPEC, seed=0)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_cli_eval_writes_the_sampled_section(saved_model, mini_records_path, tmp_path):
    args = ["eval", "--model", str(saved_model), "--data", str(mini_records_path), "--max-new-tokens", "8"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "s"), "--samples", "2", "--temperature", "0.9",
                                 "--top-p", "0.95", "--seed", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    sampled = metrics["sampled"]
    assert (sampled["k"], sampled["temperature"], sampled["top_p"], sampled["seed"]) == (2, 0.9, 0.95, 4)
    assert {"mean_reward", "mean_accuracy", "pass@1", "pass@2", "constant_accuracy"} <= set(sampled["overall"])
    assert set(sampled["domains"]) == set(metrics["domains"]) and sampled["questions"] == metrics["n"]
    assert len((tmp_path / "s" / "sampled_predictions.jsonl").read_text().splitlines()) == 2 * metrics["n"]
    report = (tmp_path / "s" / "report.md").read_text()
    assert "## Sampled answers (k=2, T=0.9, top_p=0.95, seed=4)" in report and "sampled decoding" in report
    assert "sampled at T=0.9, k=2" in result.output
    # without --samples: no sampled section, no sampled file
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "sampled" not in json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert not (tmp_path / "g" / "sampled_predictions.jsonl").exists()


@pytest.mark.parametrize("bad, message", [
    (["--samples", "-1"], "--samples must be >= 0"),
    (["--samples", "2", "--temperature", "0"], "--temperature must be > 0"),
    (["--samples", "2", "--temperature", "-0.5"], "--temperature must be > 0"),
    (["--samples", "2", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--samples", "2", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
])
def test_cli_eval_rejects_bad_sampling_arguments(saved_model, mini_records_path, tmp_path, bad, message):
    result = runner.invoke(app, ["eval", "--model", str(saved_model), "--data", str(mini_records_path),
                                 "--out", str(tmp_path / "bad"), *bad])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_cli_eval_temperature_zero_is_fine_without_samples(saved_model, mini_records_path, tmp_path):
    result = runner.invoke(app, ["eval", "--model", str(saved_model), "--data", str(mini_records_path),
                                 "--out", str(tmp_path / "g"), "--max-new-tokens", "4", "--temperature", "0"])
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_sampled_eval_prompts_in_the_given_style(setup, monkeypatch):
    import qoqmed.eval.evaluate as evaluation
    from qoqmed.data.prompt_styles import (
        RELEASED_FORMAT_SUFFIX,
        RELEASED_SYSTEM_PROMPT,
        SYSTEM_PROMPT,
    )

    records, processor, model = setup
    seen = []
    load = evaluation.load_record

    def recording(rec, *style):
        loaded = load(rec, *style)
        seen.append((style, loaded))
        return loaded

    monkeypatch.setattr(evaluation, "load_record", recording)
    metrics, rows = evaluate_sampled(model, processor, records[:2], k=2, temperature=1.0, seed=3, max_new_tokens=4,
                                     show_progress=False, prompt_style="released")
    generated = [(style, loaded) for style, loaded in seen if style]
    assert len(generated) == 2 and all(style == ("released",) for style, _ in generated)
    assert all(loaded.problem.endswith(RELEASED_FORMAT_SUFFIX) or RELEASED_FORMAT_SUFFIX + "<ecg>" in loaded.problem
               for _, loaded in generated)
    assert metrics["prompt_style"] == "released" and len(rows) == 4
    from qoqmed.data.prompts import messages_for

    assert messages_for(generated[0][1])[0]["content"][0]["text"] == RELEASED_SYSTEM_PROMPT
    seen.clear()
    metrics, _ = evaluate_sampled(model, processor, records[:2], k=2, temperature=1.0, seed=3, max_new_tokens=4,
                                  show_progress=False)
    assert metrics["prompt_style"] == "qoqmed"
    assert all(RELEASED_FORMAT_SUFFIX not in loaded.problem for _, loaded in seen)
    assert messages_for(seen[0][1])[0]["content"][0]["text"] == SYSTEM_PROMPT
    with pytest.raises(ValueError, match="choose one of qoqmed, released"):
        evaluate_sampled(model, processor, records, k=2, prompt_style="official")


def test_cli_eval_samples_in_the_prompt_style(saved_model, mini_records_path, tmp_path):
    result = runner.invoke(app, ["eval", "--model", str(saved_model), "--data", str(mini_records_path),
                                 "--out", str(tmp_path / "r"), "--max-new-tokens", "4", "--samples", "2",
                                 "--prompt-style", "released"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["sampled"]["prompt_style"] == "released"
    assert "- **prompt style**: released" in (tmp_path / "r" / "report.md").read_text()
