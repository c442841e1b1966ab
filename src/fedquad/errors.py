"""User-facing errors.

A :class:`FedquadError` carries a one-line message naming the bad value and what is allowed;
the CLI prints it and exits with code 2 (no traceback).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence


class FedquadError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: says where its results are, so the user can resume it."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(run_dir)
        self.run_dir = run_dir

    def message(self) -> str:
        return (
            f"interrupted; the rounds so far are in {self.run_dir}; "
            f"continue with: fedquad run --resume {self.run_dir}"
        )


def unknown_key(key: str, allowed: Sequence[str], where: str = "config") -> FedquadError:
    """An unknown key in a file, with the closest known key as a suggestion."""
    hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(allowed), n=1)
    tail = f" (did you mean '{hint[0]}'?)" if hint else f"; known keys: {', '.join(allowed)}"
    return FedquadError(f"unknown {where} key '{key}'{tail}")


def warn(message: str) -> None:
    """A one-line warning on stderr: the run goes on."""
    print(f"warning: {message}", file=sys.stderr)
