"""Group-relative advantages: GRPO, Dr.GRPO (docs/design.md §3 step 1), RLOO and DISCO-style reward scaling.

Every function takes one reward per rollout and the id of the question (group) each rollout answers; a group's
rollouts may sit anywhere in the batch. They are pure: same inputs, same outputs, no state.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["group_index", "group_advantages", "rloo_advantages", "disco_weights", "disco_advantages"]


def group_index(group_ids: Sequence[Hashable]) -> tuple[torch.Tensor, list[Hashable]]:
    """Map ids to ``0..n_groups-1`` in order of first appearance: (index per row, the distinct ids)."""
    ids = group_ids.tolist() if hasattr(group_ids, "tolist") else list(group_ids)
    pos: dict[Hashable, int] = {}
    idx = [pos.setdefault(g, len(pos)) for g in ids]
    return torch.tensor(idx, dtype=torch.long), list(pos)


def _grouped(rewards, group_ids) -> tuple[torch.Tensor, torch.Tensor, list[Hashable], torch.Tensor, torch.dtype]:
    """Validated float64 rewards, group index per row, distinct ids, rollouts per group, output dtype."""
    r = torch.as_tensor(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per rollout), got shape {tuple(r.shape)}")
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
    return r64, idx, uniq, n, out_dtype


def _group_sum(x: torch.Tensor, idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=x.dtype).index_add_(0, idx, x)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    *,
    scale: bool = True,
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``s_{q,i} = (r_{q,i} - mean_q) / (std_q + eps)`` (docs/design.md §3.1); ``scale=False`` drops the division
    (Dr.GRPO).

    ``std_q`` uses the n-1 estimator when ``unbiased``. Groups of one rollout and non-finite rewards raise
    ``ValueError``. Returns a tensor shaped like ``rewards`` (floating dtype kept, else float32).
    """
    r, idx, uniq, n, out_dtype = _grouped(rewards, group_ids)
    mean = _group_sum(r, idx, len(uniq)) / n
    centred = r - mean[idx]
    if not scale:
        return centred.to(torch.as_tensor(rewards).device, out_dtype)
    std = torch.sqrt(_group_sum(centred**2, idx, len(uniq)) / (n - 1 if unbiased else n))
    return (centred / (std[idx] + eps)).to(torch.as_tensor(rewards).device, out_dtype)


def rloo_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable]) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_{q,i} = r_{q,i} - mean_{j != i} r_{q,j}`` (Ahmadian et al. 2024).

    Equals ``G / (G - 1) * (r_{q,i} - mean_q)``: the baseline of a rollout never contains its own reward.
    """
    r, idx, uniq, n, out_dtype = _grouped(rewards, group_ids)
    total = _group_sum(r, idx, len(uniq))
    baseline = (total[idx] - r) / (n[idx] - 1)
    return (r - baseline).to(torch.as_tensor(rewards).device, out_dtype)


def disco_weights(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    domains: Sequence[Hashable],
    *,
    domain_counts: Mapping[Hashable, float] | None = None,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-rollout (domain weight, difficulty weight) of DISCO-style scaling (Zhou et al. 2025, arXiv 2505.15074).

    - domain: ``w_dom(g) = 1 / log(1 + N_g)`` with ``N_g`` the domain's question count (``domain_counts``, e.g.
      the training set's, else the questions of this batch), so rare domains weigh more; ``N_g = 0`` counts as 1.
    - difficulty: ``w_diff(q) = exp(tau * (1 - SC_q))`` with the self-consistency ``SC_q`` the share of the
      question's rollouts that got its most frequent reward value; prompts the policy answers inconsistently
      (uncertain, learnable) weigh more. ``SC_q`` stands in for answer agreement, as our rewards are scalar.
    """
    r, idx, uniq, _, _ = _grouped(rewards, group_ids)
    doms = domains.tolist() if hasattr(domains, "tolist") else list(domains)
    if len(doms) != len(r):
        raise ValueError(f"{len(r)} rewards but {len(doms)} domains")
    qdom: dict[int, Hashable] = {}
    for q, d in zip(idx.tolist(), doms):
        if qdom.setdefault(q, d) != d:
            raise ValueError(f"question {uniq[q]!r} appears under domains {qdom[q]!r} and {d!r}")
    if domain_counts is None:
        counts: dict[Hashable, float] = {}
        for d in qdom.values():
            counts[d] = counts.get(d, 0) + 1
    else:
        missing = sorted({str(d) for d in qdom.values() if d not in domain_counts})
        if missing:
            raise ValueError(f"domain_counts has no entry for domain(s) {missing}")
        counts = dict(domain_counts)
    w_dom = torch.tensor([1.0 / math.log(1.0 + max(float(counts[d]), 1.0)) for d in doms], dtype=torch.float64)
    # SC_q: longest run of equal rewards once the rollouts are sorted by (question, reward), over the group size
    rn, qn = r.numpy(), idx.numpy()
    order = np.lexsort((rn, qn))
    rs, qs = rn[order], qn[order]
    starts = np.flatnonzero(np.r_[True, (qs[1:] != qs[:-1]) | (rs[1:] != rs[:-1])])
    runs = np.diff(np.r_[starts, len(rs)])
    longest = np.zeros(len(uniq))
    np.maximum.at(longest, qs[starts], runs)
    sc = torch.from_numpy(longest / np.bincount(qn, minlength=len(uniq)))
    w_diff = torch.exp(tau * (1.0 - sc))[idx]
    return w_dom, w_diff


def disco_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    domains: Sequence[Hashable],
    *,
    domain_counts: Mapping[Hashable, float] | None = None,
    tau: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """DISCO-style advantage ``A = w_dom(g) * w_diff(q) * s_{q,i}``, ``s`` the GRPO score (see :func:`disco_weights`).

    The weights multiply the normalised score, not the raw reward: a per-question factor on the reward would
    cancel in the GRPO std division.
    """
    s = group_advantages(rewards, group_ids, eps=eps).to(torch.float64)
    w_dom, w_diff = disco_weights(rewards, group_ids, domains, domain_counts=domain_counts, tau=tau)
    src = torch.as_tensor(rewards)
    return (w_dom * w_diff * s).to(src.device, src.dtype if src.is_floating_point() else torch.float32)
