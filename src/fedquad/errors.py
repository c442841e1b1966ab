"""User-facing errors.

A :class:`FedquadError` carries a one-line message naming the bad value and what is
allowed; the CLI prints it and exits with code 2 (no traceback).
"""


class FedquadError(Exception):
    """A problem with the user's input or environment, explained in one line."""
