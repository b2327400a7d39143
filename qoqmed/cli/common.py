"""What every command module shares: the consoles, the error line, common options and bundled configs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

AllowOutsidePaths = Annotated[bool, typer.Option(
    "--allow-outside-paths",
    help="Accept rows whose file paths leave the jsonl's folder (\"../\"); refused by default.")]
Overwrite = Annotated[bool, typer.Option(
    help="Replace the outputs of an earlier run in OUT (only those: other files there are kept).")]


def bundled_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package (quickstart, smoke)."""
    return Path(str(resources.files("qoqmed") / "configs" / f"{name}.yaml"))


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and end the command with exit code 2."""
    from rich.markup import escape

    from ..data.errors import printable

    # A message quotes file names and contents: printed literally (no markup), control characters escaped.
    err.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    raise typer.Exit(code=2)
