import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoqmed.rewards import (
    WEIGHTS,
    Box,
    accuracy_reward,
    boxes_to_mask,
    format_reward,
    iou_reward,
    length_reward,
    parse_response,
    rescale_box,
    rescale_boxes,
    score,
    split_labels,
)

GOOD = """<think>The left lower lobe is dense.
```json
[{"bbox_2d": [10, 20, 30, 40], "label": "consolidation"},
 {"bbox_2d": [50.5, 60, 70, 80], "label": "effusion"}]
```
Both findings support the answer.</think>
\\boxed{Pneumonia, Pleural Effusion}"""


# ---------------------------------------------------------------- parsing


def test_parse_well_formed():
    p = parse_response(GOOD)
    assert p.think.startswith("The left lower lobe")
    assert p.boxes == [
        Box((10.0, 20.0, 30.0, 40.0), "consolidation"),
        Box((50.5, 60.0, 70.0, 80.0), "effusion"),
    ]
    assert p.boxed == "Pneumonia, Pleural Effusion"
    assert p.labels == ["Pneumonia", "Pleural Effusion"]
    assert p.json_found and p.json_valid


def test_parse_single_dict_and_objects_of_interest():
    single = parse_response('```json\n{"bbox_2d": [1, 2, 3, 4], "label": "mass"}\n```')
    assert single.boxes == [Box((1.0, 2.0, 3.0, 4.0), "mass")]
    ooi = parse_response('```JSON\n{"objects_of_interest": [{"bbox_2d": [1, 2, 3, 4], "label": "a"},'
                         ' {"bbox_2d": [5, 6, 7, 8], "label": "b"}]}\n```')
    assert [b.label for b in ooi.boxes] == ["a", "b"] and ooi.json_valid


def test_parse_bare_list_and_trailing_comma():
    bare = parse_response('Objects: [{"bbox_2d": [0, 0, 5, 5], "label": "nodule"}] then \\boxed{Nodule}')
    assert bare.boxes == [Box((0.0, 0.0, 5.0, 5.0), "nodule")] and bare.json_found
    trailing = parse_response('```json\n[{"bbox_2d": [0, 0, 5, 5], "label": "x"},]\n```')
    assert trailing.json_valid


def test_parse_boxed_nested_and_last():
    p = parse_response("first \\boxed{A} then \\boxed{\\text{Atrial {fib}}, B} and \\boxed{unterminated")
    assert p.boxed == "\\text{Atrial {fib}}, B"
    p = parse_response("\\boxed{x} \\boxed{\\text{Normal}, \\text{Mass}}")
    assert p.labels == ["Normal", "Mass"]


def test_parse_think_only_closing_tag():
    assert parse_response("reasoning here</think>\\boxed{A}").think == "reasoning here"
    assert parse_response("<think>never closed \\boxed{A}").think is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no structure at all",
        "```json\n[{\"bbox_2d\": [1, 2, 3], \"label\": \"short\"}]\n```",
        "```json\n[{\"bbox_2d\": [1, 2, 3, NaN], \"label\": \"nan\"}]\n```",
        "```json\n[{\"bbox_2d\": [1, 2, 3, 4], \"label\": 5}]\n```",
        "```json\n[{\"bbox_2d\": [true, 2, 3, 4], \"label\": \"bool\"}]\n```",
        "```json\n[{\"bbox_2d\": [1e999, 2, 3, 4], \"label\": \"inf\"}]\n```",
        "```json\n[{\"bbox_2d\": [" + "9" * 400 + ", 2, 3, 4], \"label\": \"huge\"}]\n```",
        "```json\n[{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"x\"",  # truncated generation
        "```json\n" + "[" * 100000 + "\n```",  # deep nesting
        "\\boxed{" * 1000,
        "<think>" * 1000,
    ],
)
def test_parse_malformed(text):
    p = parse_response(text)
    assert p.boxes == [] and not p.json_valid


def test_parse_malformed_flags():
    p = parse_response("```json\nnot json\n```")
    assert p.json_found and not p.json_valid
    assert parse_response(None).boxes == []  # type: ignore[arg-type]


def test_split_labels():
    assert split_labels("A, B and C & D,E") == ["A", "B", "C", "D", "E"]
    assert split_labels(" A ,, A , b ") == ["A", "b"]
    assert split_labels("") == []
    assert split_labels("Sand") == ["Sand"]


