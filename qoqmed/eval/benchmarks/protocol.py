"""Answer extraction and scoring of public medical VQA benchmarks, one rule per question kind and protocol.

Question kinds:

* ``closed``: a closed question. When its reference answer is ``yes`` or ``no`` the predicted answer is the one of
  ``yes``/``no`` that occurs in the extracted answer; both or neither make it *unparseable* (counted, scored
  wrong). Other closed answers (SLAKE's "Which is bigger, the liver or the spleen?") are scored by exact match.
* ``open``: an open question, scored by *recall* (share of the reference's tokens found in the prediction's
  tokens) and *exact match*, both after normalisation.
* ``choice``: multiple choice, scored by the option letter read from the answer. An answer from which no single
  option letter can be read is *unparseable*: counted, reported, scored wrong, never replaced by a guess.

Protocols (``--protocol``), because harnesses differ in exactly these rules:

``qoqmed`` (default)
    The answer is the last ``\\boxed{}`` (``\\text{}`` unwrapped), else the text after the last ``</think>``,
    else the text after the last "answer is"/"answer:", else the whole response. Normalisation: lower case,
    ``\\text{}`` unwrapped, every character that is not a letter or a digit becomes a space, the articles a/an/the
    are dropped, whitespace collapsed. Yes/no: the normalised words. Option letter, in order: the whole answer is
    one letter (``B``, ``(b)``, ``B.``); the answer starts with an upper-case letter and ``)``, ``.`` or ``:``
    (``B. Pneumonia``, ``(C) ...``); "answer is B"/"answer: (B)"/"option B"; the normalised answer equals the
    normalised text of exactly one option. A letter outside the question's options, or two different letters
    found by the same rule, is unparseable.

``medevalkit``
    MedEvalKit's rules: the answer is the ``\\boxed{}`` content, else the
    ``<answer>`` tag content, else the response, lower-cased, and cut after the last "answer:"/"answer is"/
    "final answer" marker. Yes/no: correct when exactly one of the substrings "yes"/"no" occurs and it is the
    reference. Other closed answers and exact match: equality after removing newlines and full stops (closed)
    or after lower-casing and stripping (open). Recall: over whitespace-split token sets. Option letter: the text
    before the first full stop and after the last colon, equal to a letter, to an option's text or to
    "letter. text". MedEvalKit
    then picks the most similar option for an answer that is neither; that is a guess, so here it stays
    unparseable, and the unparseable count bounds the difference from MedEvalKit's own number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...rewards.parsing import _unwrap_text, parse_response

__all__ = ["KINDS", "PROTOCOLS", "Score", "check_protocol", "extract_answer", "normalize", "option_letter",
           "recall", "score_answer", "summarize", "yes_no"]

KINDS = ("closed", "open", "choice")
PROTOCOLS = ("qoqmed", "medevalkit")
YES_NO = ("yes", "no")


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of :data:`PROTOCOLS`, else a ValueError listing them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return protocol


@dataclass(frozen=True)
class Score:
    """How one answer scored. ``correct``: closed or choice correct, open exact match. ``recall``: open only.
    ``parsed``: the yes/no word, option letter or normalised answer read from the response (None: unparseable)."""

    correct: bool
    parsed: str | None
    unparseable: bool
    recall: float | None = None


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_ANSWER_MARK = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)
_MEDEVALKIT_MARKS = ("**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:",
                     "final answer", "final answer is")


def normalize(text: str) -> str:
    """The qoqmed protocol's normal form of an answer (see the module docstring)."""
    text = _unwrap_text(text).lower()
    text = _NON_ALNUM.sub(" ", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _between(text: str, tag: str) -> str | None:
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    end = text.find(f"</{tag}>", start)
    return text[start + len(tag) + 2: end if end >= 0 else None].strip()


def extract_answer(response: str, protocol: str = "qoqmed") -> str:
    """The part of a response that holds the answer, as each protocol reads it."""
    check_protocol(protocol)
    boxed = parse_response(response).boxed
    if protocol == "medevalkit":
        text = boxed if boxed is not None else _between(response, "answer")
        text = (text if text is not None else response).lower()
        for mark in _MEDEVALKIT_MARKS:
            if mark in text:
                text = text.split(mark)[-1]
        return text.strip()
    if boxed is not None:
        return _unwrap_text(boxed).strip()
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]
    marks = list(_ANSWER_MARK.finditer(response))
    if marks:
        response = response[marks[-1].end():]
    return response.strip()


def yes_no(answer: str, protocol: str = "qoqmed") -> str | None:
    """``yes`` or ``no`` read from an extracted answer; None when both or neither occur."""
    if check_protocol(protocol) == "medevalkit":
        text = answer.replace("\n", "").replace(".", "")
        found = [w for w in YES_NO if w in text]
    else:
        words = set(normalize(answer).split())
        found = [w for w in YES_NO if w in words]
    return found[0] if len(found) == 1 else None


