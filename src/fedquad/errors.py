"""User-facing errors.

A :class:`FedquadError` carries a one-line message naming the bad value and what is allowed;
the CLI prints it and exits with code 2 (no traceback).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence


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


def did_you_mean(value: object, allowed: Iterable[object]) -> str | None:
    """``"did you mean 'x'?"`` for the known name ``x`` closest to a misspelt ``value``, or None
    when none is close: every "did you mean" of a key, a preset, a method, a fleet, a dataset or
    a model comes from here."""
    if not isinstance(value, str):
        return None
    names = [a for a in allowed if isinstance(a, str)]
    close = difflib.get_close_matches(value, names, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def unknown_key(key: str, allowed: Sequence[str], where: str = "config") -> FedquadError:
    """An unknown key in a file, with the closest known key as a suggestion."""
    hint = did_you_mean(key.rsplit(".", 1)[-1], allowed)
    tail = f" ({hint})" if hint else f"; known keys: {', '.join(allowed)}"
    return FedquadError(f"unknown {where} key '{key}'{tail}")


def warn(message: str) -> None:
    """A one-line warning on stderr: the run goes on."""
    print(f"warning: {message}", file=sys.stderr)