def test_rescale_round_trip():
    b = (10.0, 20.0, 300.0, 400.0)
    model, orig = (448, 336), (1024, 768)
    there = rescale_box(b, model, orig)
    assert there == pytest.approx((10 * 1024 / 448, 20 * 768 / 336, 300 * 1024 / 448, 400 * 768 / 336))
    assert rescale_box(there, orig, model) == pytest.approx(b)
    boxes = rescale_boxes([Box(b, "x")], model, orig)
    assert boxes[0].label == "x" and boxes[0].bbox == pytest.approx(there)
    with pytest.raises(ValueError):
        rescale_box(b, (0, 10), orig)


# ---------------------------------------------------------------- scores


def test_accuracy_set_f1():
    assert accuracy_reward(["a", "b"], ["b", "c"]) == pytest.approx(0.5)  # 2*1/(2+2)
    assert accuracy_reward(["a"], ["a", "b", "c"]) == pytest.approx(0.5)  # 2*1/(1+3)
    assert accuracy_reward(["A ", "b"], ["a", "B"]) == 1.0
    assert accuracy_reward(["Atrial  Fib"], ["atrial fib"]) == 1.0
    assert accuracy_reward(["A"], ["a"], normalize=False) == 0.0
    assert accuracy_reward("a, b and c", ["c", "b", "a"]) == 1.0
    assert accuracy_reward([], ["a"]) == 0.0
    assert accuracy_reward(["a"], []) == 0.0
    assert accuracy_reward([], []) == 1.0


def test_boxes_to_mask_convention_and_clip():
    m = boxes_to_mask([[1, 2, 4, 3]], (6, 5))
    assert m.shape == (5, 6) and m.sum() == 3 and m[2, 1:4].all()
    assert boxes_to_mask([[0.5, 0.5, 1.2, 1.2]], (4, 4)).sum() == 4  # touches pixels 0..1 in x and y
    assert boxes_to_mask([[-5, -5, 100, 2]], (4, 4)).sum() == 8
    assert boxes_to_mask([[3, 3, 3, 4], [3, 3, 2, 4]], (4, 4)).sum() == 0
    assert boxes_to_mask([Box((0, 0, math.inf, 1), "x")], (4, 4)).sum() == 4


def test_boxes_to_mask_matches_naive():
    rng = np.random.default_rng(0)
    w, h = 17, 11
    boxes = rng.uniform(-3, 20, size=(6, 4))
    fast = boxes_to_mask(boxes.tolist(), (w, h))
    slow = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        if x2 <= x1 or y2 <= y1:
            continue
        for y in range(h):
            for x in range(w):
                if math.floor(x1) <= x < math.ceil(x2) and math.floor(y1) <= y < math.ceil(y2):
                    slow[y, x] = True
    assert (fast == slow).all()


def test_iou_hand_computed():
    size = (20, 20)
    gt = [[5, 0, 15, 10]]
    assert iou_reward([[0, 0, 10, 10]], gt_boxes=gt, image_size=size) == pytest.approx(1 / 3)
    preds = [[0, 0, 10, 10], [5, 0, 15, 10]]
    assert iou_reward(preds, gt_boxes=gt, image_size=size, reduce="mean") == pytest.approx((1 / 3 + 1) / 2)
    assert iou_reward(preds, gt_boxes=gt, image_size=size, reduce="max") == pytest.approx(1.0)
    mask = boxes_to_mask(gt, size).astype(np.uint8) * 255
    assert iou_reward(preds, gt_mask=mask, reduce="mean") == pytest.approx((1 / 3 + 1) / 2)
    # two gt boxes form one union region: [0,0,10,10] covers 100 of the 150-pixel union
    two = [[0, 0, 10, 10], [5, 0, 15, 10]]
    assert iou_reward([[0, 0, 10, 10]], gt_boxes=two, image_size=size) == pytest.approx(100 / 150)


def test_iou_none_and_zero():
    assert iou_reward([[0, 0, 1, 1]], image_size=(4, 4)) is None
    assert iou_reward([[0, 0, 1, 1]], gt_boxes=[], image_size=(4, 4)) is None
    assert iou_reward([[0, 0, 1, 1]], gt_mask=np.zeros((4, 4))) is None
    assert iou_reward([], gt_boxes=[[0, 0, 2, 2]], image_size=(4, 4)) == 0.0
    assert iou_reward([[10, 10, 20, 20]], gt_boxes=[[0, 0, 2, 2]], image_size=(4, 4)) == 0.0
    with pytest.raises(ValueError):
        iou_reward([[0, 0, 1, 1]], gt_mask=np.ones((4, 5)), image_size=(4, 4))
    with pytest.raises(ValueError):
        iou_reward([[0, 0, 1, 1]], gt_boxes=[[0, 0, 1, 1]], image_size=(4, 4), reduce="sum")


