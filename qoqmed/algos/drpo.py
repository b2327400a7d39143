"""DRPO: domain-aware relative policy optimisation advantages (arXiv 2506.00711; docs/design.md §3, whose
numbering the section marks below follow).

The pure functions below are the equations; :class:`DRPO` holds the per-domain history that the statistics
may span and applies them to one batch. Call it on the *gathered global batch* when training runs in several
processes: the temperatures and the final standard deviation are batch statistics.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from .grpo import group_advantages, group_index
from .kmeans import cluster_reward_vectors, kmeans_elbow_many

__all__ = ["DRPO", "temperature", "kl_damping", "MODES"]

MODES = ("paper", "bounded", "reference")
SCALINGS = ("hierarchical", "domain_only", "cluster_only")
DEFAULT_HISTORY = 256  # bounded mode: questions kept per domain
K_MAX = {"paper": 10, "bounded": 10, "reference": 20}  # the released code searches k up to 20, the paper says 10
_STATE_VERSION = 3


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
    """Stateful DRPO advantage estimator: ``A = DRPO(num_generations, mode=...)(rewards, question_ids, domains)``.

    Steps (§3): (1) GRPO score s per question (unbiased std); (2) per domain, k-means with the elbow rule on
    the question reward vectors; (3) ``s' = m * s / (T_g * T_c)``; (4) optional KL damping m; (5)
    ``A = s' / (std(s') + eps)`` over the whole batch. Only the current batch's questions receive advantages;
    the history only shapes the statistics.

    Modes:

    - ``"paper"``: the equations as written, statistics from the current batch only. ``mu_g`` is the mean
      reward of the domain's questions, ``mu_c`` that of the cluster's questions, both temperatures are
      floored at eps, KL damping uses the ``kl_quantile`` of z.
    - ``"bounded"``: the paper equations with the clustering on the last ``history`` questions of each domain
      (default 256), so rare domains are not judged on one question per step and the cost per step stays flat.
      The counts of the rarity terms come from running totals, as in ``reference`` mode: N_g is every question
      seen for the domain, and a cluster's N_c is its share of the history times N_g. (Counting the history
      instead would give every domain N_g = H once the histories fill, and the rarity scaling would vanish.)
      ``mode="paper", history=H`` is the same thing, kept for older configs.
    - ``"reference"``: the released code. The history is every question ever seen for the domain (cost grows
      with training length); scikit-learn ``KMeans(n_init="auto", random_state=seed)`` with the elbow search is
      refit on all of it every step on the vectors in rollout order; ``mu_g`` is the inverse-cluster-size-weighted
      mean of centroid means; ``mu_c`` the centroid mean; KL damping is off (``kl`` is ignored). The cluster
      temperature has no eps floor, except that one <= 0 (an all-zero-reward cluster, where the released code
      divides by zero) is replaced by eps and counted in ``last_stats[domain]["zero_cluster_guard"]``; that is
      the one deviation from the released code.

    In paper/bounded mode the reward vectors are sorted (rollouts are exchangeable, so the clustering must not
    depend on their order) and clustered with :func:`kmeans_elbow_many` (numpy, all domains and all k in one
    batched computation); ``clusterer="sklearn"`` uses the reference's scikit-learn search instead. With a
    history (bounded mode) and ``warm_start=True`` (default), each domain's k-means starts from its previous
    step's centres instead of fresh k-means++ seeds: the history changes by a few questions per step, so Lloyd
    converges in a few iterations. The centres are part of ``state_dict`` so a resumed run matches.

    ``kl`` (optional): per rollout (length B) or per question (length Q, questions in order of first
    appearance in ``question_ids``).

    Ablations (the paper's Table 3): ``scaling="domain_only"`` drops the cluster term (T_c = 1, rarity only),
    ``"cluster_only"`` the domain term (T_g = 1); ``kl_quantile=None`` is NoKL; ``cluster_cap=c`` bounds the
    within-domain reweighting: each question's cluster factor 1/T_c is clipped to [w/c, w*c], w the domain's
    question-weighted mean of 1/T_c, so one tiny hard cluster cannot dominate its domain (c = 1: no cluster term
    inside a domain beyond its mean). ``k_max`` and ``elbow_tol`` set the elbow search.

    ``last_stats[domain]`` after a call (for logging): ``k``, ``cluster_sizes`` (in the clustered pool), ``T_c``
    and ``mu_c`` per cluster, ``T_g``, ``mu_g``, ``n_questions`` (in this batch), ``n_history`` (questions
    clustered), ``N_g`` (the count in T_g), ``kl_damping`` (mean m, when damping ran), ``zero_cluster_guard``,
    ``mean_abs_scale``: the mean over the domain's rollouts of ``|A / s|`` (the total factor applied to the GRPO
    score) and ``mean_reward``.
    """

    def __init__(
        self,
        num_generations: int,
        *,
        mode: str = "paper",
        history: int | None = None,
        k_max: int | None = None,
        elbow_tol: float = 0.10,
        eps: float = 1e-6,
        kl_quantile: float | None = 0.75,
        seed: int = 0,
        clusterer: str | None = None,
        warm_start: bool = True,
        scaling: str = "hierarchical",
        cluster_cap: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if int(num_generations) < 2:
            raise ValueError(f"num_generations must be >= 2 (a group needs two rollouts), got {num_generations}")
        if mode == "bounded" and history is None:
            history = DEFAULT_HISTORY
        if history is not None and (mode == "reference" or int(history) < 1):
            raise ValueError(f"history={history!r}: a positive int in paper/bounded mode (reference keeps everything)")
        k_max = K_MAX[mode] if k_max is None else k_max
        if int(k_max) < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 <= float(elbow_tol) < 1.0:
            raise ValueError(f"elbow_tol must be in [0, 1), got {elbow_tol}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        if cluster_cap is not None and not float(cluster_cap) >= 1.0:
            raise ValueError(f"cluster_cap must be >= 1 (or None), got {cluster_cap}")
        if kl_quantile is not None and not 0.0 <= kl_quantile <= 1.0:
            raise ValueError(f"kl_quantile must be in [0, 1] or None, got {kl_quantile}")
        clusterer = clusterer or ("sklearn" if mode == "reference" else "numpy")
        if clusterer not in ("numpy", "sklearn") or (mode == "reference" and clusterer != "sklearn"):
            raise ValueError(f"clusterer={clusterer!r}: 'numpy' or 'sklearn' ('sklearn' in reference mode)")
        self.num_generations = int(num_generations)
        self.mode = mode
        self.history = None if history is None else int(history)
        self.k_max = int(k_max)
        self.elbow_tol = float(elbow_tol)
        self.eps = float(eps)
        self.kl_quantile = None if mode == "reference" else kl_quantile
        self.seed = int(seed)
        self.clusterer = clusterer
        self.warm_start = bool(warm_start) and self.history is not None and clusterer == "numpy"
        self.scaling = scaling
        self.cluster_cap = None if cluster_cap is None else float(cluster_cap)
        self._hist: dict[Hashable, np.ndarray] = {}  # domain -> (n, G) reward vectors, oldest first
        self._seen: dict[Hashable, int] = {}  # domain -> questions seen over the whole run (bounded mode's N_g)
        self._centres: dict[Hashable, np.ndarray] = {}  # domain -> last step's centres of every k (warm start)
        self.last_stats: dict[Hashable, dict[str, Any]] = {}

    # ---- input handling -------------------------------------------------------------------------------
    def _validate(self, rewards: Any, question_ids: Sequence[Hashable], domains: Sequence[Hashable]):
        r = torch.as_tensor(rewards).detach().to("cpu", torch.float64)
        if r.dim() != 1:
            raise ValueError(f"rewards must be 1-D (one per rollout), got shape {tuple(r.shape)}")
        qids = question_ids.tolist() if hasattr(question_ids, "tolist") else list(question_ids)
        doms = domains.tolist() if hasattr(domains, "tolist") else list(domains)
        if not len(r) == len(qids) == len(doms):
            raise ValueError(f"lengths differ: {len(r)} rewards, {len(qids)} question ids, {len(doms)} domains")
        if len(r) == 0:
            raise ValueError("empty batch")
        if not torch.isfinite(r).all():
            raise ValueError("rewards contain NaN or inf")
        qidx, quniq = group_index(qids)
        counts = torch.bincount(qidx, minlength=len(quniq))
        bad = torch.nonzero(counts != self.num_generations)
        if len(bad):
            q = int(bad[0])
            raise ValueError(f"question {quniq[q]!r} has {int(counts[q])} rollouts, expected "
                             f"num_generations={self.num_generations}")
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

    def _grpo(self, r: torch.Tensor, qidx: torch.Tensor, n_questions: int) -> torch.Tensor:
        """(1) GRPO score with the unbiased std: float64, or in reference mode float32 as the released code
        computes it (float32 rewards, per-question torch mean and std), so its rounding matches there."""
        if self.mode != "reference":
            return group_advantages(r, qidx, scale=True, unbiased=True, eps=self.eps)
        r32 = r.to(torch.float32)
        groups = r32[torch.argsort(qidx, stable=True)].reshape(n_questions, self.num_generations)
        mean, std = groups.mean(dim=1), groups.std(dim=1)
        return (r32 - mean[qidx]) / (std[qidx] + self.eps)

    # ---- per-domain statistics --------------------------------------------------------------------------
    def _pool(self, domain: Hashable, current: np.ndarray) -> np.ndarray:
        """The questions whose statistics are used: the current batch last, preceded by kept history."""
        if self.mode != "reference" and self.history is None:
            return current
        prev = self._hist.get(domain, np.zeros((0, self.num_generations), current.dtype))
        if self.mode != "reference":
            keep = max(self.history - len(current), 0)  # type: ignore[operator]
            prev = prev[len(prev) - min(keep, len(prev)) :]
        return np.concatenate([prev, current], axis=0).astype(current.dtype)

    def _cluster(self, domains: list[Hashable], pools: list[np.ndarray]) -> list[tuple]:
        """(labels, centroids, centres of every k or None) per domain pool (§3.2)."""
        if self.clusterer == "sklearn":
            return [cluster_reward_vectors(p, k_max=self.k_max, tol=self.elbow_tol, seed=self.seed) + (None,)
                    for p in pools]
        warm = [self._centres.get(d) for d in domains] if self.warm_start else None
        return kmeans_elbow_many(pools, k_max=self.k_max, tol=self.elbow_tol, seed=self.seed, warm=warm,
                                 return_fits=True)

    @staticmethod
    def _counts(labels: np.ndarray, k: int, n_pool: int, n_seen: int | None) -> tuple[np.ndarray, float]:
        """(N_c per cluster, N_g): the question counts of the rarity terms (§3.3).

        Without a running count these are the pool's counts. Bounded mode clusters only the last ``history``
        questions, yet rarity is about every question seen: N_g is the running total and a cluster's N_c its
        share of the history times that total (counting the history would give every full domain N_g = H).
        """
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        if n_seen is None or n_seen <= n_pool:
            return sizes, float(n_pool)
        return sizes * (n_seen / n_pool), float(n_seen)

    def _means(self, pool: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
        """(mu_c per cluster, mu_g): mean rewards of the clusters and of the domain, from the clustered pool."""
        k = len(centroids)
        if self.mode == "reference":
            # released: mu_c the centroid's mean, mu_g the inverse-cluster-size weighted mean of the mu_c
            mu_c = centroids.mean(axis=1)
            sizes = np.bincount(labels, minlength=k)
            w = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1), 0.0)
            return mu_c, float((w * mu_c).sum() / w.sum())
        # paper: plain means over the pool's questions (a share, so the same for pool or running counts)
        mu_c = np.bincount(labels, weights=pool.mean(axis=1), minlength=k) / np.maximum(np.bincount(labels, minlength=k), 1)
        return mu_c, float(pool.mean())

    def _capped(self, t_c: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """T_c with the cluster factor 1/T_c clipped to [m/c, m*c], m the pool's question-weighted mean of 1/T_c."""
        if self.cluster_cap is None:
            return t_c
        inv = 1.0 / t_c
        m = float(inv[labels].mean())
        return 1.0 / np.clip(inv, m / self.cluster_cap, m * self.cluster_cap)

    def _domain_temperatures(self, pool: np.ndarray, n_current: int, labels: np.ndarray, centroids: np.ndarray,
                             n_seen: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """``T_g * T_c`` for the last ``n_current`` rows of ``pool`` (§3.3), and logging stats.

        ``n_seen``: the domain's running question count (bounded mode), see :meth:`_counts`.
        """
        k = len(centroids)
        n_c, n_g = self._counts(labels, k, len(pool), n_seen)
        mu_c, mu_g = self._means(pool, labels, centroids)
        if self.mode == "reference":
            t_c = np.sqrt(n_c) * mu_c  # no eps floor in the released code, which divides by zero when it is 0;
            guarded = t_c <= 0  # we substitute eps and count it
            t_c = np.where(guarded, self.eps, t_c)
        else:
            t_c = np.maximum(np.sqrt(n_c) * mu_c, self.eps)
            guarded = np.zeros(k, dtype=bool)
        t_g = temperature(n_g, mu_g, self.eps)
        if self.scaling == "domain_only":  # ablation: rarity only
            t_c = np.ones(k)
        elif self.scaling == "cluster_only":  # ablation: difficulty clusters only
            t_g = 1.0
        t_c = self._capped(t_c, labels)
        cur = labels[len(pool) - n_current :]
        stats = {
            "k": int(k),
            "cluster_sizes": [float(n) for n in n_c],  # N_c: running-total shares in bounded mode
            "T_c": [float(t) for t in t_c],  # as applied (after the ablation and the cap)
            "mu_c": [float(m) for m in mu_c],
            "T_g": float(t_g),
            "mu_g": float(mu_g),
            "n_questions": int(n_current),
            "n_history": int(len(pool)),  # questions clustered
            "N_g": int(round(n_g)),  # questions the rarity term counts
            "zero_cluster_guard": int(guarded[cur].sum()),
        }
        return t_g * t_c[cur], stats

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

        s = self._grpo(r, qidx, len(quniq))  # (1)

        # Reward vectors (Q, G): rollouts in batch order (reference) or sorted (exchangeable rollouts).
        order = torch.argsort(qidx, stable=True)
        vectors = r[order].reshape(len(quniq), self.num_generations).numpy()
        if self.mode == "reference":
            vectors = vectors.astype(np.float32)  # the released code clusters float32 vectors; ties depend on it
        else:
            vectors = -np.sort(-vectors, axis=1)

        didx, duniq = group_index(qdom)  # domain of each question, domains in order of first appearance
        didx_np = didx.numpy()
        q_temp = np.ones(len(quniq))  # T_g * T_c per question
        stats: dict[Hashable, dict[str, Any]] = {}
        new_hist: dict[Hashable, np.ndarray] = {}
        rows_of = [np.flatnonzero(didx_np == j) for j in range(len(duniq))]
        pools = [self._pool(d, vectors[rows]) for d, rows in zip(duniq, rows_of)]
        clusters = self._cluster(duniq, pools)  # (2)
        new_centres = {}
        new_seen: dict[Hashable, int] = {}
        for d, rows, pool, (labels, centroids, fits) in zip(duniq, rows_of, pools, clusters):  # (3)
            seen = self._seen.get(d, 0) + len(rows)
            n_seen = seen if self.mode != "reference" and self.history is not None else None
            q_temp[rows], stats[d] = self._domain_temperatures(pool, len(rows), labels, centroids, n_seen)
            new_seen[d] = seen
            if self.warm_start and fits is not None:
                new_centres[d] = fits
            if self.mode == "reference":
                new_hist[d] = pool
            elif self.history is not None:
                new_hist[d] = pool[len(pool) - min(len(pool), self.history) :]

        temp = torch.from_numpy(q_temp)[qidx].to(s.dtype)
        scaled = s / temp  # (3) s / (T_g * T_c)
        m = kl_damping(scaled, kl_r, self.kl_quantile) if kl_r is not None else torch.ones_like(scaled)  # (4)
        scaled = m * scaled
        denom = scaled.std() + self.eps  # (5) in the GRPO score's dtype, float32 in reference mode as released
        if kl_r is not None:
            for j, d in enumerate(duniq):
                stats[d]["kl_damping"] = float(m[didx[qidx] == j].mean())
        adv = scaled / denom

        # Diagnostics: per domain, the mean total factor |A / s| and the mean reward.
        rdom = didx[qidx]
        n_rows = torch.bincount(rdom, minlength=len(duniq)).to(torch.float64)
        factor = torch.zeros(len(duniq), dtype=torch.float64).index_add_(
            0, rdom, ((m / temp).abs() / denom).to(torch.float64))
        reward = torch.zeros(len(duniq), dtype=torch.float64).index_add_(0, rdom, r)
        for j, d in enumerate(duniq):
            stats[d]["mean_abs_scale"] = float(factor[j] / n_rows[j])
            stats[d]["mean_reward"] = float(reward[j] / n_rows[j])
        self._hist.update({d: a.copy() for d, a in new_hist.items()})
        self._centres.update(new_centres)
        self._seen.update(new_seen)
        self.last_stats = stats

        src = torch.as_tensor(rewards)
        out_dtype = src.dtype if src.is_floating_point() else torch.float32
        return adv.to(src.device, out_dtype)

    # ---- checkpointing ----------------------------------------------------------------------------------
    _CONFIG_KEYS = ("mode", "num_generations", "history", "k_max", "elbow_tol", "eps", "kl_quantile", "seed",
                    "clusterer", "warm_start", "scaling", "cluster_cap")

    def state_dict(self) -> dict[str, Any]:
        """Plain python / numpy state; restoring it makes later calls return identical advantages."""
        state: dict[str, Any] = {"version": _STATE_VERSION}
        state.update({k: getattr(self, k) for k in self._CONFIG_KEYS})
        state["domains"] = {d: a.copy() for d, a in self._hist.items()}
        state["centres"] = {d: a.copy() for d, a in self._centres.items()}
        state["seen"] = dict(self._seen)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the per-domain history; the configuration must match (it defines the advantages)."""
        for key in self._CONFIG_KEYS:
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"DRPO state has {key}={state[key]!r} but this estimator has {getattr(self, key)!r}")
        hist: dict[Hashable, np.ndarray] = {}
        for d, a in state.get("domains", {}).items():
            arr = np.array(a, dtype=np.float32 if self.mode == "reference" else np.float64)
            if arr.size == 0:
                arr = arr.reshape(0, self.num_generations)
            if arr.ndim != 2 or arr.shape[1] != self.num_generations:
                raise ValueError(f"DRPO state: history of domain {d!r} has shape {arr.shape}, expected "
                                 f"(n, {self.num_generations})")
            hist[d] = arr
        centres = {d: np.array(a, dtype=np.float64) for d, a in state.get("centres", {}).items()}
        for d, a in centres.items():
            if a.ndim != 3 or a.shape[0] != a.shape[1] or a.shape[2] != self.num_generations:
                raise ValueError(f"DRPO state: centres of domain {d!r} have shape {a.shape}, expected (k, k, "
                                 f"{self.num_generations})")
        # version-2 states kept no running count: the history length is the best estimate of it
        seen = {d: int(n) for d, n in state.get("seen", {d: len(a) for d, a in hist.items()}).items()}
        self._hist, self._centres, self._seen = hist, centres, seen
