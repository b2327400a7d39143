"""Rules that training data and model answers (or training rows and inference prompts) must apply identically."""

from __future__ import annotations

import numpy as np
import pytest

from qoqmed.data import parse_record
from qoqmed.data.schema import place_inputs
from qoqmed.rewards import parse_response

TRICKY_ANSWERS = [
    "A AND B", "A and B", "A And  B", "A\tand\nB", "A&B", "A & B & A", "A, B,", " , A ,, ", "Sandy and Andy",
    "Brand, Anderson", "A. Fib/Aflutter, ST/T change", "A andB", "Hypertrophy AND Normal and normal",
]


@pytest.mark.parametrize("answer", TRICKY_ANSWERS)
def test_ground_truth_and_prediction_split_labels_alike(tmp_path, answer):
    row = {"id": "r", "domain": "chest_xray", "dataset": "d", "problem": "Which?", "answer": answer}
    truth = parse_record(row, tmp_path).labels
    predicted = parse_response(f"<think>x</think>\n\\boxed{{{answer}}}").labels
    assert truth == predicted and truth


def test_label_splitting_rule():
    assert parse_response("\\boxed{A AND B}").labels == ["A", "B"]
    assert parse_response("\\boxed{Sandy and Andy & Brand}").labels == ["Sandy", "Andy", "Brand"]
    assert parse_response("\\boxed{A andB}").labels == ["A andB"]


@pytest.mark.parametrize("question, images, ecgs", [
    ("What is the rhythm?", 0, 1),
    ("Which findings?", 2, 0),
    ("Compare.", 1, 2),
    ("Is <image> normal?", 1, 1),
])
def test_training_rows_and_inference_prompts_place_inputs_alike(tmp_path, question, images, ecgs):
    from qoqmed.infer.pipeline import QoQMedPipeline

    row = {"id": "r", "domain": "ecg" if ecgs else "chest_xray", "dataset": "d", "problem": question, "answer": "A",
           "images": [f"i{k}.png" for k in range(images)], "ecg": [f"e{k}.npy" for k in range(ecgs)]}
    training = parse_record(row, tmp_path).problem
    inference = QoQMedPipeline._problem(question, images, 0, ecgs, None)
    assert training == inference
    assert training.count("<ecg>") == ecgs and training.count("<image>") == images


def test_place_inputs_reports_miscounted_placeholders():
    text, wrong = place_inputs("<image> and <image>", {"<image>": 1, "<ecg>": 1})
    assert text == "<ecg>\n<image> and <image>" and wrong == [("<image>", 2, 1)]
    assert place_inputs("q", {"<image>": 1, "<volume>": 1, "<ecg>": 2}) == ("<image><volume><ecg><ecg>\nq", [])


def test_ecg_layout_has_one_definition():
    from qoqmed.data.ecg import ECG_SAMPLES, ECG_SAMPLING_RATE, ENCODER_LEADS, ECGSpec
    from qoqmed.data.climb_mini import simulate_ecg

    spec = ECGSpec()
    assert (spec.sampling_rate, spec.samples, spec.leads) == (ECG_SAMPLING_RATE, ECG_SAMPLES, ENCODER_LEADS)
    assert simulate_ecg(np.random.default_rng(0), "Normal").shape == (len(ENCODER_LEADS), ECG_SAMPLES)
