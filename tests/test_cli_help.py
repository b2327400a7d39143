"""Help texts reach the terminal as whole paragraphs, so they wrap at its width (80 columns here) without ragged
breaks left over from the source's line length."""

from __future__ import annotations

import typer

from qoqmed.cli import _reflow, app


def _commands(group: typer.Typer):
    for command in group.registered_commands:
        yield command
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance)


def test_every_help_paragraph_is_one_line():
    commands = list(_commands(app))
    assert len(commands) > 10
    for command in commands:
        for paragraph in (command.callback.__doc__ or "").split("\n\n"):
            lines = paragraph.splitlines()
            assert len(lines) <= 1 or any(line.startswith(" ") for line in lines), (command.callback.__name__, lines)


def test_reflow_keeps_paragraphs_and_indented_blocks():
    doc = """First line
    goes on.

    Second paragraph.

        indented
        block
    """
    assert _reflow(doc) == "First line goes on.\n\nSecond paragraph.\n\n    indented\n    block"
