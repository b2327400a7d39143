"""A tiny, randomly initialised QoQ-Med and a tokenizer trained locally: for tests, the quickstart and laptops.

Nothing here touches a model hub. The tokenizer is a byte-level BPE trained in about a second on a corpus the
caller supplies (e.g. the benchmark's questions and answers) plus the output-format vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .configuration_qoqmed import QoQMedConfig
from .modeling_qoqmed import QoQMedForConditionalGeneration
from .processing_qoqmed import ECG_END, ECG_PAD, ECG_START, QoQMedProcessor

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", ECG_START, ECG_PAD, ECG_END,
]

# Text every model must be able to write: the answer format, digits for boxes, common words.
FORMAT_CORPUS = [
    "<think>Objects of interest:\n```json\n[{\"bbox_2d\": [12, 34, 56, 78], \"label\": \"lesion\"}]\n```\n"
    "The findings are consistent with the diagnosis.</think>\n\\boxed{Normal}",
    "```json\n[]\n```",
    " ".join(str(i) for i in range(0, 1024)),
    "You are a clinical reasoning assistant. Think step by step inside <think> </think>, list the regions that "
    "support your answer as JSON boxes, then give the final diagnosis inside \\boxed{}.",
]


# The shape of Qwen2.5-VL-Instruct's chat template (default system turn, image and video parts), for the tiny base.
QWEN_VL_STYLE_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinySpec:
    """Sizes of the tiny model. Defaults train in minutes on 2 CPU cores."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden: int = 64
    ecg_hidden: int = 32
    ecg_layers: int = 1
    ecg_heads: int = 2
    ecg_token_mode: str = "per_lead"
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    max_position_embeddings: int = 2048
    extra: dict = field(default_factory=dict)


def build_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 2048, ecg_tokens: bool = True
                    ) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained offline on ``corpus`` + the format corpus, with the Qwen2.5-VL special tokens.

    ``ecg_tokens=False`` leaves out the ECG placeholders, as in a plain Qwen2.5-VL tokenizer.
    """
    specials = SPECIAL_TOKENS if ecg_tokens else [t for t in SPECIAL_TOKENS if t not in (ECG_START, ECG_PAD, ECG_END)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*FORMAT_CORPUS, *corpus], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=specials[1:])
    hf.padding_side = "left"
    return hf


def _text_vision_config(spec: TinySpec, vocab_size: int, ids: dict[str, int]) -> tuple[dict, dict]:
    head_dim = spec.hidden_size // spec.num_heads
    # mrope sections split half the head dim over (temporal, height, width)
    t_sec = head_dim // 2 - 2 * (head_dim // 6)
    text = dict(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [t_sec, head_dim // 6, head_dim // 6]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
        num_heads=2, out_hidden_size=spec.hidden_size, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, window_size=112, fullatt_block_indexes=list(range(spec.vision_depth)),
    )
    return text, vision


def save_tiny_base(out, corpus: Iterable[str] = (), spec: TinySpec | None = None, seed: int = 0) -> None:
    """Save a tiny random *plain Qwen2.5-VL* checkpoint (no ECG tokens, transformers' own classes) to ``out``.

    It has the files and weight layout of a real Qwen2.5-VL-Instruct folder, so ``build_from_base`` /
    ``qoqmed model init`` can be exercised end to end without downloading one.
    """
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    spec = spec or TinySpec()
    tokenizer = build_tokenizer(corpus, spec.vocab_size, ecg_tokens=False)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t in tokenizer.get_vocab()}
    text, vision = _text_vision_config(spec, len(tokenizer), ids)
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                               pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)
    tokenizer.chat_template = QWEN_VL_STYLE_TEMPLATE
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels, patch_size=14, merge_size=2,
                             temporal_patch_size=2).save_pretrained(out)


def build_tiny(corpus: Iterable[str] = (), spec: TinySpec | None = None, seed: int = 0
               ) -> tuple[QoQMedProcessor, QoQMedForConditionalGeneration]:
    """Random-init tiny QoQ-Med (Qwen2.5-VL layout + ECG-JEPA layout) and its processor."""
    spec = spec or TinySpec()
    tokenizer = build_tokenizer(corpus, spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    ecg_config = dict(hidden_size=spec.ecg_hidden, num_layers=spec.ecg_layers, num_heads=spec.ecg_heads)
    text, vision = _text_vision_config(spec, len(tokenizer), ids)
    config = QoQMedConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        ecg_token_id=ids[ECG_PAD], ecg_start_token_id=ids[ECG_START], ecg_end_token_id=ids[ECG_END],
        ecg_config=ecg_config, ecg_token_mode=spec.ecg_token_mode, **spec.extra,
    )
    config.architectures = ["QoQMedForConditionalGeneration"]
    torch.manual_seed(seed)
    model = QoQMedForConditionalGeneration(config)
    gen = model.generation_config
    gen.eos_token_id = ids["<|im_end|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.suppress_tokens = model.placeholder_token_ids()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                               patch_size=14, merge_size=2, temporal_patch_size=2)
    enc = config.ecg_encoder_config
    processor = QoQMedProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                num_ecg_tokens=config.num_ecg_tokens, ecg_num_leads=enc.num_leads,
                                ecg_num_samples=enc.num_samples)
    return processor, model
