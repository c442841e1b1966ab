"""What the commands print on stdout: rich tables that are never cut, or one JSON object.

With ``--format json`` a command prints exactly one JSON object on stdout and nothing else
(progress, status and warnings go to stderr), so that its output can be piped into a parser.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console

JSON_SCHEMA = 1
"""The ``schema`` of every ``--format json`` object: raised when a field changes meaning."""

PIPED_WIDTH = 10_000
"""Columns of a console that is not a terminal: rich would take 80 and cut wider tables."""


def stdout_console() -> Console:
    """A console on stdout: a terminal's own width; piped or redirected to a file, wide enough
    that every table is printed whole (a table takes only the width it needs)."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


def json_text(command: str, data: Mapping[str, Any]) -> str:
    """The one JSON object a ``--format json`` command prints."""
    return json.dumps({"schema": JSON_SCHEMA, "command": command, **data}, indent=2)


def print_json(command: str, data: Mapping[str, Any]) -> None:
    print(json_text(command, data))
