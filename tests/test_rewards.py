import math
import time

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
from qoqmed.rewards import reference as ref
from qoqmed.rewards.scores import score_batch

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


ADVERSARIAL_100KB = [
    "```json\n" + "[" * 100_000 + "\n```",
    "```\n" + "(" * 100_000 + "\n```",
    "[{" * 50_000,
    "\\boxed{" * 14_000,
    "```json\n[" + '{"bbox_2d": [1, 2, 300, 400], "label": "x"},' * 2_300 + "]\n```",
    "'" * 100_000,
    "```" * 33_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL_100KB, ids=range(len(ADVERSARIAL_100KB)))
@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_score_100kb_inputs_in_bounded_time(text, preset):
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:200, 100:300] = True
    t0 = time.perf_counter()
    out = score(text, "x", mask, preset=preset, model_size=(256, 256))
    elapsed = time.perf_counter() - t0
    assert all(0.0 <= out[k] <= 1.0 for k in ("overall", "accuracy", "format", "length"))
    assert out["iou"] is not None and 0.0 <= out["iou"] <= 1.0
    assert elapsed < 5.0, f"{elapsed:.2f} s on a {len(text)}-character input"


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
    out = score(GOOD, "pneumonia, pleural effusion", box=[10, 20, 30, 40], image_size=(100, 100))
    assert out["accuracy"] == 1.0 and out["format"] == pytest.approx(1.0)
    assert out["iou"] == pytest.approx(1.0)  # max over boxes
    assert out["overall"] == pytest.approx(1.0)
    mean = score(GOOD, "pneumonia", box=[[10, 20, 30, 40]], image_size=(100, 100), iou_reduce="mean")
    assert mean["iou"] == pytest.approx(0.5)
    assert mean["overall"] == pytest.approx(0.6 * (2 / 3) + 0.2 * 0.5 + 0.2 * 1.0)


def test_score_redistributes_iou_weight_and_custom_weights():
    out = score("<think>x</think> \\boxed{A, B}", ["a", "c"])
    assert out["iou"] is None
    assert out["overall"] == pytest.approx((0.6 * 0.5 + 0.2 * (2 / 3)) / 0.8)
    custom = score("<think>x</think> \\boxed{A, B}", ["a", "c"], weights={"accuracy": 1.0, "length": 1.0})
    assert custom["overall"] == pytest.approx((0.5 + custom["length"]) / 2)
    assert set(WEIGHTS) == {"paper", "reference"}


def test_score_rescales_model_boxes():
    text = '```json\n[{"bbox_2d": [0, 0, 5, 5], "label": "x"}]\n```\\boxed{x}'
    out = score(text, "x", box=[0, 0, 10, 10], image_size=(100, 100), model_size=(50, 50))
    assert out["pred_boxes"][0].bbox == pytest.approx((0, 0, 10, 10))
    assert out["iou"] == pytest.approx(1.0)
    mask = np.zeros((100, 100), dtype=bool)
    mask[:10, :10] = True
    assert score(text, "x", mask, model_size=(50, 50))["iou"] == pytest.approx(1.0)


def test_score_rejects_bad_options():
    with pytest.raises(ValueError, match="preset"):
        score("x", "a", preset="nope")
    with pytest.raises(ValueError):
        score("x", "a", weights={"accuracy": -1.0})
    with pytest.raises(ValueError, match="bogus"):
        score("x", "a", weights={"bogus": 1.0})
    with pytest.raises(ValueError, match="iou_reduce"):
        score("x", "a", iou_reduce="sum")
    with pytest.raises(ValueError, match="takes no options"):
        score("x", "a", preset="reference", weights={"accuracy": 1.0})
    with pytest.raises(ValueError, match="image_size"):
        score("x", "a", box=[0, 0, 1, 1])


def test_synonyms_and_normalisation():
    text = "<think>x</think>\\boxed{AF, normal}"
    assert score(text, "A. Fib/Aflutter, Normal")["accuracy"] == pytest.approx(0.5)
    syn = {"af": "A. Fib/Aflutter"}
    assert score(text, "A. Fib/Aflutter, Normal", synonyms=syn)["accuracy"] == 1.0
    assert score(text, "A. Fib/Aflutter, Normal", synonyms=syn, normalize=False)["accuracy"] == 0.0
    assert accuracy_reward(["Af "], ["a. fib/aflutter"], synonyms={"AF": "A. Fib/Aflutter"}) == 1.0


