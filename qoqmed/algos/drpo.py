"""DRPO: domain-aware relative policy optimisation advantages (DESIGN.md §3, arXiv 2506.00711).

The pure functions below are the equations; :class:`DRPO` holds the per-domain history that the
statistics may span and applies them to one batch. Call it on the *gathered global batch* when training
runs in several processes: the temperatures and the final standard deviation are batch statistics.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans

from .grpo import group_advantages, group_index

__all__ = ["DRPO", "select_k", "cluster_reward_vectors", "temperature", "kl_damping"]

_MODES = ("paper", "reference")
_STATE_VERSION = 1


def select_k(inertias: Sequence[float], tol: float = 0.10) -> int:
    """Elbow rule (§3.2): with ``D_k = I_{k-1} - I_k``, the first k with ``D_{k+1} < tol * D_k``, else k_max.

    ``inertias[j]`` is ``I_{j+1}``; k_max is ``len(inertias)``. The first candidate is k = 2 (it needs D_2 and
    D_3), so k = 1 only when k_max = 1, as in the reference code.
    """
    k_max = len(inertias)
    if k_max <= 1:
        return 1

    def drop(k: int) -> float:
        return inertias[k - 2] - inertias[k - 1]

    for k in range(2, k_max):
        if drop(k + 1) < tol * drop(k):
            return k
    return k_max


def cluster_reward_vectors(
    x: np.ndarray, *, k_max: int = 10, tol: float = 0.10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on question reward vectors ``x`` (Q, G) with k from :func:`select_k` (§3.2).

    k is searched over ``1..min(k_max, number of distinct vectors)`` with
    ``KMeans(n_init="auto", random_state=seed)``. Returns (labels (Q,), centroids (k, G)).
    """
    k_cap = min(k_max, len(np.unique(x, axis=0)))
    if k_cap <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    fits = [KMeans(n_clusters=k, n_init="auto", random_state=seed).fit(x) for k in range(1, k_cap + 1)]
    km = fits[select_k([f.inertia_ for f in fits], tol) - 1]
    return km.labels_.astype(np.int64), km.cluster_centers_


def temperature(n: float, mu: float, eps: float | None) -> float:
    """``T = max(sqrt(N) * mu, eps)`` (§3.3); ``eps=None`` gives the unfloored ``sqrt(N) * mu``."""
    t = math.sqrt(n) * mu
    return t if eps is None else max(t, eps)


def kl_damping(scaled: torch.Tensor, kl: torch.Tensor, q: float) -> torch.Tensor:
    """``m = t / (t + z)`` with ``z = |s'| * KL`` and ``t`` the batch q-quantile of z (§3.4).

    Negative KL estimates give z = 0 (no damping, never amplification); t = 0 gives m = 1.
    """
    z = (scaled.abs() * kl).clamp_min(0.0)
    t = torch.quantile(z, q)
    if t <= 0:
        return torch.ones_like(z)
    return t / (t + z)


