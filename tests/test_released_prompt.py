"""The released prompt style: the released weights' system prompt, format suffix, ECG placement and slice choice."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qoqmed.data import parse_record
from qoqmed.data.prompt_styles import (
    RELEASED_FORMAT_SUFFIX,
    SYSTEM_PROMPT,
    system_prompt,
    user_text,
)
from qoqmed.data.prompts import encode_batch, load_record, messages_for, target_text
from qoqmed.data.volumes import end_inclusive_indices, pick_indices, sample_indices
from qoqmed.rewards import parse_response

RELEASED_SUFFIX_TEXT = (
    " You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    "Before analyzing medical images, you must identify and outline all objects of interest that are relevant to "
    "diagnosis in json format, with list od bounding box in a key called \"bbox_2d\" with the format "
    "[x1, y1, x2, y2]. The json should be wrapped in ```json ... ``` tags. The reasoning process MUST BE enclosed "
    "within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def test_released_prompt_text_is_pinned():
    assert RELEASED_FORMAT_SUFFIX == RELEASED_SUFFIX_TEXT
    assert system_prompt("released") == "You are a helpful assistant."
    assert system_prompt("qoqmed") == SYSTEM_PROMPT
    problem = "  <image>\nWhat is the finding? Options: A, B.\n"
    assert user_text(problem, "released") == "<image>\nWhat is the finding? Options: A, B." + RELEASED_SUFFIX_TEXT
    assert user_text(problem, "qoqmed") == problem
    # the released code appends the time series after the text
    assert user_text("<ecg>\nRhythm?", "released") == "Rhythm?" + RELEASED_SUFFIX_TEXT + "<ecg>"
    with pytest.raises(ValueError, match="choose one of qoqmed, released"):
        user_text("q", "official")


@pytest.mark.parametrize("n, k, expected", [
    (10, 4, [0, 3, 6, 9]), (4, 4, [0, 1, 2, 3]), (100, 4, [0, 33, 66, 99]), (7, 3, [0, 3, 6]), (9, 1, [4]),
    (5, 2, [0, 4]),
])
def test_released_slice_indices(n, k, expected):
    assert end_inclusive_indices(n, k) == expected
    assert pick_indices(n, k, selection="ends") == expected
    assert pick_indices(n, k) == sample_indices(n, k)


def test_records_in_the_released_style(tmp_path):
    frames = [Image.fromarray(np.full((16, 16), 10 * i, np.uint8)) for i in range(10)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((20, 24, 3), 50, np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "e.npy", np.zeros((8, 2500), np.float32))
    row = {"id": "r", "domain": "ct", "dataset": "d", "problem": "<image>Compare <volume> with the ECG <ecg>.",
           "answer": "A", "images": ["a.png"], "volumes": ["clip.gif"], "ecg": ["e.npy"],
           "boxes": [{"bbox_2d": [1, 1, 5, 5], "label": "A"}]}
    rec = parse_record(row, tmp_path)
    ours, released = load_record(rec), load_record(rec, "released")
    # end-inclusive frames 0, 3, 6, 9 against bin centres 1, 3, 6, 8; the gray level of frame i is 10 i
    assert [np.asarray(f)[0, 0, 0] for f in released.images[1:]] == [0, 30, 60, 90]
    assert [np.asarray(f)[0, 0, 0] for f in ours.images[1:]] == [10, 30, 60, 80]
    assert released.problem == ("<image>Compare <image><image><image><image> with the ECG ."
                                + RELEASED_SUFFIX_TEXT + "<ecg>")
    msgs = messages_for(released)
    assert msgs[0]["content"][0]["text"] == "You are a helpful assistant."
    assert messages_for(ours)[0]["content"][0]["text"] == SYSTEM_PROMPT
    assert messages_for(released, None)[0]["role"] == "user"


def test_released_answer_layout_trains_and_parses(tiny_pair, tmp_path):
    processor, _ = tiny_pair
    Image.fromarray(np.full((56, 56, 3), 50, np.uint8)).save(tmp_path / "a.png")
    row = {"id": "r", "domain": "dermoscopy", "dataset": "d", "problem": "<image>Which?", "answer": "nevus",
           "images": ["a.png"], "boxes": [{"bbox_2d": [0, 0, 28, 28], "label": "nevus"}]}
    loaded = load_record(parse_record(row, tmp_path), "released")
    target = target_text(loaded, processor)
    assert target.startswith("```json\n[") and "```\n<think>" in target and target.endswith("\\boxed{nevus}")
    parsed = parse_response(target)
    assert parsed.labels == ["nevus"] and len(parsed.boxes) == 1 and parsed.json_valid and parsed.think
    enc = encode_batch(processor, [loaded], with_targets=True)
    text = processor.tokenizer.decode(enc["input_ids"][0])
    assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in text
    assert "MUST BE put in \\boxed{}." in text


@pytest.fixture(scope="module")
def tiny_pair():
    from qoqmed.modeling.tiny import build_tiny

    return build_tiny(["Which? nevus think boxed json"])
