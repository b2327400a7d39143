"""Experiments built on the training recipe: the estimator comparison (GRPO vs DRPO and baselines) on CLIMB-mini."""

from .compare_estimators import ExperimentConfig, load_experiment_config, run_compare_estimators

__all__ = ["ExperimentConfig", "load_experiment_config", "run_compare_estimators"]
