"""Build a QoQ-Med model from a Qwen2.5-VL (or QoQ-Med-VL) checkpoint on disk plus an ECG-JEPA encoder.

``build_from_base`` loads the base weights straight into :class:`QoQMedForConditionalGeneration` (one copy in
memory), adds the ECG placeholder tokens to the tokenizer, grows the embeddings only if the vocabulary does not
already have room (the real Qwen2.5 vocabulary has 151,665 tokens in a 152,064-row embedding), creates the ECG
encoder (official weights or random) and projector, and returns a model + processor that ``save_pretrained`` /
``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` handle like any other.

Which parts train is decided by :func:`~qoqmed.modeling.modeling_qoqmed.freeze`; the choice is recorded in the
config (``frozen_modules``) and re-applied whenever the model is loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .configuration_qoqmed import QoQMedConfig
from .ecg_encoder import TOKEN_MODES
from .modeling_qoqmed import QoQMedForConditionalGeneration, freeze, model_parts
from .processing_qoqmed import ECG_END, ECG_PAD, ECG_START, QoQMedProcessor, chat_template

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
ATTENTION = ("sdpa", "eager", "flash_attention_2")
BASE_MODEL_TYPES = ("qwen2_5_vl",)
# Qwen2.5-VL-Instruct's template opens conversations without a system turn with this one.
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."
# Pixel budget of the reference QoQ-Med training (docs/design.md §2.1).
REFERENCE_MIN_PIXELS = 65_536
REFERENCE_MAX_PIXELS = 524_288


class BuildError(ValueError):
    """The base checkpoint or an option cannot make a QoQ-Med model; the message says which file and why."""


# --- building ---------------------------------------------------------------------------------------------------

def add_ecg_tokens(tokenizer) -> dict[str, int]:
    """Add the ECG placeholder tokens (if absent) and return their ids.

    ``<|ecg_pad|>`` goes first so that on the real Qwen2.5 vocabulary it gets id 151665, the id of the reference
    model's time-series placeholder.
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in (ECG_PAD, ECG_START, ECG_END) if t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in (ECG_START, ECG_PAD, ECG_END)}


def resolve_base(base: str | Path) -> Path:
    """A checkpoint folder: ``base`` itself, or a hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) already in the local
    Hugging Face cache. Nothing is downloaded."""
    path = Path(base)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BuildError(f"{path}: no config.json; pass the folder of a Qwen2.5-VL or QoQ-Med-VL checkpoint")
        return path
    if str(base).count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(base), local_files_only=True))
        except Exception:  # noqa: BLE001 - any lookup failure means "not cached"
            pass
    raise BuildError(f"{base}: not a checkpoint folder and not in the local Hugging Face cache; download it "
                     f"first (e.g. `hf download {base} --local-dir DIR`) and pass DIR")


def _image_processor(base: Path, vision_config, min_pixels: int | None, max_pixels: int | None):
    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if (base / "preprocessor_config.json").is_file():
        # The PIL variant: the default Qwen2-VL image processor needs torchvision, which may not import here.
        return Qwen2VLImageProcessorPil.from_pretrained(base, **kwargs)
    logger.warning("%s has no preprocessor_config.json; using the Qwen2.5-VL image settings of its vision config",
                   base)
    return Qwen2VLImageProcessorPil(patch_size=vision_config.patch_size, merge_size=vision_config.spatial_merge_size,
                                    temporal_patch_size=vision_config.temporal_patch_size, **kwargs)


def qoqmed_config_from_base(base_config, token_ids: dict[str, int], *, ecg_token_mode: str = "pooled",
                            ecg_projector: str = "linear", ecg_config: dict | None = None,
                            ecg_sampling_rate: int = 250, ecg_normalize: bool = False) -> QoQMedConfig:
    """A QoQ-Med config holding the base's text and vision configs unchanged plus the ECG settings."""
    config = QoQMedConfig(
        text_config=base_config.text_config.to_dict(), vision_config=base_config.vision_config.to_dict(),
        image_token_id=base_config.image_token_id, video_token_id=base_config.video_token_id,
        vision_start_token_id=base_config.vision_start_token_id, vision_end_token_id=base_config.vision_end_token_id,
        tie_word_embeddings=base_config.tie_word_embeddings,
        ecg_token_id=token_ids[ECG_PAD], ecg_start_token_id=token_ids[ECG_START], ecg_end_token_id=token_ids[ECG_END],
        ecg_config=ecg_config or {}, ecg_token_mode=ecg_token_mode, ecg_projector=ecg_projector,
        ecg_sampling_rate=ecg_sampling_rate, ecg_normalize=ecg_normalize,
    )
    config.architectures = ["QoQMedForConditionalGeneration"]
    return config


