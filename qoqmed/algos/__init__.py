"""Advantage estimators (docs/design.md §3): GRPO, Dr.GRPO, RLOO, DISCO-style scaling as pure functions; DRPO with
state; the k-means with the elbow rule that DRPO clusters with."""

from .drpo import DRPO, MODES, kl_damping, temperature
from .grpo import disco_advantages, disco_weights, group_advantages, group_index, rloo_advantages
from .kmeans import cluster_reward_vectors, kmeans_elbow, kmeans_elbow_many, select_k

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
