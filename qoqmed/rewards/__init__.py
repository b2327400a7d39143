"""Parsing of model answers and the QoQ-Med reward components (docs/design.md §2.3, §4)."""

from .parsing import Box, ParsedResponse, parse_response, rescale_box, rescale_boxes, split_labels
from .scores import (
    WEIGHTS,
    accuracy_reward,
    boxes_to_mask,
    format_reward,
    iou_reward,
    length_reward,
    score,
)

__all__ = [
    "WEIGHTS",
    "Box",
    "ParsedResponse",
    "accuracy_reward",
    "boxes_to_mask",
    "format_reward",
    "iou_reward",
    "length_reward",
    "parse_response",
    "rescale_box",
    "rescale_boxes",
    "score",
    "split_labels",
]
