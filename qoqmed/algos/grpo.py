"""Group-relative advantages (GRPO, Dr.GRPO), DESIGN.md §3 step 1."""

from __future__ import annotations

from typing import Hashable, Sequence

import torch

__all__ = ["group_index", "group_advantages"]


def group_index(group_ids: Sequence[Hashable]) -> tuple[torch.Tensor, list[Hashable]]:
    """Map ids to ``0..n_groups-1`` in order of first appearance: (index per row, the distinct ids)."""
    ids = group_ids.tolist() if hasattr(group_ids, "tolist") else list(group_ids)
    pos: dict[Hashable, int] = {}
    idx = [pos.setdefault(g, len(pos)) for g in ids]
    return torch.tensor(idx, dtype=torch.long), list(pos)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    *,
    scale: bool = True,
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``s_{q,i} = (r_{q,i} - mean_q) / (std_q + eps)`` (DESIGN.md §3.1); ``scale=False`` drops the division (Dr.GRPO).

    Rows with equal ``group_ids`` form a group wherever they sit in the batch. ``std_q`` uses the n-1
    estimator when ``unbiased``. Groups of one rollout and non-finite rewards raise ``ValueError``.
    Returns a tensor shaped like ``rewards`` (floating dtype kept, else float32).
    """
    r = torch.as_tensor(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(r.shape)}")
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    r64 = r.detach().to("cpu", torch.float64)
    if not torch.isfinite(r64).all():
        raise ValueError("rewards contain NaN or inf")
    idx, uniq = group_index(group_ids)
    if len(idx) != len(r64):
        raise ValueError(f"{len(r64)} rewards but {len(idx)} group ids")
    n = torch.bincount(idx, minlength=len(uniq)).to(torch.float64)
    if len(n) and n.min() < 2:
        bad = uniq[int(torch.argmin(n))]
        raise ValueError(f"group {bad!r} has a single rollout; group-relative advantages need at least 2")
    mean = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, idx, r64) / n
    centred = r64 - mean[idx]
    if not scale:
        return centred.to(r.device, out_dtype)
    ss = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, idx, centred**2)
    std = torch.sqrt(ss / (n - 1 if unbiased else n))
    return (centred / (std[idx] + eps)).to(r.device, out_dtype)
