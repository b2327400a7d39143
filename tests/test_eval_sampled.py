"""Sampled evaluation: what RL optimises (mean reward, accuracy, pass@k at the RL temperature) beside greedy."""

import pytest
import torch

from qoqmed.data.schema import load_records
from qoqmed.eval.evaluate import evaluate_sampled, generate_responses, pass_at_k
from qoqmed.modeling.tiny import TinySpec, build_tiny


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 0, 4) == 0
    assert pass_at_k(4, 4, 1) == 1 and pass_at_k(4, 4, 4) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


@pytest.fixture(scope="module")
def setup(mini_records_path):
    records = load_records(mini_records_path)
    processor, model = build_tiny([r.problem for r in records] + [r.answer for r in records],
                                  TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32),
                                  seed=0)
    return records[:6], processor, model


def test_sampled_eval_is_reproducible_and_leaves_the_callers_rng(setup, tmp_path):
    records, processor, model = setup
    state = torch.random.get_rng_state()
    a, rows = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=1, out_dir=tmp_path,
                               max_new_tokens=12, show_progress=False)
    assert torch.equal(state, torch.random.get_rng_state())
    b, _ = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=1, max_new_tokens=12,
                            show_progress=False)
    assert a == b and len(rows) == 18
    _, other = evaluate_sampled(model, processor, records, k=3, temperature=1.2, seed=2, max_new_tokens=12,
                                show_progress=False)
    assert [r["response"] for r in rows] != [r["response"] for r in other]
    assert set(a["domains"]) == {r.domain for r in records}
    assert {"mean_reward", "mean_accuracy", "pass@1", "pass@3", "constant_accuracy"} <= set(a["overall"])
    assert (tmp_path / "sampled_predictions.jsonl").read_text().count("\n") == 18
    with pytest.raises(ValueError, match="k="):
        evaluate_sampled(model, processor, records, k=0)
    with pytest.raises(ValueError, match="temperature"):
        evaluate_sampled(model, processor, records, k=2, temperature=0)


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
