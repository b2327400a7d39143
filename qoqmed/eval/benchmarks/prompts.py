"""Prompt templates of benchmark questions, per question kind and prompt style.

Every prompt is the question's images (one ``<image>`` each, in order), the question, the options as
"A. text" lines (multiple choice), and one instruction line that depends on the kind and the style:

========  ===============================================  =================================================
style     system turn                                      instruction (yes/no · short answer · choice)
========  ===============================================  =================================================
plain     none (the chat template's default)               "Answer yes or no." · "Answer the question using a
                                                           single word or phrase." · "Answer with the
                                                           option's letter from the given choices directly."
qoqmed    qoqmed's system prompt (boxes in ``<think>``,    the same, each asking for the answer inside
          answer in ``\\boxed{}``)                          ``\\boxed{}``
released  the released weights' (``prompt_styles``)       the plain instruction, followed by the released
                                                           format suffix (``prompt_styles.user_text``)
========  ===============================================  =================================================

``plain`` is the prompt general harnesses send (LLaVA-Med, MedEvalKit without reasoning, lmms-eval).
"""

from __future__ import annotations

from ...data.errors import DataError
from ...data.prompt_styles import system_prompt
from ...data.schema import ECG_TOKEN, IMAGE_TOKEN, VOLUME_TOKEN
from .common import BenchItem
from .protocol import YES_NO

__all__ = ["STYLES", "build_problem", "check_style", "instruction", "record_style", "system_turn"]

STYLES = ("qoqmed", "released", "plain")

_PLAIN = {
    "yes/no": "Answer yes or no.",
    "short": "Answer the question using a single word or phrase.",
    "choice": "Answer with the option's letter from the given choices directly.",
}
_QOQMED = {
    "yes/no": "Answer yes or no, inside \\boxed{}.",
    "short": "Give the answer as a single word or phrase inside \\boxed{}.",
    "choice": "Give the letter of the right option inside \\boxed{}.",
}


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"prompt style {style!r}: choose one of {', '.join(STYLES)}")
    return style


def _form(item: BenchItem) -> str:
    if item.kind == "choice":
        return "choice"
    return "yes/no" if item.kind == "closed" and item.answer.strip().lower() in YES_NO else "short"


def instruction(item: BenchItem, style: str) -> str:
    """The instruction line of a question in a style (the released suffix is added later, by ``user_text``)."""
    return (_QOQMED if check_style(style) == "qoqmed" else _PLAIN)[_form(item)]


def build_problem(item: BenchItem, n_images: int, style: str) -> str:
    """The user turn of a question with ``n_images`` ``<image>`` placeholders in front."""
    for token in (IMAGE_TOKEN, ECG_TOKEN, VOLUME_TOKEN):
        texts = [item.question, *item.options.values()]
        if any(token in t for t in texts):
            raise DataError(f"question {item.id!r}: its text contains {token!r}, which marks an input for the model")
    lines = [item.question]
    lines += [f"{letter}. {text}" for letter, text in item.options.items()]
    lines.append(instruction(item, style))
    return IMAGE_TOKEN * n_images + "\n" + "\n".join(lines)


def system_turn(style: str) -> str | None:
    """The system prompt of a style; None: no system turn."""
    return None if check_style(style) == "plain" else system_prompt(style)


def record_style(style: str) -> str:
    """The ``qoqmed.data.prompt_styles`` style a question's record is loaded with (``plain`` keeps the text as
    it is, which qoqmed's style does)."""
    return "qoqmed" if check_style(style) == "plain" else style
