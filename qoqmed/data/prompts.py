"""From records to model inputs: the prompt, the target answer for supervised warm-up, and batched encoding.

Boxes in prompts and answers are in pixels of each image *as the model sees it* (after the processor's resize);
:func:`target_text` converts the record's original-pixel boxes into that space.

Volumes reach the model as images: :func:`load_record` replaces each ``<volume>`` of the problem with one
``<image>`` per sampled slice, so the model, the processor and TRL only ever see images and ECG series.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..modeling.processing_qoqmed import QoQMedProcessor, chat_messages
from .boxes import to_model_box
from .prompt_styles import answer_layout, slice_selection, system_prompt, user_text
from .readers import load_ecg_file, load_image
from .schema import IMAGE_TOKEN, MODALITY_NAMES, VOLUME_TOKEN, Record
from .volumes import load_volume

@dataclass
class LoadedRecord:
    """A record with its files read.

    ``images`` are RGB images (original size) in prompt order: the record's images and each volume's sampled
    slices; ``problem`` is the record's problem with every ``<volume>`` expanded into that many ``<image>``;
    ``image_index[i]`` is the position in ``images`` of ``record.images[i]`` (boxes refer to those).
    ``ecgs`` are ECG arrays (leads, samples).
    """

    record: Record
    images: list[Image.Image]
    ecgs: list[np.ndarray]
    problem: str | None = None
    image_index: list[int] = field(default_factory=list)
    style: str = "qoqmed"  # the prompt style (qoqmed.data.prompt_styles) the problem and images were made for

    def __post_init__(self) -> None:
        if self.problem is None:
            self.problem = self.record.problem
        if not self.image_index:
            self.image_index = list(range(len(self.record.images)))

    def record_image(self, i: int) -> Image.Image:
        """The image ``record.images[i]`` (what a box's ``image`` index points at)."""
        return self.images[self.image_index[i]]


_VISUAL = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(VOLUME_TOKEN)})")


def load_record(record: Record, style: str = "qoqmed") -> LoadedRecord:
    """Read every file a record refers to; a missing or malformed file raises a DataError naming it.

    Each volume is sampled to its ``slices`` frames (``qoqmed.data.volumes.load_volume``) and its ``<volume>``
    placeholder becomes that many ``<image>`` placeholders, in place. ``style`` (``qoqmed.data.prompt_styles``)
    decides how slices are picked and how the problem is worded for the model.
    """
    selection = slice_selection(style)
    pieces = _VISUAL.split(record.problem)
    images: list[Image.Image] = []
    image_index: list[int] = []
    n_image = n_volume = 0
    for k, piece in enumerate(pieces):
        if piece == IMAGE_TOKEN:
            image_index.append(len(images))
            images.append(load_image(record.resolve(record.images[n_image])))
            n_image += 1
        elif piece == VOLUME_TOKEN:
            ref = record.volumes[n_volume]
            frames = load_volume(record.resolve(ref.path), num_slices=ref.slices, window=ref.window, axis=ref.axis,
                                 selection=selection)
            images.extend(frames)
            pieces[k] = IMAGE_TOKEN * len(frames)
            n_volume += 1
    ecgs = [load_ecg_file(record.resolve(p), record.ecg_formats.get(i)) for i, p in enumerate(record.ecg)]
    return LoadedRecord(record, images, ecgs, problem=user_text("".join(pieces), style), image_index=image_index,
                        style=style)


@dataclass(frozen=True)
class Grounding:
    """What the IoU reward compares against: the boxes and mask of the image that holds the findings."""

    boxes: tuple[tuple[float, float, float, float], ...]
    mask_path: str | None
    image_size: tuple[int, int] | None   # (w, h) original pixels
    model_size: tuple[int, int] | None   # (w, h) as the model sees the image


def grounding(loaded: LoadedRecord, processor: QoQMedProcessor) -> Grounding:
    """Ground truth for scoring boxes; predicted boxes are taken to refer to the first box's image."""
    rec = loaded.record
    index = rec.boxes[0].image if rec.boxes else rec.mask_image
    size = loaded.record_image(index).size if index is not None else None
    return Grounding(
        boxes=tuple(tuple(b.bbox_2d) for b in rec.boxes if b.image == index),
        mask_path=str(rec.resolve(rec.segmentation_path)) if rec.segmentation_path else None,
        image_size=size, model_size=processor.model_image_size(*size) if size else None,
    )


def model_boxes(loaded: LoadedRecord, processor: QoQMedProcessor) -> list[dict]:
    """Ground-truth boxes converted from original pixels to the model's resized-image pixels."""
    return [{"bbox_2d": list(to_model_box(box.bbox_2d, loaded.record_image(box.image).size, processor)),
             "label": box.label} for box in loaded.record.boxes]


def target_text(loaded: LoadedRecord, processor: QoQMedProcessor) -> str:
    """The answer a well-behaved model writes: boxes and a short rationale in <think>, then \\boxed{labels}."""
    rec = loaded.record
    boxes = json.dumps(model_boxes(loaded, processor))
    modality = MODALITY_NAMES.get(rec.domain, rec.domain)
    rationale = f"The {modality} shows findings of {rec.answer}."
    return answer_layout(boxes, rationale, rec.answer, loaded.style)


# Default of ``system`` below: the system prompt of the loaded record's prompt style.
STYLE_SYSTEM = "<the prompt style's system prompt>"


def messages_for(loaded: LoadedRecord, system: str | None = STYLE_SYSTEM) -> list[dict]:
    """Chat messages of a loaded record; ``system`` None for no system turn."""
    if system is STYLE_SYSTEM:
        system = system_prompt(loaded.style)
    return chat_messages(loaded.problem, loaded.images, system=system)


def encode_batch(processor: QoQMedProcessor, batch: Sequence[LoadedRecord], with_targets: bool = False,
                 system: str | None = STYLE_SYSTEM, continuations: Sequence[str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Tokenise a batch (left-padded). With targets, append the answer and build ``labels`` for the answer only.
    ``system``: by default each record's prompt style's system prompt. ``continuations``: text appended to each
    prompt as the start of the assistant's answer (to score what the model would write next)."""
    if not batch:
        raise ValueError("encode_batch needs at least one record")
    texts, images, ecgs = [], [], []
    for n, item in enumerate(batch):
        text = processor.apply_chat_template(messages_for(item, system), add_generation_prompt=True)
        if continuations is not None:
            text += continuations[n]
        if with_targets:
            text += target_text(item, processor) + "<|im_end|>"
        texts.append(text)
        images.extend(item.images)
        ecgs.extend(item.ecgs)
    # Left padding: generation appends to the right end of every row.
    enc = processor(text=texts, images=images or None, ecg=ecgs if ecgs else None, padding=True,
                    padding_side="left", return_tensors="pt")
    if with_targets:
        enc["labels"] = _answer_labels(enc["input_ids"], enc["attention_mask"], processor)
    return dict(enc)


def _answer_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, processor: QoQMedProcessor) -> torch.Tensor:
    """Copy of input_ids with everything up to and including the last ``<|im_start|>assistant\\n`` masked."""
    tok = processor.tokenizer
    start_id = tok.convert_tokens_to_ids("<|im_start|>")
    header = len(tok("assistant\n", add_special_tokens=False)["input_ids"])
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    for row in range(input_ids.shape[0]):
        starts = (input_ids[row] == start_id).nonzero()
        if len(starts) == 0:
            raise ValueError("a training example has no assistant turn")
        labels[row, : int(starts[-1]) + 1 + header] = -100
    return labels
