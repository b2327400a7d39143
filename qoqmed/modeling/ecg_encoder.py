"""ECG-JEPA encoder (Kim 2024, arXiv 2410.08559), re-implemented from its description.

Input ``(batch, leads, samples)``; each lead is cut into non-overlapping patches of ``patch_size`` samples and
embedded with one ``Linear``. Tokens sit on a (lead, patch) grid; a fixed 2D sin-cos position table is added
before *every* block, and "cross-pattern" attention lets a token see only tokens of its own lead or of its own
time patch in other leads. Blocks are pre-LN transformers without qkv bias, followed by a final LayerNorm.
Module names follow the timm/I-JEPA layout so the official ``checkpoint['encoder']`` maps onto them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_MODES = ("pooled", "per_lead", "patch")


@dataclass
class ECGEncoderConfig:
    """Shape of the ECG encoder. Defaults are the published ECG-JEPA base model."""

    num_leads: int = 8
    num_samples: int = 2500
    patch_size: int = 50
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_samples % self.patch_size:
            raise ValueError(
                f"ECG num_samples={self.num_samples} is not a multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ECG hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError("ECG hidden_size must be a multiple of 4 for the 2D sin-cos position table")

    @property
    def num_patches(self) -> int:
        return self.num_samples // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def num_ecg_tokens(config: ECGEncoderConfig, mode: str) -> int:
    """How many LLM tokens one ECG record becomes in a given token mode."""
    if mode == "pooled":
        return 1
    if mode == "per_lead":
        return config.num_leads
    if mode == "patch":
        return config.num_leads * config.num_patches
    raise ValueError(f"unknown ECG token mode {mode!r}; choose one of {TOKEN_MODES}")


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_positions(hidden_size: int, num_leads: int, num_patches: int) -> torch.Tensor:
    """Fixed (lead, patch) position table, lead-major: row ``lead * num_patches + patch``."""
    lead = torch.arange(num_leads).repeat_interleave(num_patches)
    patch = torch.arange(num_patches).repeat(num_leads)
    half = hidden_size // 2
    return torch.cat([_sincos_1d(half, lead), _sincos_1d(half, patch)], dim=1).float()


def cross_pattern_mask(num_leads: int, num_patches: int) -> torch.Tensor:
    """Boolean (T, T) mask, True where attention is allowed: same lead or same patch index."""
    lead = torch.arange(num_leads).repeat_interleave(num_patches)
    patch = torch.arange(num_patches).repeat(num_leads)
    return (lead[:, None] == lead[None, :]) | (patch[:, None] == patch[None, :])


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: ECGEncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = _Attention(cfg.hidden_size, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class ECGJEPAEncoder(nn.Module):
    """``(B, leads, samples) -> (B, leads * patches, hidden)``; see :meth:`tokens` for the LLM-facing output."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_size, config.hidden_size)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        grid = (config.hidden_size, config.num_leads, config.num_patches)
        self.register_buffer("pos_embed", sincos_2d_positions(*grid), persistent=False)
        self.register_buffer("attn_mask", cross_pattern_mask(*grid[1:]), persistent=False)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if ecg.ndim != 3 or ecg.shape[1:] != (cfg.num_leads, cfg.num_samples):
            raise ValueError(
                f"ECG input must have shape (batch, {cfg.num_leads}, {cfg.num_samples}), got {tuple(ecg.shape)}"
            )
        b = ecg.shape[0]
        patches = ecg.reshape(b, cfg.num_leads * cfg.num_patches, cfg.patch_size)
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        pos = self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x + pos, self.attn_mask)
        return self.norm(x)

    def tokens(self, ecg: torch.Tensor, mode: str) -> torch.Tensor:
        """Encoder output reduced to the tokens handed to the LLM: pooled (1), per lead (8) or every patch."""
        x = self(ecg)
        if mode == "patch":
            return x
        if mode == "per_lead":
            return x.view(x.shape[0], self.config.num_leads, self.config.num_patches, -1).mean(2)
        if mode == "pooled":
            return x.mean(1, keepdim=True)
        raise ValueError(f"unknown ECG token mode {mode!r}; choose one of {TOKEN_MODES}")
