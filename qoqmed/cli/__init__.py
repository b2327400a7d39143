"""The ``qoqmed`` command line: data, model, train, eval and the quickstart."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from typing import Annotated, Callable, Optional

import typer

from . import data, evaluate, experiment, model, predict, serve, train
from .common import bundled_config, console, err, fail

__all__ = ["app", "bundled_config", "console", "err", "fail"]

app = typer.Typer(
    help="qoqmed: multimodal clinical reasoning models (ECG, images, volumes, text) trained with DRPO.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)
# Deprecation notices raised inside transformers/TRL about their own arguments; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)

# Input and configuration errors: a bad file, record, config value or option. The project's own error classes
# (DataError, InputError, BuildError, ECGCheckpointError) are ValueErrors. Any command that raises one of these
# ends with a one-line `error: ...` and exit code 2 instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


@app.callback()
def limits(
    max_image_pixels: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse images (DICOM included) with more pixels; default 50,000,000.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse GIF/TIFF/WebP clips with more frames; default 2,000.")] = None,
    max_volume_voxels: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse volumes and clips with more voxels; default 300,000,000.")] = None,
    max_array_values: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse .npy arrays with more values; default 16,000,000.")] = None,
    max_ecg_samples: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse WFDB, DICOM and CSV ECGs with more samples over all channels (from the header); "
                    "default 16,000,000.")] = None,
    max_request_bytes: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse a request (a query's inputs, a row's files) that decodes to more bytes in all; "
                    "default 1,500,000,000.")] = None,
) -> None:
    """Decoded-size limits for every command; each is checked from a file's header before it is decoded."""
    from ..data.limits import ENV_PREFIX

    # the readers take the limits from the environment, so they apply to every thread (the server's included)
    for name, value in (("max_image_pixels", max_image_pixels), ("max_frames", max_frames),
                        ("max_volume_voxels", max_volume_voxels), ("max_array_values", max_array_values),
                        ("max_ecg_samples", max_ecg_samples), ("max_request_bytes", max_request_bytes)):
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)


app.command()(train.quickstart)
app.command()(train.train)
app.command()(train.sft)
app.command("eval")(evaluate.evaluate_cmd)
app.command()(evaluate.compare)
app.add_typer(data.data_app, name="data")
app.add_typer(model.model_app, name="model")
app.add_typer(experiment.experiment_app, name="experiment")
app.command()(predict.predict)
app.command()(serve.serve)


def reporting_user_errors(callback: Callable) -> Callable:
    """The command ``callback``, ending in :func:`fail` on any of :data:`USER_ERRORS`."""
    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return run


def _reflow(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line, so the terminal wraps help text at its own width; paragraphs
    (blank-line separated) and indented blocks keep their breaks."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paragraphs)


def _prepare_commands(group: typer.Typer) -> None:
    """Give every command of ``group`` and its sub-groups the shared error handling and reflowed help."""
    for command in group.registered_commands:
        command.callback = reporting_user_errors(command.callback)
        command.callback.__doc__ = _reflow(command.callback.__doc__)
    for sub in group.registered_groups:
        _prepare_commands(sub.typer_instance)


_prepare_commands(app)
