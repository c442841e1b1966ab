"""Prompt/response datasets for causal-LM instruction tuning, in a common form.

Every split has columns ``prompt`` and ``response`` (str); classification data recast as prompts
also keeps ``label`` (the class id), so it can be partitioned by label and its generated answers
scored against the label word. A name is resolved in this order: a built-in name
(:data:`PROMPT_DATASETS`), a local file or directory, then a Hugging Face hub dataset name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pandas as pd

from fedquad.data.sources import (
    _check_fraction,
    _check_max_samples,
    _find_split_file,
    _read_table,
    _subsample,
    flatten_quietly,
    load_hub_dataset,
    load_text_classification,
)
from fedquad.errors import FedquadError
from fedquad.names import FILE_FORMATS, PROMPT_DATASETS, local_or_builtin

DEFAULT_PROMPT_FIELD = "instruction"
DEFAULT_RESPONSE_FIELD = "response"

FOODS_QUESTION = (
    "Is this product review rated great (the top score) or other? "
    "Answer with one word: great or other."
)
"""What a fine-foods-prompts prompt asks after the review."""


@dataclass
class PromptData:
    """Train/test splits with columns ``prompt``, ``response`` (and ``label`` when recast)."""

    train: datasets.Dataset
    test: datasets.Dataset
    name: str
    label_names: list[str] = field(default_factory=list)
    """The answer word of each class id for recast classification data, else empty."""

    @property
    def has_labels(self) -> bool:
        return bool(self.label_names)


def load_prompt_data(
    name: str,
    *,
    prompt_column: str | None = None,
    response_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> PromptData:
    """Load ``name`` as prompt/response pairs; without a test split, hold out a seeded
    ``test_fraction``. ``max_*_samples`` keep a seeded random subset."""
    _check_fraction(test_fraction)
    _check_max_samples("max_train_samples", max_train_samples)
    _check_max_samples("max_test_samples", max_test_samples)
    if name == "fine-foods-prompts":
        _check_fixed_fields(name, prompt_column, response_column)
        return _recast_fine_foods(seed, max_train_samples, max_test_samples)
    if name == "chatterbot":
        _check_fixed_fields(name, prompt_column, response_column)
        train, test = _chatterbot_frame(), None
    else:
        prompt_col = prompt_column or DEFAULT_PROMPT_FIELD
        response_col = response_column or DEFAULT_RESPONSE_FIELD
        train, test = _load_pairs(name, prompt_col, response_col)
    train_ds = _pairs_dataset(_clean(train), name)
    if test is None:
        train_ds, test_ds = _hold_out(train_ds, test_fraction, seed, name)
    else:
        test_ds = _pairs_dataset(_clean(test), name)
    return PromptData(
        train=_subsample(train_ds, max_train_samples, seed),
        test=_subsample(test_ds, max_test_samples, seed),
        name=name,
    )


def _hold_out(
    ds: datasets.Dataset, fraction: float, seed: int, name: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        split = ds.train_test_split(test_size=fraction, seed=seed)
    except ValueError as exc:
        raise FedquadError(
            f"dataset '{name}' has {len(ds)} pairs, too few to hold out "
            f"test_fraction={fraction} as a test set"
        ) from exc
    return flatten_quietly(split["train"]), flatten_quietly(split["test"])


def _check_fixed_fields(name: str, prompt: str | None, response: str | None) -> None:
    # Silently ignoring a user's field choice would train on something unexpected.
    for key, given in (("text_column", prompt), ("label_column", response)):
        if given is not None:
            raise FedquadError(
                f"data.{key} = {given!r} does not apply to built-in dataset '{name}': "
                "leave it unset"
            )


# ---------------------------------------------------------------------------- built-in


def foods_prompt(review: str) -> str:
    return f"Review: {review.strip()}\n\n{FOODS_QUESTION}"


def _recast_fine_foods(
    seed: int, max_train_samples: int | None, max_test_samples: int | None
) -> PromptData:
    data = load_text_classification(
        "fine-foods",
        seed=seed,
        max_train_samples=max_train_samples,
        max_test_samples=max_test_samples,
    )
    words = data.label_names  # ["great", "other"]

    def recast(split: datasets.Dataset) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "prompt": [foods_prompt(t) for t in split["text"]],
                "response": [words[i] for i in split["label"]],
                "label": list(split["label"]),
            },
            datasets.Features(
                {
                    "prompt": datasets.Value("string"),
                    "response": datasets.Value("string"),
                    "label": datasets.Value("int64"),
                }
            ),
        )

    return PromptData(
        train=recast(data.train),
        test=recast(data.test),
        name="fine-foods-prompts",
        label_names=list(words),
    )


def _chatterbot_frame() -> pd.DataFrame:
    """The first question and answer of every English conversation: 2,025 pairs (one of the
    2,026 conversations is a malformed single string)."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    locations = list(spec.submodule_search_locations or []) if spec else []
    english = [Path(loc) / "data" / "english" for loc in locations]
    files = sorted(f for d in english if d.is_dir() for f in d.glob("*.yml"))
    if not files:
        raise FedquadError(
            "built-in dataset 'chatterbot' needs the package chatterbot-corpus "
            "(install it with: pip install chatterbot-corpus)"
        )
    rows = []
    for path in files:
        conversations = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", [])
        for turns in conversations:
            if isinstance(turns, list) and len(turns) >= 2:
                rows.append((str(turns[0]), str(turns[1])))
    return pd.DataFrame(rows, columns=["prompt", "response"])


