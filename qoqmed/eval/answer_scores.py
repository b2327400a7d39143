"""The model's probability of each label of a two-label task (the fusion tasks' Yes/No), for AUROC.

Read from the answer-token log-probs: after the model's own greedy answer up to its last ``\\boxed{``, each label
``l`` is scored by the summed log-probability of the tokens of ``l}``; a softmax over the two labels gives the
probability of each. A response without ``\\boxed{`` is scored as if it ended with one. Only datasets whose
every row has exactly one label, two labels in all (answers and the ``Options: a, b.`` the questions list), are
scored (:func:`binary_label_sets`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..data.prompts import encode_batch, load_record
from ..data.schema import Record
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from ..rewards.parsing import split_labels
from .metrics import normalize_label

__all__ = ["BOXED", "answer_prefix", "binary_label_sets", "label_probabilities"]

BOXED = "\\boxed{"
_OPTIONS = re.compile(r"Options:\s*([^\n]*?)\.?[ \t]*(?:\n|$)")


def binary_label_sets(records: Sequence[Record]) -> dict[str, tuple[str, str]]:
    """Dataset -> its two labels (name order), for the datasets whose rows are single-label with two labels."""
    spelled: dict[str, dict[str, str]] = {}
    multi: set[str] = set()
    for rec in records:
        labels = rec.labels
        if len(labels) != 1:
            multi.add(rec.dataset)
            continue
        options = _OPTIONS.search(rec.problem)
        for label in labels + (split_labels(options.group(1)) if options else []):
            spelled.setdefault(rec.dataset, {}).setdefault(normalize_label(label), label)
    return {ds: tuple(sorted(names.values())) for ds, names in spelled.items() if len(names) == 2 and ds not in multi}


def answer_prefix(response: str) -> str:
    """The response up to and including its last ``\\boxed{``, where the model writes its answer."""
    at = response.rfind(BOXED)
    return response[:at + len(BOXED)] if at >= 0 else f"{response.rstrip()}\n{BOXED}"


def _continuation_logprob(model: QoQMedForConditionalGeneration, enc: dict, ids: list[int]) -> float:
    tail = torch.tensor([ids], device=model.device)
    n_prompt = enc["input_ids"].shape[1]
    inputs = {**enc, "input_ids": torch.cat([enc["input_ids"], tail], dim=1),
              "attention_mask": torch.cat([enc["attention_mask"], torch.ones_like(tail)], dim=1)}
    for key in ("mm_token_type_ids", "token_type_ids"):  # per-token types: the answer tokens are text (0)
        if key in enc:
            inputs[key] = torch.cat([enc[key], torch.zeros_like(tail)], dim=1)
    logits = model(**inputs).logits[0, n_prompt - 1:n_prompt - 1 + len(ids)].float()
    return float(logits.log_softmax(-1).gather(1, tail[0][:, None]).sum())


@torch.no_grad()
def label_probabilities(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor,
                        records: Sequence[Record], responses: Sequence[str],
                        prompt_style: str = "qoqmed") -> list[dict[str, float] | None]:
    """Per record, ``{label: probability}`` over its dataset's two labels, or None outside two-label datasets."""
    sets = binary_label_sets(records)
    model.eval()
    out: list[dict[str, float] | None] = []
    for rec, response in zip(records, responses, strict=True):
        labels = sets.get(rec.dataset)
        if labels is None:
            out.append(None)
            continue
        enc = encode_batch(processor, [load_record(rec, prompt_style)], continuations=[answer_prefix(response)])
        enc = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
        logps = torch.tensor([_continuation_logprob(
            model, enc, processor.tokenizer(label + "}", add_special_tokens=False)["input_ids"]) for label in labels])
        out.append({label: float(p) for label, p in zip(labels, logps.softmax(0))})
    return out
