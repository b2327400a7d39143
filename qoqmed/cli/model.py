"""`qoqmed model`: build a tiny model or one from local Qwen2.5-VL weights, load released ECG weights, inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, fail

model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to save the model, processor and tokenizer.")],
    corpus: Annotated[Optional[Path], typer.Option(help="jsonl records whose text trains the tokenizer.")] = None,
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
) -> None:
    """Build a tiny random-init QoQ-Med with a locally trained tokenizer (no downloads)."""
    from ..data.schema import load_records
    from ..modeling.tiny import build_tiny

    texts = []
    if corpus is not None:
        texts = [t for r in load_records(corpus, check_files=False) for t in (r.problem, r.answer)]
    processor, model = build_tiny(texts, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"saved a tiny QoQ-Med ({n / 1e6:.2f}M parameters) to {out}")


@model_app.command("init")
def model_init(
    base: Annotated[str, typer.Option(help="Folder of a Qwen2.5-VL-7B/32B-Instruct or QoQ-Med-VL checkpoint (or "
                                           "a hub id already in the local Hugging Face cache).")],
    out: Annotated[Path, typer.Option(help="Folder to save the QoQ-Med model and processor.")],
    ecg_encoder: Annotated[Optional[Path], typer.Option(
        help="Official ECG-JEPA checkpoint (torch.load(path)['encoder']); omit for a random-init encoder.")] = None,
    ecg_tokens: Annotated[str, typer.Option(help="ECG tokens per record: pooled (1, reference), per_lead (8), "
                                                 "patch (400).")] = "pooled",
    projector: Annotated[str, typer.Option(help="ECG projector: linear (reference) or mlp.")] = "linear",
    ecg_width: Annotated[int, typer.Option(help="ECG encoder width (published ECG-JEPA: 768).")] = 768,
    ecg_depth: Annotated[int, typer.Option(help="ECG encoder blocks (published ECG-JEPA: 12).")] = 12,
    ecg_heads: Annotated[int, typer.Option(help="ECG encoder attention heads (published ECG-JEPA: 16).")] = 16,
    dtype: Annotated[str, typer.Option(help="Weights dtype: bfloat16 or float32 (float32 for CPU).")] = "bfloat16",
    attn: Annotated[str, typer.Option(help="Attention: sdpa, eager or flash_attention_2.")] = "sdpa",
    freeze_vision: Annotated[bool, typer.Option(help="Keep the vision tower frozen in training.")] = False,
    freeze_ecg: Annotated[bool, typer.Option(help="Keep the ECG encoder frozen in training.")] = False,
    freeze_llm: Annotated[bool, typer.Option(help="Keep the language model frozen in training.")] = False,
    min_pixels: Annotated[int, typer.Option(help="Image pixel budget, lower bound (reference 65536; 0 keeps "
                                                 "the base's).")] = 65_536,
    max_pixels: Annotated[int, typer.Option(help="Image pixel budget, upper bound (reference 524288; 0 keeps "
                                                 "the base's).")] = 524_288,
    trust_ecg_checkpoint: Annotated[bool, typer.Option(
        help="Allow full unpickling of the ECG checkpoint (only for files of trusted origin).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the new ECG encoder/projector weights.")] = 0,
) -> None:
    """Build a QoQ-Med model from local Qwen2.5-VL weights and ECG-JEPA weights (no downloads)."""
    import time

    from ..modeling.build import build_from_base, parameter_counts

    start = time.perf_counter()
    _, model = build_from_base(
        base, out, ecg_encoder=ecg_encoder, ecg_token_mode=ecg_tokens, ecg_projector=projector, dtype=dtype,
        ecg_config=dict(hidden_size=ecg_width, num_layers=ecg_depth, num_heads=ecg_heads),
        attn_implementation=attn, freeze_vision=freeze_vision, freeze_ecg=freeze_ecg, freeze_llm=freeze_llm,
        min_pixels=min_pixels or None, max_pixels=max_pixels or None,
        trust_ecg_checkpoint=trust_ecg_checkpoint, seed=seed)
    counts = parameter_counts(model)
    console.print(f"saved a QoQ-Med model ({counts['total'] / 1e9:.3f}B parameters; ECG encoder "
                  f"{counts['ecg'] / 1e6:.1f}M, {'official weights' if ecg_encoder else 'random init'}) to {out} "
                  f"in {time.perf_counter() - start:.1f}s; frozen: {', '.join(model.config.frozen_modules) or 'none'}")


@model_app.command("convert-released")
def model_convert_released(
    model: Annotated[Path, typer.Argument(help="Folder of a QoQ-Med model with a linear projector and pooled ECG "
                                               "tokens (e.g. `qoqmed model init` from the released QoQ-Med-VL).")],
    checkpoint: Annotated[Path, typer.Argument(help="Released time-series checkpoint: a folder of *.safetensors, "
                                                    "a .safetensors file or a .pt/.bin state dict.")],
    out: Annotated[Path, typer.Option(help="Folder to save the model with the released ECG weights.")],
) -> None:
    """Load the released time-series weights (time_series_embedding.encoder.* and .linear.*) into a QoQ-Med
    model's ECG encoder and projector, strictly checked, and save it."""
    from ..modeling.convert_released import load_released_time_series, read_released_time_series
    from ..modeling.modeling_qoqmed import QoQMedForConditionalGeneration
    from ..modeling.processing_qoqmed import QoQMedProcessor

    if not (model / "config.json").is_file():
        fail(f"{model}: no config.json; pass a folder written by save_pretrained")
    state = read_released_time_series(checkpoint)
    net = QoQMedForConditionalGeneration.from_pretrained(model)
    load_released_time_series(net, state, str(checkpoint))
    net.save_pretrained(out)
    QoQMedProcessor.from_pretrained(model).save_pretrained(out)
    console.print(f"loaded {len(state)} released time-series tensors from {checkpoint} into {model}; saved to {out}")


