"""Answer extraction and scoring of benchmark answers, pinned against hand-computed values."""

import pytest

from qoqmed.eval.benchmarks.protocol import (extract_answer, normalize, option_letter, recall, score_answer,
                                             summarize, yes_no)

OPTIONS = {"A": "Pneumonia", "B": "Pleural effusion", "C": "Normal", "D": "Pneumothorax"}


@pytest.mark.parametrize("response, expected", [
    ("<think>looks fluid</think>\n\\boxed{B}", "B"),
    ("\\boxed{A} then later \\boxed{\\text{C}}", "C"),        # the last box, \text unwrapped
    ("<think>hmm</think> The answer is D.", "D."),            # after </think>, after "answer is"
    ("Answer: yes", "yes"),
    ("no box here", "no box here"),
])
def test_extract_answer_qoqmed(response, expected):
    assert extract_answer(response) == expected


def test_extract_answer_medevalkit_reads_box_then_answer_tag_then_markers():
    assert extract_answer("\\boxed{B. Effusion}", "medevalkit") == "b. effusion"
    assert extract_answer("<answer>Yes</answer>", "medevalkit") == "yes"
    assert extract_answer("I think the final answer is C", "medevalkit") == "c"


def test_normalize():
    assert normalize("  The Left-Lung. ") == "left lung"
    assert normalize("\\text{An X-ray}") == "x ray"
    assert normalize("T2 MRI!") == "t2 mri"


@pytest.mark.parametrize("answer, expected", [
    ("Yes", "yes"), ("no.", "no"), ("Yes, there is no effusion", None), ("maybe", None), ("", None),
    ("normal", None),                     # qoqmed reads whole words: "normal" is not "no"
])
def test_yes_no_qoqmed(answer, expected):
    assert yes_no(answer) == expected


def test_yes_no_medevalkit_reads_substrings():
    assert yes_no("normal", "medevalkit") == "no"      # the substring "no" of "normal"
    assert yes_no("yes, no doubt", "medevalkit") is None
    assert yes_no("yes.", "medevalkit") == "yes"


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"), ("(c)", "C"), ("d.", "D"), ("B. Pleural effusion", "B"), ("(A) Pneumonia", "A"),
    ("The answer is D", "D"), ("answer: (b)", "B"), ("Option C", "C"),
    ("pleural effusion", "B"),            # the text of exactly one option
    ("A or B", None),                     # two letters: unparseable, never one of them
    ("E", None),                          # not an option of this question
    ("a mass in the lung", None),         # a lower-case article is not a letter
    ("", None), ("I cannot tell", None),
])
def test_option_letter_qoqmed(answer, expected):
    assert option_letter(answer, OPTIONS) == expected


def test_option_letter_medevalkit():
    assert option_letter("b. pleural effusion", OPTIONS, "medevalkit") == "B"
    assert option_letter("normal", OPTIONS, "medevalkit") == "C"
    assert option_letter("it is effusion", OPTIONS, "medevalkit") is None   # MedEvalKit would guess here


def test_recall_hand_computed():
    # reference tokens {right, lower, lobe}; prediction has right and lobe: 2/3
    assert recall("the right lobe", "right lower lobe") == pytest.approx(2 / 3)
    assert recall("Right lower lobe.", "right lower lobe") == 1.0
    assert recall("", "liver") == 0.0
    # medevalkit splits on whitespace only: "lobe." is not "lobe"
    assert recall("right lobe.", "right lower lobe", "medevalkit") == pytest.approx(1 / 3)


def test_score_answer_per_kind():
    s = score_answer("\\boxed{Yes}", "closed", "yes")
    assert (s.correct, s.parsed, s.unparseable) == (True, "yes", False)
    s = score_answer("yes and no", "closed", "no")
    assert (s.correct, s.unparseable) == (False, True)
    s = score_answer("\\boxed{the liver}", "closed", "Liver")      # closed, not yes/no: exact match
    assert s.correct and s.parsed == "liver"
    s = score_answer("\\boxed{Left lung}", "open", "Left Lung")
    assert s.correct and s.recall == 1.0
    s = score_answer("\\boxed{lung}", "open", "Left Lung")
    assert not s.correct and s.recall == 0.5
    s = score_answer("\\boxed{}", "choice", "B", OPTIONS)
    assert (s.correct, s.parsed, s.unparseable) == (False, None, True)
    with pytest.raises(ValueError, match="not one of the options"):
        score_answer("A", "choice", "F", OPTIONS)
    with pytest.raises(ValueError, match="protocol"):
        score_answer("A", "choice", "A", OPTIONS, protocol="lmms")


def test_summarize_hand_computed():
    rows = [
        {"kind": "closed", "correct": True, "unparseable": False, "recall": None},
        {"kind": "closed", "correct": False, "unparseable": True, "recall": None},
        {"kind": "closed", "correct": False, "unparseable": False, "recall": None},
        {"kind": "open", "correct": True, "unparseable": False, "recall": 1.0},
        {"kind": "open", "correct": False, "unparseable": False, "recall": 0.5},
    ]
    s = summarize(rows)
    assert s["n"] == 5
    assert s["closed"] == {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3), "unparseable": 1,
                           "unparseable_rate": pytest.approx(1 / 3)}
    assert s["open"]["exact_match"] == 0.5 and s["open"]["recall"] == 0.75
    assert s["accuracy"] == pytest.approx(2 / 5) and s["unparseable"] == 1 and s["unparseable_rate"] == 0.2
    assert "choice" not in s
