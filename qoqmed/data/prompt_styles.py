"""Prompt styles: how a record becomes a chat prompt, and the answer layout the model is taught.

``qoqmed`` (the default) uses qoqmed's system prompt, asks for the JSON boxes inside ``<think>``, shows a volume as
the centres of equal bins of its slices and labels each frame at inference ("Slice 2/4: ").

``released`` reproduces the prompts the released QoQ-Med-VL weights were trained with, so those weights answer in
their own format: Qwen2.5-VL's default system prompt, the user text trimmed and followed by the released
``medical_format.jinja`` suffix (JSON list of boxes *before* ``<think>``, reasoning in ``<think>``, answer in
``\\boxed{}``), every ECG placeholder after the text (the released code appends the time series last), and volume
frames taken end-inclusive (first to last slice, evenly spaced) without labels. Answers are parsed the same way in
both styles (``qoqmed.rewards.parse_response``).
"""

from __future__ import annotations

from .schema import ECG_TOKEN

__all__ = ["PROMPT_STYLES", "SYSTEM_PROMPT", "RELEASED_SYSTEM_PROMPT", "RELEASED_FORMAT_SUFFIX", "check_style",
           "system_prompt", "user_text", "slice_selection", "frame_labels", "answer_layout"]

PROMPT_STYLES = ("qoqmed", "released")

# qoqmed's own: the boxes inside <think>, so the evidence is part of the reasoning it grounds.
SYSTEM_PROMPT = (
    "You are a clinical reasoning assistant. Inside <think> </think>, first list the regions of interest as JSON "
    "boxes [{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"...\"}] in pixels of the image as you see it, then reason. "
    "Give the final diagnosis inside \\boxed{}; join several labels with \", \"."
)

# Qwen2.5-VL-Instruct's chat template opens a conversation without a system turn with this; the released training
# code sent none, so this is the system prompt the released weights saw.
RELEASED_SYSTEM_PROMPT = "You are a helpful assistant."
# The released medical_format.jinja, after the user text (which it trims); its wording, typo included, is what the
# weights were trained on.
RELEASED_FORMAT_SUFFIX = (
    " You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    "Before analyzing medical images, you must identify and outline all objects of interest that are relevant to "
    "diagnosis in json format, with list od bounding box in a key called \"bbox_2d\" with the format "
    "[x1, y1, x2, y2]. The json should be wrapped in ```json ... ``` tags. The reasoning process MUST BE enclosed "
    "within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def check_style(style: str) -> str:
    """``style`` when it is one of :data:`PROMPT_STYLES`, else a ValueError listing them."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style={style!r}: choose one of {', '.join(PROMPT_STYLES)}")
    return style


def system_prompt(style: str) -> str:
    """The system prompt of a style."""
    return RELEASED_SYSTEM_PROMPT if check_style(style) == "released" else SYSTEM_PROMPT


def user_text(problem: str, style: str) -> str:
    """The user turn's text for a problem (placeholders included) in a style."""
    if check_style(style) == "qoqmed":
        return problem
    n_ecg = problem.count(ECG_TOKEN)
    return problem.replace(ECG_TOKEN, "").strip() + RELEASED_FORMAT_SUFFIX + ECG_TOKEN * n_ecg


def slice_selection(style: str) -> str:
    """How volume slices are picked (``qoqmed.data.volumes.pick_indices``): ``centres`` or ``ends``."""
    return "ends" if check_style(style) == "released" else "centres"


def frame_labels(style: str) -> bool:
    """Whether each frame of a volume gets a "Slice k/N: " label at inference."""
    return check_style(style) == "qoqmed"


def answer_layout(boxes_json: str, rationale: str, answer: str, style: str) -> str:
    """The answer a well-behaved model writes in a style: boxes, reasoning and the diagnosis."""
    if check_style(style) == "released":
        return f"```json\n{boxes_json}\n```\n<think>{rationale}</think>\n\\boxed{{{answer}}}"
    return f"<think>```json\n{boxes_json}\n```\n{rationale}</think>\n\\boxed{{{answer}}}"
