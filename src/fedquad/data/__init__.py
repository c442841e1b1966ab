"""Datasets: loading (built-in, local files, hub), federated partitioning, tokenization."""

from fedquad.data.partition import PARTITION_SCHEMES, partition_dataset
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
    "TextClassificationData",
    "load_text_classification",
    "partition_dataset",
    "tokenize_dataset",
]
