"""QoQ-Med processor: the Qwen2.5-VL processor plus ECG placeholders, without the torchvision video processor.

Volumes and videos enter as lists of frames, each an image, as the reference model feeds them; so the video
sub-processor (which needs torchvision) is not part of this processor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from transformers import Qwen2_5_VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import ProcessorMixin

ECG_START, ECG_PAD, ECG_END = "<|ecg_start|>", "<|ecg_pad|>", "<|ecg_end|>"
ECG_BLOCK = ECG_START + ECG_PAD + ECG_END

# Qwen2.5 chat format; content parts may be text, image or ecg in any order. A system turn is optional.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'ecg' %}" + ECG_BLOCK + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(default_system: str | None = None) -> str:
    """:data:`CHAT_TEMPLATE`, optionally opening with ``default_system`` when a conversation has no system turn.

    Qwen2.5-VL-Instruct's own template inserts "You are a helpful assistant." that way, and QoQ-Med-VL was trained
    through it; builds from such a base keep the behaviour so prompts match what the weights saw.
    """
    if not default_system:
        return CHAT_TEMPLATE
    literal = json.dumps(default_system)  # a JSON string is a valid Jinja string literal
    return ("{% if messages and messages[0]['role'] != 'system' %}<|im_start|>system\n{{ " + literal
            + " }}<|im_end|>\n{% endif %}" + CHAT_TEMPLATE)


class QoQMedProcessor(Qwen2_5_VLProcessor):
    """Turns chat text, images and ECG records into model inputs.

    Every ``<|ecg_start|><|ecg_pad|><|ecg_end|>`` block in the text becomes ``num_ecg_tokens`` pad tokens, and
    ``ecg`` records (one per block, in prompt order across the batch) become ``ecg_values``.

    Batches are padded on the left unless a call says otherwise: a decoder generates after the last prompt token,
    and RL trainers (TRL) left-pad prompt ids themselves while taking ``mm_token_type_ids`` from this processor, so
    any other side shifts the image-token flags and the 3-D rotary positions of every shorter row. The side is
    saved with the processor and applied to its tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, num_ecg_tokens: int = 1,
                 ecg_num_leads: int = 8, ecg_num_samples: int = 2500, padding_side: str = "left", **kwargs):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.ecg_token = ECG_PAD
        self.ecg_token_id = tokenizer.convert_tokens_to_ids(ECG_PAD)
        if self.ecg_token_id is None or self.ecg_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {ECG_PAD} token; add {ECG_START}, {ECG_PAD}, {ECG_END} first")
        self.num_ecg_tokens = int(num_ecg_tokens)
        self.ecg_num_leads = int(ecg_num_leads)
        self.ecg_num_samples = int(ecg_num_samples)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}: 'left' or 'right'")
        self.padding_side = padding_side
        tokenizer.padding_side = padding_side
        tokenizer.init_kwargs["padding_side"] = padding_side  # saved in tokenizer_config.json too
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def to_dict(self, *args, **kwargs):
        out = super().to_dict(*args, **kwargs)
        out.update(num_ecg_tokens=self.num_ecg_tokens, ecg_num_leads=self.ecg_num_leads,
                   ecg_num_samples=self.ecg_num_samples, padding_side=self.padding_side)
        return out

    def __call__(self, images=None, text=None, ecg=None, **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("QoQMedProcessor needs `text` (use apply_chat_template to build it from messages)")
        texts = [text] if isinstance(text, str) else list(text)
        images = _flatten_images(images)
        n_blocks = sum(t.count(ECG_BLOCK) for t in texts)
        texts = [t.replace(ECG_BLOCK, ECG_START + ECG_PAD * self.num_ecg_tokens + ECG_END) for t in texts]
        kwargs.setdefault("padding_side", self.padding_side)
        out = super().__call__(images=images, text=texts, **kwargs)
        if ecg is not None:
            values = self._ecg_tensor(ecg)
            if values.shape[0] != n_blocks:
                raise ValueError(f"got {values.shape[0]} ECG records for {n_blocks} ECG placeholders in the text")
            out["ecg_values"] = values
        return out

    def _ecg_tensor(self, ecg) -> torch.Tensor:
        records = [ecg] if isinstance(ecg, (np.ndarray, torch.Tensor)) and np.ndim(ecg) == 2 else list(ecg)
        expected = (self.ecg_num_leads, self.ecg_num_samples)
        tensors = []
        for i, rec in enumerate(records):
            t = torch.as_tensor(np.asarray(rec, dtype=np.float32))
            if tuple(t.shape) != expected:
                raise ValueError(f"ECG record {i} has shape {tuple(t.shape)}; expected {expected} (leads, samples)")
            if not torch.isfinite(t).all():
                raise ValueError(f"ECG record {i} contains NaN or infinite values")
            tensors.append(t)
        if not tensors:
            return torch.empty(0, *expected)
        return torch.stack(tensors)

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["ecg_values"]

    def model_image_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to before the model sees it; boxes live in it."""
        ip = self.image_processor
        h, w = smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        return w, h


def _flatten_images(images):
    """Images per prompt (lists, some empty or None) -> one flat list in prompt order, or None if there are none."""
    if images is None:
        return None
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        if item is None:
            continue
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat or None


def chat_messages(problem: str, images: Sequence = (), system: str | None = None) -> list[dict]:
    """Turn a problem text with ``<image>``/``<ecg>`` placeholders into chat messages with typed content parts.

    ``images`` (optional) are attached, in order, to the image parts (TRL and the processor read them there).
    """
    parts: list[dict] = []
    image_iter = iter(images)
    pos = 0
    while pos < len(problem):
        nxt = [(problem.find(tag, pos), tag) for tag in ("<image>", "<ecg>")]
        nxt = [(i, tag) for i, tag in nxt if i >= 0]
        if not nxt:
            parts.append({"type": "text", "text": problem[pos:]})
            break
        i, tag = min(nxt)
        if i > pos:
            parts.append({"type": "text", "text": problem[pos:i]})
        if tag == "<image>":
            part = {"type": "image"}
            img = next(image_iter, None)
            if img is not None:
                part["image"] = img
            parts.append(part)
        else:
            parts.append({"type": "ecg"})
        pos = i + len(tag)
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    messages.append({"role": "user", "content": parts})
    return messages


def volume_parts(frames: Sequence, name: str = "Slice", attach: bool = True) -> list[dict]:
    """Content parts for a 3D volume or a video given as frames: a text label before each frame, then the image.

    Frames enter as separate images, as the reference model was trained (and without the torchvision-based video
    processor); the labels ("Slice 2/4: ") tell the model their order, which image positions alone do not.
    With ``attach`` each image part carries its frame (as TRL and ``apply_chat_template`` read it).
    """
    parts: list[dict] = []
    for i, frame in enumerate(frames, start=1):
        parts.append({"type": "text", "text": f"{name} {i}/{len(frames)}: "})
        parts.append({"type": "image", "image": frame} if attach else {"type": "image"})
    return parts