def build_from_base(
    base: str | Path,
    out: str | Path | None = None,
    *,
    ecg_encoder: str | Path | None = None,
    ecg_token_mode: str = "pooled",
    ecg_projector: str = "linear",
    ecg_config: dict | None = None,
    ecg_normalize: bool = False,
    dtype: str | torch.dtype = "bfloat16",
    attn_implementation: str = "sdpa",
    freeze_vision: bool = False,
    freeze_ecg: bool = False,
    freeze_llm: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    trust_ecg_checkpoint: bool = False,
    device_map=None,
    seed: int = 0,
) -> tuple[QoQMedProcessor, QoQMedForConditionalGeneration]:
    """QoQ-Med from a Qwen2.5-VL-architecture folder (Qwen2.5-VL-7B/32B-Instruct, QoQ-Med-VL) and ECG-JEPA weights.

    ``base``: a checkpoint folder, or a hub id already in the local Hugging Face cache (nothing is downloaded).

    ``ecg_encoder``: path of an official ECG-JEPA checkpoint (``torch.load(path)['encoder']``); None initialises the
    encoder randomly. ``min_pixels``/``max_pixels``: image budget (None keeps the base's; the reference QoQ-Med
    used :data:`REFERENCE_MIN_PIXELS`/:data:`REFERENCE_MAX_PIXELS`). With ``out`` the model, processor and a
    ``qoqmed_build.json`` provenance record are saved there.
    """
    base = resolve_base(base)
    torch_dtype = _check_build_arguments(ecg_encoder, ecg_token_mode, dtype, attn_implementation)
    base_config = _base_config(base)

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"  # generation batches are left-padded
    token_ids = add_ecg_tokens(tokenizer)
    config = qoqmed_config_from_base(base_config, token_ids, ecg_token_mode=ecg_token_mode,
                                     ecg_projector=ecg_projector, ecg_config=ecg_config, ecg_normalize=ecg_normalize)
    torch.manual_seed(seed)  # the new ECG encoder/projector weights
    model = _load_base_weights(base, config, torch_dtype, attn_implementation, device_map)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # New rows start at the mean embedding; they are placeholders whose embedding the ECG features replace.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if ecg_encoder is not None:
        model.load_ecg_encoder(ecg_encoder, trust_pickle=trust_ecg_checkpoint)
    _set_generation_tokens(model, tokenizer)
    freeze(model, vision=freeze_vision, ecg=freeze_ecg, llm=freeze_llm)

    enc = config.ecg_encoder_config
    base_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    default_system = QWEN_DEFAULT_SYSTEM if QWEN_DEFAULT_SYSTEM in base_template else None
    processor = QoQMedProcessor(image_processor=_image_processor(base, config.vision_config, min_pixels, max_pixels),
                                tokenizer=tokenizer, num_ecg_tokens=config.num_ecg_tokens,
                                ecg_num_leads=enc.num_leads, ecg_num_samples=enc.num_samples,
                                chat_template=chat_template(default_system))
    if out is not None:
        out = Path(out)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        record = {"base": base.name, "base_model_type": base_config.model_type,
                  "ecg_encoder": Path(ecg_encoder).name if ecg_encoder else None,
                  "ecg_encoder_init": "official checkpoint" if ecg_encoder else f"random (seed {seed})",
                  "ecg_token_mode": ecg_token_mode, "ecg_projector": ecg_projector, "dtype": str(torch_dtype),
                  "attn_implementation": attn_implementation, "frozen_modules": model.config.frozen_modules,
                  "ecg_token_ids": token_ids, "vocab_size": len(tokenizer), "default_system_prompt": default_system}
        (out / "qoqmed_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return processor, model


def _check_build_arguments(ecg_encoder: str | Path | None, ecg_token_mode: str, dtype: str | torch.dtype,
                           attn_implementation: str) -> torch.dtype:
    """Refuse bad arguments before any weights are read; returns the dtype as a torch dtype."""
    if ecg_token_mode not in TOKEN_MODES:
        raise BuildError(f"ecg_token_mode={ecg_token_mode!r}; choose one of {TOKEN_MODES}")
    if attn_implementation not in ATTENTION:
        raise BuildError(f"attn_implementation={attn_implementation!r}; choose one of {ATTENTION}")
    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise BuildError(f"dtype={dtype!r}; choose one of {sorted(DTYPES)}")
    if ecg_encoder is not None and not Path(ecg_encoder).is_file():
        raise BuildError(f"{ecg_encoder}: ECG encoder checkpoint not found")
    return torch_dtype


def _base_config(base: Path):
    """The base's config, which must be a Qwen2.5-VL architecture and not a QoQ-Med model already."""
    base_config = AutoConfig.from_pretrained(base)
    if base_config.model_type == QoQMedConfig.model_type:
        raise BuildError(f"{base}: already a QoQ-Med model; load it with from_pretrained (and "
                         "model.load_ecg_encoder(path) to swap the ECG weights)")
    if base_config.model_type not in BASE_MODEL_TYPES:
        raise BuildError(f"{base}/config.json: model_type {base_config.model_type!r} is not a Qwen2.5-VL "
                         f"architecture ({', '.join(BASE_MODEL_TYPES)})")
    return base_config


def _load_base_weights(base: Path, config: QoQMedConfig, torch_dtype: torch.dtype, attn_implementation: str,
                       device_map) -> QoQMedForConditionalGeneration:
    """QoQ-Med with the base's weights; only the new ECG modules may be left at their start values."""
    # transformers prints a load report listing the (expected) missing ECG weights; _check_loading judges instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = QoQMedForConditionalGeneration.from_pretrained(
            base, config=config, dtype=torch_dtype, attn_implementation=attn_implementation,
            output_loading_info=True, device_map=device_map)
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading(base, info)
    return model


