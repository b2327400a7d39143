"""What determines a CLIMB-mini build: :class:`ClimbMiniConfig`, the only home of its defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..domains import DOMAINS

CLIMB_MINI_VERSION = 2

# Train mix: the paper's skew (CLIMB: one CT dataset is about 68% of rows, the smallest ultrasound set 99 of 2.61M):
# one dominant domain, a few mid-sized ones and three under 1%. ``min_per_domain`` still guarantees every domain a
# few rows, so at small sizes the rare domains come out slightly above their weight (the datasheet has the counts).
DEFAULT_TRAIN_WEIGHTS: dict[str, float] = {
    "ct": 0.61,
    "chest_xray": 0.15,
    "ecg": 0.10,
    "dermoscopy": 0.05,
    "fundus": 0.04,
    "pathology": 0.03,
    "mammography": 0.008,
    "mri": 0.007,
    "ultrasound": 0.005,
}


@dataclass
class ClimbMiniConfig:
    """Everything that determines a CLIMB-mini build (with the version, the output is a function of this); the
    only home of its defaults, which generate_climb_mini and the recipe's data.synthetic section use."""

    n_train: int = 800
    n_val: int = 144
    n_test: int = 144
    seed: int = 0
    domain_weights: Mapping[str, float] | None = None  # train mix; None: DEFAULT_TRAIN_WEIGHTS
    eval_domain_weights: Mapping[str, float] | None = None  # val/test mix; None: equal per domain
    image_size: int = 112  # 2D images and ultrasound frames (square, multiple of 28)
    volume_size: int = 56  # CT/MRI slices (square, multiple of 28)
    volume_slices: int = 4
    ultrasound_frames: int = 2
    min_per_domain: int = 4  # rows per domain in every split, whatever the weights
    hard_fraction: float = 0.3
    multi_label_prob: float = 0.3  # chest X-ray: chance that an abnormal row has a second finding

    def train_weights(self) -> dict[str, float]:
        return dict(self.domain_weights) if self.domain_weights is not None else dict(DEFAULT_TRAIN_WEIGHTS)

    def eval_weights(self) -> dict[str, float]:
        return dict(self.eval_domain_weights) if self.eval_domain_weights is not None else {d: 1.0 for d in DOMAINS}

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.min_per_domain < 1:
            raise ValueError(f"min_per_domain must be >= 1, got {self.min_per_domain}")
        for name in ("n_train", "n_val", "n_test"):
            n, need = getattr(self, name), len(DOMAINS) * self.min_per_domain
            if not isinstance(n, int) or n < need:
                raise ValueError(f"{name}={n!r} is too small: {len(DOMAINS)} domains x min_per_domain="
                                 f"{self.min_per_domain} needs at least {need}")
        for name in ("image_size", "volume_size"):
            size = getattr(self, name)
            if not isinstance(size, int) or size < 56 or size % 28:
                raise ValueError(f"{name}={size!r} must be a multiple of 28 and at least 56")
        for name in ("volume_slices", "ultrasound_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("hard_fraction", "multi_label_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("domain_weights", "eval_domain_weights"):
            if getattr(self, name) is not None:
                _check_weights(getattr(self, name), name)


def _check_weights(weights: Mapping[str, float], name: str) -> None:
    unknown = sorted(set(weights) - set(DOMAINS))
    if unknown:
        raise ValueError(f"{name}: unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    for domain, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name}[{domain!r}] must be a finite number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{name}: weights sum to 0")
