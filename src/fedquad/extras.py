"""Optional parts installed with an extra (``pip install 'fedquad[flower]'``): a run that needs
one that is missing stops at once with a one-line error naming the extra."""

from __future__ import annotations

import importlib.util
from typing import Any

from fedquad.errors import FedquadError

EXTRA_OF = {"ray": "flower", "tensorboard": "tensorboard"}
"""The extra that installs each optional module."""


def require(module: str, needed_by: str) -> None:
    """Raise a one-line FedquadError when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise FedquadError(
            f"{needed_by} needs {module}, which is not installed: "
            f"pip install 'fedquad[{EXTRA_OF[module]}]'"
        )


def check_extras(config: Any) -> None:
    """Before any heavy work: the optional modules ``config`` needs are installed."""
    engine = getattr(config.engine, "name", config.engine)  # a string or an [engine] table
    if engine == "flower-sim":
        require("ray", "engine = 'flower-sim'")
    if config.tensorboard:
        require("tensorboard", "tensorboard = true")