def test_score_batch_matches_score_and_checks_lengths():
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:20, 10:30] = 3
    texts = [GOOD, "<think>a</think>```json\n[]\n```\\boxed{Pneumonia}", "junk", GOOD.replace("10, 20", "0, 0")]
    answers = ["Pneumonia", "pneumonia", "x", "Pleural effusion"]
    masks = [mask, mask, None, mask]
    boxes = [None, None, [1, 1, 5, 5], None]
    sizes = [(60, 40), (60, 40), (8, 8), (60, 40)]
    model = [(120, 80), (120, 80), (8, 8), (30, 20)]
    for preset in ("paper", "reference"):
        batch = score_batch(texts, answers, masks, boxes, preset, image_sizes=sizes, model_sizes=model)
        for i, b in enumerate(batch):
            one = score(texts[i], answers[i], masks[i], boxes[i], preset, image_size=sizes[i], model_size=model[i])
            assert {k: b[k] for k in ("overall", "accuracy", "iou", "format", "length")} == \
                {k: one[k] for k in ("overall", "accuracy", "iou", "format", "length")}
    with pytest.raises(ValueError, match="masks has 1 entries for 4"):
        score_batch(texts, answers, [mask])


# ---------------------------------------------------------------- the released scorer, rule by rule

def test_reference_accuracy_quirks():
    # the last \boxed counts; labels split on the first separator present only; exact, case-sensitive match
    assert ref.accuracy("\\boxed{A} then \\boxed{B, C}", "B, C") == 1.0
    assert ref.accuracy("\\boxed{A, B and C}", "A, B and C") == 1.0  # "B and C" stays one label
    assert ref.accuracy("\\boxed{a}", "A") == 0.0
    assert ref.accuracy("\\boxed{None}", "None") == 0.0  # the word None means "no answer"
    assert ref.accuracy("\\boxed{A, B}", "A") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert ref.accuracy("\\boxed{A", "A") == 0.0
    assert ref.accuracy("\\boxed{\\text{A}}", "\\text{A") == 1.0  # every "}" is deleted before matching


def test_reference_format_quirks():
    good = 'x\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```'
    assert ref.format_score(good) == pytest.approx(0.2 + 0.1 + 0.2 + 0.1 + 0.4)
    half = 'x\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2]}]\n```'
    assert ref.format_score(half) == pytest.approx(0.6 + 0.2)
    single_quotes = "```\n[{'bbox_2d': [1, 2, 3, true], 'label': 'a'}]\n```"  # a literal; true is a number
    assert ref.format_score(single_quotes.replace("true", "4")) == pytest.approx(0.2 + 0.1 + 0.1 + 0.4)
    assert ref.format_score('[{"bbox_2d": [1, 2, 3, true], "label": 0}]') == pytest.approx(0.2 + 0.1 + 0.4)
    assert ref.format_score("plain words") == 0.0
    assert ref.format_score('```json {"a": 1}```') == pytest.approx(0.3)  # fence not on its own line: whole text


def test_reference_iou_quirks():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:5, 2:5] = 1  # 9 pixels
    # inclusive corners: [2, 2, 4, 4] covers exactly the 3x3 lesion
    assert ref.iou([[2, 2, 4, 4]], mask) == pytest.approx(1.0)
    assert ref.iou([[2.9, 2.9, 4.9, 4.9]], mask) == pytest.approx(1.0)  # truncation, not rounding
    assert ref.iou([[4, 4, 2, 2]], mask) == pytest.approx(1.0)  # inverted corners are swapped
    assert ref.iou([[2, 2, 2, 4]], mask) == 0.0  # zero width covers nothing
    # malformed boxes add 0 but count in the mean
    assert ref.iou([[2, 2, 4, 4], [1, 2], ["a", 0, 1, 1]], mask) == pytest.approx(1 / 3)
    assert ref.iou([[0, 0, 1, 1]], None, None) == 0.0
    # against a box: continuous coordinates
    assert ref.iou([[0, 0, 2, 2]], None, [1, 1, 3, 3]) == pytest.approx(1 / 7)
    # an all-zero mask falls through to the box
    assert ref.iou([[0, 0, 2, 2]], np.zeros((4, 4)), [0, 0, 2, 2]) == pytest.approx(1.0)
    # boxes need no label, and come from a fence with no language tag
    assert ref.predicted_boxes('```\n{"objects_of_interest": [{"bbox_2d": [2, 2, 4, 4]}]}\n```') == [[2, 2, 4, 4]]


