"""Inference: the Python pipeline, input loading, box overlays and batch prediction over jsonl files."""

from .inputs import InputError
from .overlay import draw_boxes, save_overlay
from .pipeline import Decoding, Prediction, PreparedQuery, QoQMedPipeline, Query

__all__ = ["Decoding", "InputError", "Prediction", "PreparedQuery", "QoQMedPipeline", "Query", "draw_boxes", "save_overlay"]
