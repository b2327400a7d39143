"""``python -m qoqmed.cli``: the same command line as the ``qoqmed`` script (e.g. under ``accelerate launch``)."""

from . import app

app()
