"""The reference preset's multi-box quirk, and answers written in the released layout."""

from __future__ import annotations

import numpy as np
import pytest

from qoqmed.rewards import parse_response, score
from qoqmed.rewards import reference as ref


def _answer(boxes: str) -> str:
    return f"```json\n{boxes}\n```\n<think>reasoning</think>\n\\boxed{{A}}"


def test_reference_box_iou_is_zero_with_two_or_more_predicted_boxes():
    gt = [0, 0, 2, 2]
    assert ref.iou([[0, 0, 2, 2]], None, gt) == pytest.approx(1.0)
    # the released scorer raises on its second box and scores 0, even when both boxes are perfect
    assert ref.iou([[0, 0, 2, 2], [0, 0, 2, 2]], None, gt) == 0.0
    assert ref.iou([[0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 1, 1]], None, gt) == 0.0
    # a short box never reaches the failing line: one scored box out of two counted
    assert ref.iou([[0, 0, 2, 2], [1, 2]], None, gt) == pytest.approx(0.5)
    assert ref.iou([[1, 2], [0, 0, 2, 2]], None, gt) == pytest.approx(0.5)
    # against a mask the quirk does not apply: the mean over boxes
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0:3, 0:3] = 1
    assert ref.iou([[0, 0, 2, 2], [0, 0, 2, 2]], mask) == pytest.approx(1.0)


def test_quirk_only_in_the_reference_preset():
    text = _answer('[{"bbox_2d": [0, 0, 20, 20], "label": "A"}, {"bbox_2d": [0, 0, 20, 20], "label": "A"}]')
    kwargs = dict(box=[0, 0, 20, 20], image_size=(40, 40))
    assert score(text, "A", preset="reference", **kwargs)["iou"] == 0.0
    assert score(text, "A", preset="paper", **kwargs)["iou"] == pytest.approx(1.0)
    one = _answer('[{"bbox_2d": [0, 0, 20, 20], "label": "A"}]')
    assert score(one, "A", preset="reference", **kwargs)["iou"] == pytest.approx(1.0)


def test_released_layout_answers_parse():
    # the released format: JSON boxes (labels optional) before <think>, the answer in \boxed{}
    text = '```json\n[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [5, 5, 9, 9], "label": "mass"}]\n```\n' \
           "<think>The mass is spiculated.</think>\n\\boxed{Malignant}"
    parsed = parse_response(text)
    assert parsed.labels == ["Malignant"] and parsed.think == "The mass is spiculated."
    assert [b.bbox for b in parsed.boxes] == [(1.0, 2.0, 30.0, 40.0), (5.0, 5.0, 9.0, 9.0)]
    assert [b.label for b in parsed.boxes] == ["", "mass"]
    assert parsed.json_found and parsed.json_valid
    # a box with a non-string label or bad coordinates still makes the list invalid
    assert not parse_response('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": 7}]\n```').json_valid
    assert not parse_response('```json\n[{"bbox_2d": [1, 2, 3]}]\n```').json_valid
