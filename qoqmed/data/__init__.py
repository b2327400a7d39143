"""Data: the record schema, file readers (images, DICOM, volumes, ECG), boxes, converters and CLIMB-mini."""

from .boxes import from_model_box, mask_box, mask_boxes, to_model_box
from .dicom import load_dicom_image
from .domains import DOMAINS
from .errors import DataError
from .files import is_dicom
from .readers import load_ecg, load_image, load_mask
from .schema import (
    DIFFICULTIES,
    SPLITS,
    Box,
    Record,
    VolumeRef,
    load_records,
    parse_record,
    split_labels,
    write_records,
)
from .climb_mini import LABELS, ClimbMiniConfig, generate_climb_mini, simulate_ecg
from .volumes import Volume, load_volume, read_volume
from .windows import WINDOWS

__all__ = [
    "DIFFICULTIES",
    "DOMAINS",
    "LABELS",
    "SPLITS",
    "WINDOWS",
    "Volume",
    "VolumeRef",
    "Box",
    "ClimbMiniConfig",
    "DataError",
    "Record",
    "from_model_box",
    "generate_climb_mini",
    "is_dicom",
    "load_dicom_image",
    "load_ecg",
    "load_image",
    "load_mask",
    "load_records",
    "load_volume",
    "mask_box",
    "mask_boxes",
    "parse_record",
    "simulate_ecg",
    "read_volume",
    "split_labels",
    "to_model_box",
    "write_records",
]