def test_format_and_length():
    assert format_reward(parse_response(GOOD)) == pytest.approx(1.0)
    assert format_reward(parse_response("<think>x</think> \\boxed{A}")) == pytest.approx(2 / 3)
    assert format_reward(parse_response("\\boxed{A}")) == pytest.approx(1 / 3)
    assert format_reward(parse_response("nothing")) == 0.0
    assert length_reward("x" * 600) == pytest.approx(0.6)
    assert length_reward("x" * 601) == 1.0
    assert length_reward("") == 0.0


def test_score_paper_weights_with_iou():
    out = score(GOOD, "pneumonia, pleural effusion", gt_boxes=[[10, 20, 30, 40]], image_size=(100, 100))
    assert out["accuracy"] == 1.0 and out["format"] == pytest.approx(1.0)
    assert out["iou"] == pytest.approx(1.0)  # max over boxes
    assert out["overall"] == pytest.approx(1.0)
    mean = score(GOOD, "pneumonia", gt_boxes=[[10, 20, 30, 40]], image_size=(100, 100), iou_reduce="mean")
    assert mean["iou"] == pytest.approx(0.5)
    assert mean["overall"] == pytest.approx(0.6 * (2 / 3) + 0.2 * 0.5 + 0.2 * 1.0)


def test_score_redistributes_iou_weight():
    out = score("<think>x</think> \\boxed{A, B}", ["a", "c"])
    assert out["iou"] is None
    assert out["overall"] == pytest.approx((0.6 * 0.5 + 0.2 * (2 / 3)) / 0.8)
    ref = score("<think>x</think> \\boxed{A, B}", ["a", "c"], weights="reference")
    expected = (0.5 * 0.5 + 0.1 * (2 / 3) + 0.1 * ref["length"]) / 0.7
    assert ref["overall"] == pytest.approx(expected)
    assert set(WEIGHTS) == {"paper", "reference"}


def test_score_rescales_model_boxes():
    text = '```json\n[{"bbox_2d": [0, 0, 5, 5], "label": "x"}]\n```\\boxed{x}'
    out = score(text, "x", gt_boxes=[[0, 0, 10, 10]], image_size=(100, 100), model_size=(50, 50))
    assert out["pred_boxes"][0].bbox == pytest.approx((0, 0, 10, 10))
    assert out["iou"] == pytest.approx(1.0)
    mask = np.zeros((100, 100), dtype=bool)
    mask[:10, :10] = True
    assert score(text, "x", gt_mask=mask, model_size=(50, 50))["iou"] == pytest.approx(1.0)


def test_score_rejects_bad_weights():
    with pytest.raises(ValueError):
        score("x", "a", weights="nope")
    with pytest.raises(ValueError):
        score("x", "a", weights={"accuracy": -1.0})
    with pytest.raises(ValueError):
        score("x", "a", weights={"bogus": 1.0})


# ---------------------------------------------------------------- properties

FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "```json\n", "```", "\\boxed{", "{", "}", "[", "]", ",", '"bbox_2d"', '"label"', ":",
     '"x"', "1", "-3.5", "1e309", "NaN", "objects_of_interest", " and ", "&", "\n", "\\text{"]
)
TEXTS = st.one_of(st.text(max_size=400), st.lists(FRAGMENTS, max_size=60).map("".join))


def _in_unit(x):
    return x is None or (0.0 <= x <= 1.0)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_parse_never_raises(text):
    p = parse_response(text)
    assert p.json_valid == bool(p.boxes)
    assert all(len(b.bbox) == 4 and all(math.isfinite(v) for v in b.bbox) for b in p.boxes)
    assert 0.0 <= format_reward(p) <= 1.0


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.sampled_from(["paper", "reference"]), st.booleans())
def test_score_never_raises_and_in_unit_interval(text, weights, with_gt):
    kw = dict(gt_boxes=[[2, 2, 30, 30]], image_size=(64, 48), model_size=(32, 32)) if with_gt else {}
    out = score(text, "a, b", weights=weights, **kw)
    for key in ("overall", "accuracy", "iou", "format", "length"):
        assert _in_unit(out[key]), (key, out[key])
    assert (out["iou"] is None) != with_gt


def test_empty_box_list_is_valid_format_and_malformed_entries_are_not():
    empty = parse_response("<think>```json\n[]\n```\nsinus rhythm</think>\\boxed{Normal}")
    assert empty.json_found and empty.json_valid and empty.boxes == []
    assert format_reward(empty) == 1.0
    partial = parse_response('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2]}]\n```')
    assert partial.json_found and not partial.json_valid and len(partial.boxes) == 1