class DRPO:
    """Stateful DRPO advantage estimator: ``A = DRPO(num_generations)(rewards, question_ids, domains)``.

    Steps (§3): (1) GRPO score s per question; (2) per domain, k-means with the elbow rule on the question
    reward vectors (the G rewards in rollout order); (3) ``s' = m * s / (T_g * T_c)``; (4) optional KL damping
    m; (5) ``A = s' / (std(s') + eps)`` over the whole batch. Only the current batch's questions receive
    advantages; the history only shapes the statistics.

    ``mode="paper"``: statistics from the current batch, or, with ``history=H``, from the last H questions
    of each domain (bounded cost); ``mu_g`` is the plain mean reward of those questions, ``mu_c`` the mean
    reward of the cluster's questions, and both temperatures are floored at eps.

    ``mode="reference"`` mirrors the released code: the history is every question ever seen for the domain
    (cost grows with training length), k-means is refit on all of it every step, ``mu_g`` is the
    inverse-cluster-size-weighted mean of centroid means, ``mu_c`` the centroid mean, and KL damping is off
    (``kl`` is ignored). The cluster temperature has no eps floor, except that a cluster temperature
    <= 0 (an all-zero-reward cluster, where the released code divides by zero) is replaced by eps and
    counted in ``last_stats[domain]["zero_cluster_guard"]``; that is the one deviation from the released
    code. When a question id reappears, its current row's cluster is used (the released code used the
    id's first row; identical when ids are unique over the run).

    ``kl`` (optional): per rollout (length B) or per question (length Q, questions in order of first
    appearance in ``question_ids``).

    ``last_stats[domain]`` after a call: ``k``, ``cluster_sizes``, ``T_g``, ``mu_g``, ``n_questions`` (in this
    batch), ``n_history`` (N_g), ``zero_cluster_guard`` and ``mean_abs_scale``, the mean over the domain's
    rollouts of ``|A / s|`` (the total factor applied to the GRPO score).
    """

    def __init__(
        self,
        num_generations: int,
        *,
        mode: str = "paper",
        history: int | None = None,
        k_max: int = 10,
        elbow_tol: float = 0.10,
        eps: float = 1e-6,
        kl_quantile: float | None = 0.75,
        seed: int = 0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if int(num_generations) < 2:
            raise ValueError(f"num_generations must be >= 2, got {num_generations}")
        if history is not None and (mode == "reference" or int(history) < 1):
            raise ValueError("history must be a positive int in paper mode (reference mode keeps everything)")
        if int(k_max) < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if kl_quantile is not None and not 0.0 <= kl_quantile <= 1.0:
            raise ValueError(f"kl_quantile must be in [0, 1] or None, got {kl_quantile}")
        self.num_generations = int(num_generations)
        self.mode = mode
        self.history = None if history is None else int(history)
        self.k_max = int(k_max)
        self.elbow_tol = float(elbow_tol)
        self.eps = float(eps)
        self.kl_quantile = None if mode == "reference" else kl_quantile
        self.seed = int(seed)
        self._hist: dict[Hashable, np.ndarray] = {}  # domain -> (n, G) reward vectors
        self.last_stats: dict[Hashable, dict[str, Any]] = {}

    # ---- input handling -------------------------------------------------------------------------------
    def _validate(
        self, rewards: Any, question_ids: Sequence[Hashable], domains: Sequence[Hashable]
    ) -> tuple[torch.Tensor, torch.Tensor, list[Hashable], list[Hashable]]:
        r = torch.as_tensor(rewards).detach().to("cpu", torch.float64)
        if r.dim() != 1:
            raise ValueError(f"rewards must be 1-D (one per rollout), got shape {tuple(r.shape)}")
        qids = question_ids.tolist() if hasattr(question_ids, "tolist") else list(question_ids)
        doms = domains.tolist() if hasattr(domains, "tolist") else list(domains)
        if not len(r) == len(qids) == len(doms):
            raise ValueError(f"lengths differ: {len(r)} rewards, {len(qids)} question ids, {len(doms)} domains")
        if len(r) == 0:
            raise ValueError("empty batch")
        if torch.isnan(r).any() or torch.isinf(r).any():
            raise ValueError("rewards contain NaN or inf")
        qidx, quniq = group_index(qids)
        counts = torch.bincount(qidx, minlength=len(quniq))
        for q, c in zip(quniq, counts.tolist()):
            if c != self.num_generations:
                raise ValueError(f"question {q!r} has {c} rollouts, expected num_generations={self.num_generations}")
        qdom: list[Hashable] = [None] * len(quniq)
        seen = [False] * len(quniq)
        for i, d in zip(qidx.tolist(), doms):
            if not seen[i]:
                qdom[i], seen[i] = d, True
            elif qdom[i] != d:
                raise ValueError(f"question {quniq[i]!r} appears under domains {qdom[i]!r} and {d!r}")
        return r, qidx, quniq, qdom

    def _kl_per_rollout(self, kl: Any, qidx: torch.Tensor, n_questions: int) -> torch.Tensor:
        k = torch.as_tensor(kl).detach().to("cpu", torch.float64).reshape(-1)
        if not torch.isfinite(k).all():
            raise ValueError("kl contains NaN or inf")
        if len(k) == len(qidx):
            return k
        if len(k) == n_questions:
            return k[qidx]
        raise ValueError(
            f"kl must have one value per rollout ({len(qidx)}) or per question ({n_questions}), got {len(k)}"
        )

    # ---- per-domain statistics --------------------------------------------------------------------------
    def _pool(self, domain: Hashable, current: np.ndarray) -> np.ndarray:
        """The questions whose statistics are used: the current batch last, preceded by kept history."""
        if self.mode == "paper" and self.history is None:
            return current
        prev = self._hist.get(domain, np.zeros((0, self.num_generations)))
        if self.mode == "paper":
            keep = max(self.history - len(current), 0)  # type: ignore[operator]
            prev = prev[max(len(prev) - keep, 0) :] if keep else prev[:0]
        return np.concatenate([prev, current], axis=0)

    def _domain_scales(self, pool: np.ndarray, n_current: int) -> tuple[np.ndarray, dict[str, Any]]:
        """``1 / (T_g * T_c)`` for the last ``n_current`` rows of ``pool`` (§3.3), and logging stats."""
        labels, centroids = cluster_reward_vectors(pool, k_max=self.k_max, tol=self.elbow_tol, seed=self.seed)
        k = len(centroids)
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        n_g = float(len(pool))
        if self.mode == "paper":
            mu_g = float(pool.mean())
            mu_c = np.array([pool[labels == c].mean() if sizes[c] else 0.0 for c in range(k)])
            t_c = np.array([temperature(sizes[c], mu_c[c], self.eps) for c in range(k)])
            guarded = np.zeros(k, dtype=bool)
        else:
            mu_c = centroids.mean(axis=1)
            w = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1.0), 0.0)
            mu_g = float((w * mu_c).sum() / w.sum())
            t_c = np.array([temperature(sizes[c], mu_c[c], None) for c in range(k)])
            guarded = t_c <= 0
            t_c = np.where(guarded, self.eps, t_c)
        t_g = temperature(n_g, mu_g, self.eps)
        cur = labels[len(pool) - n_current :]
        stats = {
            "k": int(k),
            "cluster_sizes": [int(s) for s in sizes],
            "T_g": float(t_g),
            "mu_g": float(mu_g),
            "n_questions": int(n_current),
            "n_history": int(n_g),
            "zero_cluster_guard": int(guarded[cur].sum()),
        }
        return 1.0 / (t_g * t_c[cur]), stats

    # ---- main -------------------------------------------------------------------------------------------
    def __call__(
        self,
        rewards: torch.Tensor | Sequence[float],
        question_ids: Sequence[Hashable],
        domains: Sequence[Hashable],
        kl: torch.Tensor | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """One advantage per rollout, on the device of ``rewards`` (its floating dtype, else float32)."""
        r, qidx, quniq, qdom = self._validate(rewards, question_ids, domains)
        kl_r = None
        if kl is not None and self.kl_quantile is not None:
            kl_r = self._kl_per_rollout(kl, qidx, len(quniq))

        s = group_advantages(r, qidx.tolist(), scale=True, unbiased=True, eps=self.eps)  # (1)

        # Reward vectors (Q, G), rollouts in batch order within each question.
        order = torch.argsort(qidx, stable=True)
        vectors = r[order].reshape(len(quniq), self.num_generations).numpy()

        q_scale = np.zeros(len(quniq))
        stats: dict[Hashable, dict[str, Any]] = {}
        new_hist: dict[Hashable, np.ndarray] = {}
        for d in dict.fromkeys(qdom):  # (2)-(3), domains in order of first appearance
            rows = np.array([i for i, qd in enumerate(qdom) if qd == d])
            pool = self._pool(d, vectors[rows])
            q_scale[rows], stats[d] = self._domain_scales(pool, len(rows))
            if self.mode == "reference":
                new_hist[d] = pool
            elif self.history is not None:
                new_hist[d] = pool[len(pool) - min(len(pool), self.history) :]

        scale = torch.from_numpy(q_scale)[qidx]
        scaled = s * scale
        m = kl_damping(scaled, kl_r, self.kl_quantile) if kl_r is not None else torch.ones_like(scaled)  # (4)
        scaled = m * scaled
        denom = scaled.std() + self.eps  # (5)
        adv = scaled / denom

        total = (m * scale).abs() / denom
        for d, st in stats.items():
            rows = torch.tensor([qdom[i] == d for i in qidx.tolist()])
            st["mean_abs_scale"] = float(total[rows].mean())
        self._hist.update({d: a.copy() for d, a in new_hist.items()})
        self.last_stats = stats

        src = torch.as_tensor(rewards)
        out_dtype = src.dtype if src.is_floating_point() else torch.float32
        return adv.to(src.device, out_dtype)

    # ---- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain python / numpy state; restoring it makes later calls return identical advantages."""
        return {
            "version": _STATE_VERSION,
            "mode": self.mode,
            "num_generations": self.num_generations,
            "history": self.history,
            "k_max": self.k_max,
            "elbow_tol": self.elbow_tol,
            "eps": self.eps,
            "kl_quantile": self.kl_quantile,
            "seed": self.seed,
            "domains": {d: a.copy() for d, a in self._hist.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the per-domain history; the configuration must match (it defines the advantages)."""
        for key in ("mode", "num_generations", "history", "k_max", "elbow_tol", "eps", "kl_quantile", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]!r} but this DRPO has {getattr(self, key)!r}")
        hist: dict[Hashable, np.ndarray] = {}
        for d, a in state.get("domains", {}).items():
            arr = np.array(a, dtype=np.float64)
            if arr.size == 0:
                arr = arr.reshape(0, self.num_generations)
            if arr.ndim != 2 or arr.shape[1] != self.num_generations:
                raise ValueError(f"history of domain {d!r} has shape {arr.shape}, expected (n, {self.num_generations})")
            hist[d] = arr
        self._hist = hist