def test_reference_overall_has_no_renormalisation():
    text = "<think>x</think>\n\\boxed{A}"
    out = score(text, "A", preset="reference")
    assert out["iou"] == 0.0  # no ground truth is IoU 0, still weighted
    assert out["overall"] == pytest.approx(0.5 * 1.0 + 0.3 * 0.0 + 0.1 * 0.0 + 0.1 * 0.001 * len(text))


def test_reference_preset_moves_ground_truth_into_the_model_frame():
    mask = np.zeros((100, 100), dtype=bool)
    mask[:10, :10] = True
    text = '```json\n[{"bbox_2d": [0, 0, 4, 4], "label": "x"}]\n```\\boxed{x}'
    # the 10x10 lesion is 5x5 in a 50x50 model frame; the inclusive box 0..4 covers it exactly
    assert score(text, "x", mask, preset="reference", model_size=(50, 50))["iou"] == pytest.approx(1.0)


def test_reference_eval_label_reading():
    assert ref.eval_labels("\\boxed{A, B} and \\boxed{C}") == {"A", "B"}  # the first box, not the last
    assert ref.eval_labels("answer: [Normal]") == {"Normal"}
    assert ref.eval_labels("Normal") == {"Normal"}
    assert ref.eval_labels("\\boxed{None}") == set()


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
    # boxes come only from a valid block; a valid block may be an empty list (no boxes), and valid implies found
    assert not p.boxes or p.json_valid
    assert not p.json_valid or p.json_found
    assert all(len(b.bbox) == 4 and all(math.isfinite(v) for v in b.bbox) for b in p.boxes)
    assert 0.0 <= format_reward(p) <= 1.0


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.sampled_from(["paper", "reference"]), st.booleans())
def test_score_never_raises_and_in_unit_interval(text, weights, with_gt):
    kw = dict(box=[2, 2, 30, 30], image_size=(64, 48), model_size=(32, 32)) if with_gt else {}
    out = score(text, "a, b", preset=weights, **kw)
    for key in ("overall", "accuracy", "iou", "format", "length"):
        assert _in_unit(out[key]), (key, out[key])
    assert (out["iou"] is None) != (with_gt or weights == "reference")


def test_empty_box_list_is_valid_format_and_malformed_entries_are_not():
    empty = parse_response("<think>```json\n[]\n```\nsinus rhythm</think>\\boxed{Normal}")
    assert empty.json_found and empty.json_valid and empty.boxes == []
    assert format_reward(empty) == 1.0
    partial = parse_response('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2]}]\n```')
    assert partial.json_found and not partial.json_valid and len(partial.boxes) == 1


def test_boxes_required_makes_an_empty_list_lose_format_only_where_there_is_something_to_localise():
    from qoqmed.rewards import score

    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    empty = "<think>```json\n[]\n```\nfindings</think>\\boxed{Pneumonia}"
    missed = '<think>```json\n[{"bbox_2d": [0, 0, 1, 1], "label": "x"}]\n```\nfindings</think>\\boxed{Pneumonia}'
    plain = score(empty, "Pneumonia", mask)
    assert plain["format"] == pytest.approx(1.0) and plain["iou"] == 0.0  # the paper's wording: [] is valid
    req = score(empty, "Pneumonia", mask, boxes_required=True)
    assert req["format"] == pytest.approx(2 / 3) and req["overall"] < plain["overall"]
    # a box that misses keeps full format: only the empty list is penalised, IoU still scores the miss
    miss = score(missed, "Pneumonia", mask, boxes_required=True)
    assert miss["format"] == pytest.approx(1.0) and miss["iou"] == 0.0 and miss["overall"] > req["overall"]
    # nothing to localise (no mask, or an empty one): [] keeps full format
    assert score(empty, "Pneumonia", None, boxes_required=True)["format"] == pytest.approx(1.0)
    assert score(empty, "Pneumonia", np.zeros((8, 8)), boxes_required=True)["format"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="boxes_required"):
        score(empty, "Pneumonia", mask, preset="reference", boxes_required=True)
