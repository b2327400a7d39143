"""Experiments built on the training recipe: the estimator comparison (GRPO vs DRPO and baselines) on CLIMB-mini."""

from .compare_estimators import report_compare_estimators, run_compare_estimators
from .config import ExperimentConfig, load_experiment_config

__all__ = ["ExperimentConfig", "load_experiment_config", "report_compare_estimators", "run_compare_estimators"]
