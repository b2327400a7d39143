"""ECG-JEPA encoder (Kim 2024, arXiv 2410.08559), re-implemented from its description.

Input ``(batch, leads, samples)``; each lead is cut into non-overlapping patches of ``patch_size`` samples and
embedded with one ``Linear``. Tokens sit on a (lead, patch) grid; a fixed 2D sin-cos position table is added
before *every* block, and "cross-pattern" attention lets a token see only tokens of its own lead or of its own
time patch in other leads. Blocks are pre-LN transformers without qkv bias, followed by a final LayerNorm.

The official release stores the encoder as ``torch.load(path)['encoder']`` with the names of its ``MaskTransformer``
(``W_P``, ``encoder_blocks.blocks.<i>.*``, ``norm``, ``pos_embed``); :func:`load_ecg_jepa_checkpoint` maps them onto
this module, checks every key and shape, and checks the stored position table against the one computed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

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
    # torch's LayerNorm default, which the official encoder uses everywhere
    layer_norm_eps: float = 1e-5

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
    """Fixed (lead, patch) position table, lead-major: row ``lead * num_patches + patch``.

    The first half of the channels encodes the patch (time) index and the second half the lead, as the official
    MAE-style table does (its meshgrid puts the width axis, here time, first).
    """
    lead = torch.arange(num_leads).repeat_interleave(num_patches)
    patch = torch.arange(num_patches).repeat(num_leads)
    half = hidden_size // 2
    return torch.cat([_sincos_1d(half, patch), _sincos_1d(half, lead)], dim=1).float()


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


# --- official checkpoint ----------------------------------------------------------------------------------------

class ECGCheckpointError(ValueError):
    """An ECG-JEPA checkpoint that does not fit the encoder; the message lists every offending key."""


_OFFICIAL_PREFIXES = (("W_P.", "patch_embed."), ("encoder_blocks.blocks.", "blocks."), ("norm.", "norm."))


def official_to_native_key(key: str) -> str | None:
    """Name in this module of a key of the official ``checkpoint['encoder']`` (None if it has no counterpart)."""
    for official, native in _OFFICIAL_PREFIXES:
        if key.startswith(official):
            return native + key[len(official):]
    return None


def native_to_official_key(key: str) -> str:
    for official, native in _OFFICIAL_PREFIXES:
        if key.startswith(native):
            return official + key[len(native):]
    return key


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def load_ecg_jepa_state_dict(encoder: ECGJEPAEncoder, state: Mapping[str, torch.Tensor],
                             source: str = "state dict") -> None:
    """Copy an ECG-JEPA encoder state dict into ``encoder`` after a strict key, shape and value check.

    Accepts the official layout (``W_P``, ``encoder_blocks.blocks.<i>``, ``norm``, ``pos_embed``) or this module's
    own names. Raises :class:`ECGCheckpointError` listing missing, unexpected and mismatched keys; nothing is copied
    unless everything fits.
    """
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    official = any(k.startswith(("W_P.", "encoder_blocks.")) for k in state)
    expected = encoder.state_dict()
    name = native_to_official_key if official else (lambda k: k)
    mapped, unexpected, problems = {}, [], []
    for key, value in state.items():
        if key == "pos_embed":
            continue
        native = official_to_native_key(key) if official else key
        if native is None or native not in expected:
            unexpected.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key}: not a tensor ({type(value).__name__})")
            continue
        mapped[native] = value
    missing = [name(k) for k in expected if k not in mapped]
    mismatched = [f"{name(k)}: checkpoint {tuple(v.shape)}, encoder {tuple(expected[k].shape)}"
                  for k, v in mapped.items() if v.shape != expected[k].shape]
    problems += [f"{name(k)}: contains NaN or infinite values" for k, v in mapped.items()
                 if v.is_floating_point() and not torch.isfinite(v).all()]
    pos = state.get("pos_embed")
    if official and pos is None:
        missing.append("pos_embed")
    elif pos is not None:
        table = encoder.pos_embed
        pos = pos.reshape(pos.shape[-2:]) if pos.ndim == 3 and pos.shape[0] == 1 else pos
        if pos.shape != table.shape:
            mismatched.append(f"pos_embed: checkpoint {tuple(pos.shape)}, encoder {tuple(table.shape)}")
        elif not torch.allclose(pos.float(), table.float(), atol=1e-4):
            diff = (pos.float() - table.float()).abs().max().item()
            problems.append(f"pos_embed: differs from the fixed 2D sin-cos (lead, patch) table (max abs diff "
                            f"{diff:.3g}); the checkpoint was trained with learnable or rotary positions, which "
                            "this encoder does not implement")
    if missing or unexpected or mismatched or problems:
        cfg = encoder.config
        parts = [f"{source} does not fit the ECG encoder (width {cfg.hidden_size}, depth {cfg.num_layers}, "
                 f"{cfg.num_leads} leads x {cfg.num_patches} patches of {cfg.patch_size} samples):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched), ("bad values", problems)):
            if items:
                parts.append(_listing(title, items))
        raise ECGCheckpointError("\n".join(parts))
    encoder.load_state_dict(mapped, strict=True)  # copies into the existing parameters, casting the dtype


def read_ecg_jepa_checkpoint(path: str | Path, key: str = "encoder", trust_pickle: bool = False
                             ) -> dict[str, torch.Tensor]:
    """The encoder state dict stored in an ECG-JEPA checkpoint file.

    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` and their ``[key]`` entry is used (a bare
    state dict is accepted too); ``.safetensors`` files hold the state dict directly. ``trust_pickle`` allows full
    unpickling, for checkpoints that also store Python objects: only for files of trusted origin.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ECG encoder checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # unpickling errors come in several types
        hint = ("; if you trust where this file comes from, allow full unpickling (trust_pickle=True, "
                "CLI --trust-ecg-checkpoint)" if not trust_pickle else "")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ECGCheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({first_line}){hint}") from exc
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
        return dict(obj[key])
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    found = sorted(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
    raise ECGCheckpointError(f"{path}: no '{key}' state dict in the checkpoint (found {found}); the official "
                             f"ECG-JEPA checkpoints store the encoder under '{key}'")


def load_ecg_jepa_checkpoint(encoder: ECGJEPAEncoder, path: str | Path, key: str = "encoder",
                             trust_pickle: bool = False) -> ECGJEPAEncoder:
    """Load official ECG-JEPA weights (``torch.load(path)[key]``) into ``encoder``, strictly checked."""
    state = read_ecg_jepa_checkpoint(path, key=key, trust_pickle=trust_pickle)
    load_ecg_jepa_state_dict(encoder, state, source=f"{path} ['{key}']")
    return encoder
