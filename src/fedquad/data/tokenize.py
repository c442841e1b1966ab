"""Turn ``text`` / ``label`` datasets into fixed-length model inputs."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, TypeAlias

import datasets

from fedquad.errors import FedquadError, warn

if TYPE_CHECKING:
    import torch

TensorData: TypeAlias = "dict[str, torch.Tensor]"
"""Tokenized samples as the trainer batches them: ``input_ids``, ``attention_mask``, ``labels``."""


def tokenize_dataset(
    dataset: datasets.Dataset, tokenizer: Any, max_length: int
) -> datasets.Dataset:
    """Replace ``text`` by ``input_ids`` and ``attention_mask`` of length ``max_length``.

    Texts are truncated or padded to exactly ``max_length`` tokens, with a warning saying how
    many were truncated; ``label`` and any other columns are kept. The result is in torch format.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise FedquadError(f"max_length={max_length!r} is invalid; use an integer >= 1")
    if max_length < 1:
        raise FedquadError(f"max_length={max_length!r} is invalid; use an integer >= 1")
    if "text" not in dataset.column_names:
        raise FedquadError(
            f"cannot tokenize: no 'text' column; available columns: "
            f"{', '.join(dataset.column_names)}"
        )
    _ensure_pad_token(tokenizer)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        enc = tokenizer(
            batch["text"], padding="max_length", truncation=True, max_length=int(max_length)
        )
        # Keep only what every model takes (drops e.g. BERT's token_type_ids).
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            TRUNCATED: _truncated(enc),
        }

    # Replace columns of the same name if the dataset was tokenized before.
    stale = [c for c in ("text", "input_ids", "attention_mask") if c in dataset.column_names]
    tokenized = dataset.map(encode, batched=True, remove_columns=stale, desc="Tokenizing")
    truncated = sum(tokenized[TRUNCATED])
    if truncated:
        warn(
            f"{truncated:,} of {len(tokenized):,} texts are longer than max_length = "
            f"{max_length} tokens and were truncated"
        )
    tokenized = tokenized.remove_columns(TRUNCATED)
    tokenized.set_format("torch")
    return tokenized


TRUNCATED = "_truncated"


def _truncated(enc: Any) -> list[bool]:
    """Which texts lost tokens: a fast tokenizer keeps what it cut off; for a slow one, a text
    that fills every position counts (it may have fit exactly)."""
    encodings = getattr(enc, "encodings", None)
    if encodings is not None:
        return [bool(e.overflowing) for e in encodings]
    return [all(m) for m in enc["attention_mask"]]


def _ensure_pad_token(tokenizer: Any) -> None:
    """Decoder-only tokenizers (GPT-2, Llama) ship without a pad token: reuse EOS."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise FedquadError(
            f"tokenizer '{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}' has "
            "no pad or EOS token, so it cannot pad to max_length"
        )
    tokenizer.pad_token = tokenizer.eos_token