@model_app.command("info")
def model_info_cmd(
    path: Annotated[Path, typer.Argument(help="Folder of a saved QoQ-Med model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameters per part and ECG settings of a saved QoQ-Med model (reads only its config)."""
    from ..modeling.build import model_info

    info = model_info(path)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    params = info["parameters"]
    console.print(f"{path}: {params['total'] / 1e6:.2f}M parameters (LLM {params['llm'] / 1e6:.2f}M, vision "
                  f"{params['vision'] / 1e6:.2f}M, ECG encoder {params['ecg'] / 1e6:.2f}M, ECG projector "
                  f"{params['projector'] / 1e6:.3f}M); dtype {info['dtype']}")
    ecg = info["ecg"]
    console.print(f"ECG: {ecg['token_mode']} ({ecg['tokens_per_record']} tokens per record), {ecg['projector']} "
                  f"projector, token ids {ecg['token_ids']}; frozen: {', '.join(info['frozen_modules']) or 'none'}")


@model_app.command("merge-lora")
def model_merge_lora(
    adapter: Annotated[Path, typer.Argument(help="LoRA adapter folder (adapter_config.json), e.g. a LoRA run's "
                                                 "rl/model.")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model and processor.")],
    dtype: Annotated[Optional[str], typer.Option(help="Load the base as this dtype (e.g. bfloat16); default: as "
                                                      "saved.")] = None,
) -> None:
    """Merge a LoRA adapter into its base model (adapter_config's base_model_name_or_path) and save the full
    model: no peft needed to use it, and no base folder either."""
    import torch

    from ..modeling.lora import adapter_base, merge_adapter

    if dtype is not None and not isinstance(getattr(torch, dtype, None), torch.dtype):
        fail(f"--dtype {dtype}: not a torch dtype (e.g. bfloat16, float32)")
    try:
        merge_adapter(adapter, out, getattr(torch, dtype) if dtype else None)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    console.print(f"merged {adapter} into its base {adapter_base(adapter)}; saved to {out}")