def recall(prediction: str, reference: str, protocol: str = "qoqmed") -> float:
    """Share of the reference's distinct tokens that occur among the prediction's tokens (0 for an empty
    reference or prediction)."""
    if check_protocol(protocol) == "medevalkit":
        pred, ref = set(prediction.lower().split()), set(reference.lower().split())
    else:
        pred, ref = set(normalize(prediction).split()), set(normalize(reference).split())
    if not pred or not ref:
        return 0.0
    return len(pred & ref) / len(ref)


_WHOLE_LETTER = re.compile(r"^\(?([a-z])\)?[.:]?$", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|[.:](?=\s|$))")
_MARKED_LETTER = re.compile(r"(?:answer\s*(?:is|:)|option)\s*\(?([a-z])\b\)?", re.IGNORECASE)


def _one(letters: Sequence[str], options: Mapping[str, str]) -> tuple[bool, str | None]:
    """(a rule matched, its letter): the rule matched when it found letters; the letter is None when they
    disagree or fall outside the options."""
    found = {x.upper() for x in letters}
    if not found:
        return False, None
    if len(found) > 1:
        return True, None
    letter = found.pop()
    return True, letter if letter in options else None


def option_letter(answer: str, options: Mapping[str, str], protocol: str = "qoqmed") -> str | None:
    """The option letter an extracted answer names, or None (unparseable). ``options``: letter -> text."""
    if check_protocol(protocol) == "medevalkit":
        text = answer.strip().lower().replace("\n", "").split(".")[0].split(":")[-1]
        if text.upper() in options and len(text) == 1:
            return text.upper()
        matches = [k for k, v in options.items() if text in (v.strip().lower(), f"{k}. {v}".strip().lower())]
        return matches[0] if len(matches) == 1 else None
    text = answer.strip()
    for rule in (_WHOLE_LETTER.findall(text), _LEADING_LETTER.findall(text), _MARKED_LETTER.findall(text)):
        matched, letter = _one(rule, options)
        if matched:
            return letter
    norm = normalize(text)
    matches = [k for k, v in options.items() if norm and normalize(v) == norm]
    return matches[0] if len(matches) == 1 else None


def score_answer(response: str, kind: str, reference: str, options: Mapping[str, str] | None = None,
                 protocol: str = "qoqmed") -> Score:
    """Score one response. ``reference``: the answer text (closed, open) or the option letter (choice)."""
    answer = extract_answer(response, protocol)
    if kind == "choice":
        if not options or reference not in options:
            raise ValueError(f"choice question: reference {reference!r} is not one of the options {list(options or {})}")
        letter = option_letter(answer, options, protocol)
        return Score(correct=letter == reference, parsed=letter, unparseable=letter is None)
    ref = reference.strip().lower()
    if kind == "closed" and ref in YES_NO:
        word = yes_no(answer, protocol)
        return Score(correct=word == ref, parsed=word, unparseable=word is None)
    if kind == "closed":
        if protocol == "medevalkit":
            pred = answer.replace("\n", "").replace(".", "")
            return Score(correct=pred == ref, parsed=pred, unparseable=not pred)
        pred = normalize(answer)
        return Score(correct=pred == normalize(reference), parsed=pred, unparseable=not pred)
    if kind == "open":
        if protocol == "medevalkit":
            pred = answer
            exact = pred == ref
        else:
            pred = normalize(answer)
            exact = pred == normalize(reference)
        return Score(correct=exact, parsed=pred, unparseable=not pred, recall=recall(answer, reference, protocol))
    raise ValueError(f"question kind {kind!r}: expected one of {', '.join(KINDS)}")


def _share(count: int, n: int) -> float | None:
    return count / n if n else None


def summarize(rows: Sequence[Mapping]) -> dict:
    """Counts and rates of scored rows (each with ``kind``, ``correct``, ``unparseable`` and, open, ``recall``).

    Per kind present: ``closed`` and ``choice``: n, correct, accuracy, unparseable, unparseable_rate; ``open``: n,
    exact_match (share), recall (mean), unparseable (empty answers). Overall: ``accuracy`` = (closed and choice
    correct + open exact matches) / n, and the unparseable count and rate over every question.
    """
    out: dict = {"n": len(rows)}
    for kind in KINDS:
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        n, correct, bad = len(part), sum(bool(r["correct"]) for r in part), sum(bool(r["unparseable"]) for r in part)
        if kind == "open":
            out[kind] = {"n": n, "exact_match": correct / n, "recall": sum(r["recall"] for r in part) / n,
                         "unparseable": bad, "unparseable_rate": bad / n}
        else:
            out[kind] = {"n": n, "correct": correct, "accuracy": correct / n, "unparseable": bad,
                         "unparseable_rate": bad / n}
    out["accuracy"] = _share(sum(bool(r["correct"]) for r in rows), len(rows))
    out["unparseable"] = sum(bool(r["unparseable"]) for r in rows)
    out["unparseable_rate"] = _share(out["unparseable"], len(rows))
    return out
