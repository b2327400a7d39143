"""Data: the record schema, file readers and the synthetic CLIMB-mini benchmark."""

from .readers import load_ecg, load_image, load_mask
from .schema import (
    DIFFICULTIES,
    DOMAINS,
    SPLITS,
    Box,
    DataError,
    Record,
    load_records,
    parse_record,
    split_labels,
    write_records,
)
from .synthetic import LABELS, ClimbMiniConfig, generate_climb_mini, simulate_ecg

__all__ = [
    "DIFFICULTIES",
    "DOMAINS",
    "LABELS",
    "SPLITS",
    "Box",
    "ClimbMiniConfig",
    "DataError",
    "Record",
    "generate_climb_mini",
    "load_ecg",
    "load_image",
    "load_mask",
    "load_records",
    "parse_record",
    "simulate_ecg",
    "split_labels",
    "write_records",
]
