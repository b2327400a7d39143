"""Evaluation: per-label, dataset, domain and overall metrics, and reports."""

from .metrics import compute_metrics, confusion_matrix_single_label
from .report import format_metrics_table, print_summary, write_report

__all__ = ["compute_metrics", "confusion_matrix_single_label", "format_metrics_table", "print_summary", "write_report"]