def _set_generation_tokens(model: QoQMedForConditionalGeneration, tokenizer) -> None:
    """Generation never emits the input placeholders and stops at the end of the assistant turn."""
    gen = model.generation_config
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | set(model.placeholder_token_ids()))
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def _check_loading(base: Path, info: dict) -> None:
    """Only the new ECG modules may be missing: anything else means the base weights did not load."""
    new = ("model.ecg_encoder.", "model.ecg_projector.")
    missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith(new))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        lines = [f"{base}: the checkpoint does not fit a Qwen2.5-VL model of its own config.json"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" ... and {len(keys) - 8} more" if len(keys) > 8 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        raise BuildError("\n".join(lines))


# --- inspection -------------------------------------------------------------------------------------------------

def parameter_counts(model: QoQMedForConditionalGeneration) -> dict[str, int]:
    """Parameters per part (a tied head is counted once, with the LLM)."""
    seen: set[int] = set()
    counts = {}
    for name, modules in model_parts(model).items():
        n = 0
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        counts[name] = n
    counts["total"] = sum(counts.values())
    return counts


def model_info(path: str | Path) -> dict:
    """Sizes and settings of a saved QoQ-Med model, from its config alone (weights are not read)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BuildError(f"{path}: no config.json; pass a folder written by save_pretrained")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != QoQMedConfig.model_type:
        raise BuildError(f"{path}/config.json: model_type {config.model_type!r}, not a QoQ-Med model")
    with torch.device("meta"):
        model = QoQMedForConditionalGeneration(config)
    text, vision = config.text_config, config.vision_config
    return {
        "parameters": parameter_counts(model),
        "dtype": str(getattr(config, "dtype", None) or text.dtype),
        "llm": {"hidden_size": text.hidden_size, "layers": text.num_hidden_layers, "vocab_size": text.vocab_size},
        "vision": {"depth": vision.depth, "hidden_size": vision.hidden_size},
        "ecg": {"token_mode": config.ecg_token_mode, "tokens_per_record": config.num_ecg_tokens,
                "projector": config.ecg_projector, "encoder": config.ecg_config,
                "token_ids": {"start": config.ecg_start_token_id, "pad": config.ecg_token_id,
                              "end": config.ecg_end_token_id}},
        "frozen_modules": list(config.frozen_modules or []),
    }
