"""Datasets: loading (built-in, local files, hub), federated partitioning, tokenization.

Text classification (``text`` / ``label``) and prompt/response pairs for causal-LM instruction
tuning (:mod:`fedquad.data.prompts`, tokenized with the chat template by :mod:`fedquad.data.chat`).
"""

from fedquad.data.chat import tokenize_pairs
from fedquad.data.partition import PARTITION_SCHEMES, partition_dataset
from fedquad.data.prompts import PROMPT_DATASETS, PromptData, load_prompt_data
from fedquad.data.sources import (
    BUILTIN_DATASETS,
    FILE_FORMATS,
    TextClassificationData,
    load_text_classification,
)
from fedquad.data.tokenize import tokenize_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "FILE_FORMATS",
    "PARTITION_SCHEMES",
    "PROMPT_DATASETS",
    "PromptData",
    "TextClassificationData",
    "load_prompt_data",
    "load_text_classification",
    "partition_dataset",
    "tokenize_dataset",
    "tokenize_pairs",
]
