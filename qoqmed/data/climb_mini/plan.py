"""Which rows a CLIMB-mini build holds (domain, labels, difficulty, id), fixed before anything is drawn."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..domains import DOMAINS
from ..schema import SPLITS
from .config import ClimbMiniConfig
from .domains import DOMAIN_SPECS


@dataclass(frozen=True)
class PlannedRow:
    domain: str
    number: int
    split: str
    labels: tuple[str, ...]
    hard: bool

    @property
    def id(self) -> str:
        return f"{self.domain}-{self.number:06d}"


def allocate(n: int, weights: Mapping[str, float], min_per_domain: int) -> dict[str, int]:
    """Rows per domain: ``min_per_domain`` each, the rest split by weight (largest remainder, ties by order)."""
    total = float(sum(weights.get(d, 0.0) for d in DOMAINS))
    rest = n - min_per_domain * len(DOMAINS)
    if rest < 0:
        raise ValueError(f"n={n} cannot give {min_per_domain} rows to each of {len(DOMAINS)} domains")
    shares = [rest * weights.get(d, 0.0) / total for d in DOMAINS]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(DOMAINS)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: rest - sum(counts)]:
        counts[i] += 1
    return {d: min_per_domain + c for d, c in zip(DOMAINS, counts)}


def _labels_for(domain: str, count: int, cfg: ClimbMiniConfig, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Balanced labels for ``count`` rows of a domain (chest X-ray may add a second finding)."""
    spec = DOMAIN_SPECS[domain]
    primary = rng.permutation(np.arange(count) % len(spec.labels))
    out: list[tuple[str, ...]] = []
    for k in primary:
        chosen = {int(k)}
        if spec.multi_label and spec.labels[k] != spec.normal and rng.random() < cfg.multi_label_prob:
            others = [i for i, lab in enumerate(spec.labels) if i != k and lab != spec.normal]
            chosen.add(int(rng.choice(others)))
        out.append(tuple(spec.labels[i] for i in sorted(chosen)))
    return out


def plan_rows(cfg: ClimbMiniConfig) -> dict[str, list[PlannedRow]]:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    train_w, eval_w = cfg.train_weights(), cfg.eval_weights()
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    next_number = {d: 0 for d in DOMAINS}
    plan: dict[str, list[PlannedRow]] = {}
    for split in SPLITS:
        counts = allocate(sizes[split], train_w if split == "train" else eval_w, cfg.min_per_domain)
        items: list[PlannedRow] = []
        for domain in DOMAINS:
            n = counts[domain]
            labels = _labels_for(domain, n, cfg, rng)
            hard = np.zeros(n, dtype=bool)
            hard[rng.permutation(n)[: int(round(cfg.hard_fraction * n))]] = True
            for k in range(n):
                items.append(PlannedRow(domain, next_number[domain], split, labels[k], bool(hard[k])))
                next_number[domain] += 1
        plan[split] = [items[i] for i in rng.permutation(len(items))]
    return plan
