"""Model loading and structure helpers."""

from fedquad.models.registry import (
    BUILTIN_MODELS,
    ModelParts,
    cache_dir,
    describe_model,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model,
)

__all__ = [
    "BUILTIN_MODELS",
    "ModelParts",
    "cache_dir",
    "describe_model",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "resolve_model",
]
