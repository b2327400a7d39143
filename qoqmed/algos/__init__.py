"""Advantage estimators: GRPO / Dr.GRPO as pure functions, DRPO with its per-domain state (DESIGN.md §3)."""

from .drpo import DRPO, cluster_reward_vectors, kl_damping, select_k, temperature
from .grpo import group_advantages, group_index

__all__ = [
    "DRPO",
    "cluster_reward_vectors",
    "group_advantages",
    "group_index",
    "kl_damping",
    "select_k",
    "temperature",
]
