"""Parameters and memory of QoQ-Med at tiny, 3B, 7B and 32B scale, from the published Qwen2.5-VL configurations.

The 3B/7B/32B models are instantiated on the meta device (no weights, no download), with the published ECG-JEPA
encoder (768 wide, 12 blocks, 16 heads) and the reference linear projector. Memory figures are for weights and
optimizer state only; activations depend on sequence length, batch size and checkpointing and come on top.

    python benchmarks/model_sizes.py [--out benchmarks/results/model_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from qoqmed.modeling import QoQMedConfig, QoQMedForConditionalGeneration
from qoqmed.modeling.build import parameter_counts
from qoqmed.modeling.tiny import build_tiny

GIB = 1024**3

# Published config.json values of Qwen/Qwen2.5-VL-{3B,7B,32B}-Instruct (3B: smaller vocabulary, tied head).
_VISION = dict(depth=32, hidden_size=1280, num_heads=16, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
               window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
_TEXT = dict(vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
PUBLISHED = {
    "3B": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, **{**_TEXT, "vocab_size": 151936}),
               vision=dict(intermediate_size=3420, out_hidden_size=2048, **_VISION), tie_word_embeddings=True),
    "7B": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, **_TEXT),
               vision=dict(intermediate_size=3420, out_hidden_size=3584, **_VISION)),
    "32B": dict(text=dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                          num_key_value_heads=8, **_TEXT),
                vision=dict(intermediate_size=3456, out_hidden_size=5120, **_VISION)),
}
# Ids of the real vocabulary (docs/design.md §2.1); the ECG tokens take the first free ids after the 151,665 used ones.
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653, ecg_token_id=151665, ecg_start_token_id=151666, ecg_end_token_id=151667)


def real_config(name: str) -> QoQMedConfig:
    spec = PUBLISHED[name]
    return QoQMedConfig(text_config=spec["text"], vision_config=spec["vision"],
                        tie_word_embeddings=spec.get("tie_word_embeddings", False),
                        ecg_token_mode="pooled", ecg_projector="linear", **TOKEN_IDS)


def memory(counts: dict[str, int], text_config) -> dict[str, float]:
    """GiB for weights and for AdamW training in bf16 mixed precision (no activations).

    Full training keeps bf16 weights + bf16 grads + fp32 master weights + two fp32 Adam moments = 16 bytes per
    trainable parameter and 2 per frozen one; GRPO/DRPO adds a frozen bf16 reference model (2 bytes/parameter).
    """
    total = counts["total"]
    vision_frozen = total - counts["vision"]
    head_dim = text_config.hidden_size // text_config.num_attention_heads
    kv_per_token = 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim * 2  # K,V bf16
    return {
        "weights_fp32_gib": round(4 * total / GIB, 3),
        "weights_bf16_gib": round(2 * total / GIB, 3),
        "train_full_adamw_gib": round(16 * total / GIB, 2),
        "train_vision_frozen_adamw_gib": round((16 * vision_frozen + 2 * counts["vision"]) / GIB, 2),
        "rl_full_with_reference_gib": round(18 * total / GIB, 2),
        "rl_full_with_reference_per_gpu_zero3_8gpu_gib": round(18 * total / 8 / GIB, 2),
        "kv_cache_bf16_mib_per_1k_tokens": round(kv_per_token * 1000 / 1024**2, 1),
    }


def sizes() -> dict:
    rows = {}
    _, tiny = build_tiny()
    counts = parameter_counts(tiny)
    rows["tiny"] = {"parameters": counts, "memory": memory(counts, tiny.config.text_config),
                    "config": "qoqmed.modeling.tiny.TinySpec() defaults (the quickstart model)"}
    for name in PUBLISHED:
        config = real_config(name)
        with torch.device("meta"):
            model = QoQMedForConditionalGeneration(config)
        counts = parameter_counts(model)
        rows[name] = {"parameters": counts, "memory": memory(counts, config.text_config),
                      "config": f"published Qwen2.5-VL-{name}-Instruct + ECG-JEPA (768x12) + linear projector"}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_sizes.json")
    args = parser.parse_args()
    rows = sizes()
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "note": "computed on the meta device; no weights allocated"},
              "bytes_per_parameter": {"fp32": 4, "bf16": 2, "adamw_mixed_precision_trainable": 16,
                                      "frozen_bf16": 2, "rl_reference_bf16": 2},
              "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<6} {'total':>9} {'LLM':>9} {'vision':>8} {'ECG enc':>8} {'proj':>7} "
          f"{'fp32 GiB':>9} {'bf16 GiB':>9} {'train GiB':>10}")
    for name, row in rows.items():
        p, m = row["parameters"], row["memory"]
        fmt = (lambda n: f"{n / 1e9:.3f}B") if p["total"] > 1e8 else (lambda n: f"{n / 1e6:.2f}M")
        print(f"{name:<6} {fmt(p['total']):>9} {fmt(p['llm']):>9} {fmt(p['vision']):>8} "
              f"{p['ecg'] / 1e6:>7.3f}M {p['projector'] / 1e6:>6.3f}M {m['weights_fp32_gib']:>9.2f} "
              f"{m['weights_bf16_gib']:>9.2f} {m['train_full_adamw_gib']:>10.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
