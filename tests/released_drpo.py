"""The released QoQ-Med DRPO advantage, re-derived for parity tests (not library code).

Behaviour reproduced, as read from the released training code (a verl fork, ``compute_drpo_outcome_advantage``):
per-domain history of every question's reward vector as float32, kept for the whole run; GRPO score per question in
float32 with the unbiased std; per domain, scikit-learn ``KMeans(n_init="auto", random_state=0)`` with the elbow
search over k = 1..min(20, distinct vectors) refit on the whole history; the domain mean is the inverse-cluster-size
weighted mean of the centroid means; the factor is ``max(sqrt(N_d) mu_d, eps) * sqrt(N_c) * mu_c`` (no floor on the
cluster part); the scores are divided by it and then by their float32 std + eps.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from sklearn.cluster import KMeans


def _elbow(x: np.ndarray, k_max: int, tol: float = 0.10) -> int:
    cap = min(k_max, len(np.unique(x, axis=0)))
    inertias = [KMeans(n_clusters=k, n_init="auto", random_state=0).fit(x).inertia_ for k in range(1, cap + 1)]
    if len(inertias) == 1:
        return 1
    drops = -np.diff(inertias)
    for i in range(1, len(drops)):
        if drops[i] < tol * drops[i - 1]:
            return i + 1
    return cap


class ReleasedDRPO:
    def __init__(self, k_max: int = 20, eps: float = 1e-6):
        self.k_max, self.eps = k_max, eps
        self.vectors: dict = defaultdict(list)
        self.qids: dict = defaultdict(list)

    def __call__(self, scores: torch.Tensor, index: list, domains: list) -> torch.Tensor:
        scores = scores.to(torch.float32)
        per_q: dict = defaultdict(list)
        dom_of = {}
        for i, q in enumerate(index):
            per_q[q].append(scores[i].item())
            dom_of[q] = domains[i]
        for q, v in per_q.items():
            self.vectors[dom_of[q]].append(np.asarray(v, dtype=np.float32))
            self.qids[dom_of[q]].append(q)
        out = scores.clone()
        mean = {q: torch.mean(torch.tensor(v)) for q, v in per_q.items()}
        std = {q: torch.std(torch.tensor(v)) for q, v in per_q.items()}
        for i, q in enumerate(index):
            out[i] = (out[i] - mean[q]) / (std[q] + self.eps)
        fits = {}
        for d in set(domains):
            x = np.stack(self.vectors[d])
            km = KMeans(n_clusters=_elbow(x, self.k_max), n_init="auto", random_state=0).fit(x)
            _, counts = np.unique(km.labels_, return_counts=True)
            counts = counts.astype(float)
            cmeans = km.cluster_centers_.mean(axis=1)
            w = 1.0 / counts
            fits[d] = (km, counts, float((w * cmeans).sum() / w.sum()))
        for i, q in enumerate(index):
            d = dom_of[q]
            km, counts, mu_d = fits[d]
            c = km.labels_[self.qids[d].index(q)]
            t_d = max(math.sqrt(len(self.vectors[d])) * mu_d, self.eps)
            out[i] = out[i] / (t_d * math.sqrt(counts[c]) * float(km.cluster_centers_[c].mean()))
        return out / (torch.std(out) + self.eps)
