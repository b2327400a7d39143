"""Advantage estimators (DESIGN.md §3): GRPO, Dr.GRPO, RLOO, DISCO-style scaling as pure functions; DRPO with state."""

from .drpo import (DRPO, MODES, cluster_reward_vectors, kl_damping, kmeans_elbow, kmeans_elbow_many, select_k,
                   temperature)
from .grpo import disco_advantages, disco_weights, group_advantages, group_index, rloo_advantages

__all__ = [
    "DRPO",
    "MODES",
    "cluster_reward_vectors",
    "disco_advantages",
    "disco_weights",
    "group_advantages",
    "group_index",
    "kl_damping",
    "kmeans_elbow",
    "kmeans_elbow_many",
    "rloo_advantages",
    "select_k",
    "temperature",
]