# ---------------------------------------------------------------------------- files and hub


def _select(df: pd.DataFrame, prompt: str, response: str, where: str) -> pd.DataFrame:
    if prompt == response:
        raise FedquadError(f"prompt and response field are both '{prompt}' in {where}")
    for role, column in (("prompt", prompt), ("response", response)):
        if column not in df.columns:
            raise FedquadError(
                f"{role} field '{column}' not found in {where}; available fields: "
                f"{', '.join(map(str, df.columns))} (set data.text_column / data.label_column)"
            )
    return df[[prompt, response]].set_axis(["prompt", "response"], axis=1)


def _load_pairs(name: str, prompt: str, response: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if not local_or_builtin(name, tuple(PROMPT_DATASETS)):
        return _load_hub(name, prompt, response)
    path = Path(name).expanduser()
    if path.is_file():
        return _select(_read_table(path), prompt, response, str(path)), None
    if path.is_dir():
        train_file = _find_split_file(path, ("train",))
        if train_file is None:
            raise FedquadError(
                f"directory '{path}' has no train file; expected train with one of: "
                f"{', '.join(FILE_FORMATS)}"
            )
        test_file = _find_split_file(path, ("test", "dev", "validation"))
        train = _select(_read_table(train_file), prompt, response, str(train_file))
        test = (
            _select(_read_table(test_file), prompt, response, str(test_file)) if test_file else None
        )
        return train, test
    raise FedquadError(f"dataset '{name}' is neither a file nor a directory")


def _load_hub(name: str, prompt: str, response: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    loaded = load_hub_dataset(name, tuple(PROMPT_DATASETS), "a built-in prompt dataset")
    if not isinstance(loaded, datasets.DatasetDict) or "train" not in loaded:
        raise FedquadError(f"dataset '{name}' has no 'train' split; cannot use it")

    def frame(split: str) -> pd.DataFrame:
        return _select(loaded[split].to_pandas(), prompt, response, f"dataset '{name}'")

    test = next((frame(s) for s in ("test", "validation") if s in loaded), None)
    return frame("train"), test


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    """Drop pairs with a missing or blank prompt or response."""
    df = df[df["prompt"].notna() & df["response"].notna()]
    prompt, response = df["prompt"].astype(str), df["response"].astype(str)
    keep = (prompt.str.strip() != "") & (response.str.strip() != "")
    return pd.DataFrame({"prompt": prompt[keep], "response": response[keep]})


def _pairs_dataset(df: pd.DataFrame, name: str) -> datasets.Dataset:
    if df.empty:
        raise FedquadError(f"dataset '{name}' has no rows with a non-empty prompt and response")
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "response": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {"prompt": df["prompt"].tolist(), "response": df["response"].tolist()}, features
    )
