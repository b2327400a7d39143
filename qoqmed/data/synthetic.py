"""CLIMB-mini under its earlier module name; the generator lives in :mod:`qoqmed.data.climb_mini`."""

from .climb_mini import *  # noqa: F403
from .climb_mini import __all__  # noqa: F401
