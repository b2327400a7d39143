"""Clustering of reward vectors for DRPO (paper §3.2): k-means with the elbow rule that picks k.

Two implementations of the same rule: :func:`cluster_reward_vectors` is the released code's scikit-learn search
(reference mode); :func:`kmeans_elbow_many` is a batched numpy k-means (weighted k-means++ seeding, Lloyd for every
k of every domain at once) whose cost stays bounded as the history grows (paper and bounded modes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

__all__ = ["select_k", "cluster_reward_vectors", "kmeans_elbow", "kmeans_elbow_many"]


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
    """The reference code's clustering (§3.2): scikit-learn k-means on the reward vectors ``x`` (Q, G).

    k is searched over ``1..min(k_max, number of distinct vectors)`` with
    ``KMeans(n_init="auto", random_state=seed)`` fitted on every row. Returns (labels (Q,), centroids (k, G)).

    The fits run on one OpenMP thread: these problems are small, so thread start-up costs 20-30x the fit
    itself, and scikit-learn sums the per-thread partial centroids in whatever order the threads finish, so a
    multi-threaded fit of float32 data differs in the last bits from run to run and between machines.
    """
    k_cap = min(k_max, len(np.unique(x, axis=0)))
    if k_cap <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    with threadpool_limits(limits=1, user_api="openmp"):
        fits = [KMeans(n_clusters=k, n_init="auto", random_state=seed).fit(x) for k in range(1, k_cap + 1)]
    km = fits[select_k([f.inertia_ for f in fits], tol) - 1]
    return km.labels_.astype(np.int64), km.cluster_centers_


def _kmeanspp(u: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding of k centres among the distinct rows ``u`` (a prefix is a valid j-seeding)."""
    first = rng.choice(len(u), p=w / w.sum())
    chosen = [first]
    d2 = ((u - u[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = w * d2
        i = rng.choice(len(u), p=p / p.sum())  # rows are distinct and k <= len(u), so p.sum() > 0
        chosen.append(i)
        d2 = np.minimum(d2, ((u - u[i]) ** 2).sum(1))
    return u[chosen]


def _lloyd_all_k(u: np.ndarray, w: np.ndarray, seeds: np.ndarray, max_iter: int = 100,
                 start: np.ndarray | None = None):
    """Weighted Lloyd iterations for D problems and every k = 1..K at once (fit a has k = a + 1 centres).

    ``u`` (D, n, G) rows, ``w`` (D, n) weights (0 for padding), ``seeds`` (D, K, G); fit a of problem d starts
    from ``seeds[d, :a + 1]``. All K * K centres of a problem sit in one matrix, so an iteration is one batched
    matrix product (distances ``|u|^2 - 2 u.c + |c|^2``) and bincounts (weighted cluster sums); a problem whose
    labels stopped changing is at its fixed point and leaves the loop. An empty cluster keeps its centre.
    ``start`` (D, K, K, G), if given, replaces the seeds: fit a starts from ``start[d, a, :a + 1]``.
    Returns labels (D, K, n), centres (D, K, K, G) (slots >= k are padding), inertias (D, K).
    """
    D, n, G = u.shape
    K = seeds.shape[1]
    mask = np.where(np.tri(K, dtype=bool), 0.0, np.inf).reshape(-1)  # centre j belongs to fit a iff j <= a
    c = (np.repeat(seeds[:, None], K, axis=1) if start is None else start).reshape(D, K * K, G).copy()
    u32 = u.astype(np.float32)
    fit_offset = np.arange(K) * K  # bin of (fit, centre 0) within a problem
    wk = np.repeat(w[..., None], K, axis=-1).reshape(D, n * K)  # weight of each (row, fit) label
    uwk = np.repeat((w[..., None] * u)[:, :, None, :], K, axis=2).reshape(D, n * K, G)

    def assign(idx, c_sub):
        # |c|^2 - 2 u.c ranks centres like the full distance (|u|^2 is added back for the inertia); float32
        # is ample to rank distances between rewards in [0, 1] and halves the memory traffic
        d = u32[idx] @ c_sub.astype(np.float32).transpose(0, 2, 1)
        d *= -2.0
        d += ((c_sub**2).sum(-1) + mask).astype(np.float32)[:, None, :]
        return d.reshape(len(idx), n, K, K).argmin(-1)  # labels (len(idx), n, K)

    lab = assign(np.arange(D), c)
    active = np.arange(D)  # problems whose labels still change; the others sit at their fixed point
    for _ in range(max_iter):
        A = len(active)
        bins = ((np.arange(A)[:, None, None] * K * K + fit_offset) + lab[active]).reshape(-1)
        mass = np.bincount(bins, weights=wk[active].reshape(-1), minlength=A * K * K).reshape(A, K * K)
        uw = uwk[active].reshape(-1, G)
        sums = np.stack([np.bincount(bins, weights=uw[:, g], minlength=A * K * K) for g in range(G)], -1)
        sums = sums.reshape(A, K * K, G)
        c[active] = np.where(mass[..., None] > 0, sums / np.maximum(mass, 1e-300)[..., None], c[active])
        new = assign(active, c[active])
        changed = (new != lab[active]).reshape(A, -1).any(1)
        lab[active] = new
        active = active[changed]
        if not len(active):
            break
    chosen = np.take_along_axis(c, (np.arange(K) * K + lab)[..., None].reshape(D, n * K, 1), axis=1)
    dist = ((u[:, :, None, :] - chosen.reshape(D, n, K, G)) ** 2).sum(-1)  # exact, float64
    inertia = (dist * w[..., None]).sum(1)
    return lab.transpose(0, 2, 1), c.reshape(D, K, K, G), inertia


def kmeans_elbow_many(
    xs: Sequence[np.ndarray], *, k_max: int = 10, tol: float = 0.10, seed: int = 0,
    warm: Sequence[np.ndarray | None] | None = None, return_fits: bool = False,
) -> list[tuple]:
    """:func:`kmeans_elbow` on several problems (e.g. one per domain) in one batched computation.

    Each problem is deduplicated and padded to the largest one with zero-weight rows, so a DRPO step costs
    the same whatever the fill of each domain's history: O(domains x history) per Lloyd iteration.

    ``warm[i]``: the centres of every fit from an earlier call on a similar problem (its ``fits`` output,
    shape (k_cap, k_cap, G)); Lloyd starts there instead of from k-means++ seeds when k_cap is unchanged, so
    a slowly changing history converges in a few iterations. ``return_fits`` adds those centres as a third
    element of each result.
    """
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(xs)
    todo = []
    for i, x in enumerate(xs):
        uniq, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
        k_cap = min(k_max, len(uniq))
        if k_cap <= 1:
            single = (np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True))
            out[i] = single + (None,) if return_fits else single
        else:
            todo.append((i, uniq, inverse.reshape(-1), counts.astype(np.float64), k_cap))
    if todo:
        K = max(t[4] for t in todo)
        n = max(len(t[1]) for t in todo)
        G = todo[0][1].shape[1]
        u, w, seeds = np.zeros((len(todo), n, G)), np.zeros((len(todo), n)), np.zeros((len(todo), K, G))
        start = None
        for j, (i, uniq, _, counts, k_cap) in enumerate(todo):
            u[j, : len(uniq)], w[j, : len(uniq)] = uniq, counts
            prev = warm[i] if warm is not None else None
            if prev is not None and prev.shape == (k_cap, k_cap, G):
                if start is None:
                    start = np.repeat(seeds[:, None], K, axis=1)
                start[j, :k_cap, :k_cap] = prev  # fits k > k_cap keep padding and are unused
                continue
            sd = _kmeanspp(uniq, counts, k_cap, np.random.default_rng(seed))
            seeds[j] = np.concatenate([sd, np.repeat(sd[-1:], K - k_cap, axis=0)])  # fits k > k_cap are unused
        if start is not None:  # problems without warm centres start from their seeds
            for j in range(len(todo)):
                if not (warm is not None and warm[todo[j][0]] is not None
                        and warm[todo[j][0]].shape == (todo[j][4], todo[j][4], G)):
                    start[j] = np.repeat(seeds[j][None], K, axis=0)
        labels, centres, inertias = _lloyd_all_k(u, w, seeds, start=start)
        for j, (i, uniq, inverse, _, k_cap) in enumerate(todo):
            k = select_k(inertias[j, :k_cap].tolist(), tol)
            lab = labels[j, k - 1, : len(uniq)]
            used = np.unique(lab)
            remap = np.full(k, -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            res = (remap[lab][inverse], centres[j, k - 1, used])
            out[i] = res + (centres[j, :k_cap, :k_cap].copy(),) if return_fits else res
    return out  # type: ignore[return-value]


def kmeans_elbow(
    x: np.ndarray, *, k_max: int = 10, tol: float = 0.10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Bounded-cost clustering for the paper/bounded modes: same elbow rule, numpy k-means on distinct rows.

    Repeated vectors are merged into one weighted row (reward vectors repeat a lot), k-means++ seeds
    ``min(k_max, distinct)`` centres once (k uses the first k), and Lloyd runs for all k together. Rows are
    deduplicated in sorted order, so the result does not depend on the order of ``x``. Empty clusters are
    dropped. Returns (labels (Q,), centroids (k, G)).
    """
    return kmeans_elbow_many([x], k_max=k_max, tol=tol, seed=seed)[0]
