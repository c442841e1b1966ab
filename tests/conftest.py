"""Shared fixtures: the embedded MiniLM with LoRA, quiet offline hub (plain helpers: helpers.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs lay the built-in models out in the Hugging Face cache: a test one, never the user's (set
# before huggingface_hub is imported, which reads it once).
os.environ.setdefault("HF_HUB_CACHE", str(Path(tempfile.gettempdir()) / "fedquad-tests-hf-hub"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _in_process_training(monkeypatch):
    # engine.workers = auto trains in this process when it sees one core: a spawned worker's
    # start-up (imports, model load) would dominate every short test run. The worker tests set
    # engine.workers themselves.
    import fedquad.engines.workers

    monkeypatch.setattr(fedquad.engines.workers, "host_cores", lambda: 1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Model conversions land in one session-wide cache, never the user's.
    monkeypatch.setenv("FEDQUAD_CACHE", str(tmp_path_factory.getbasetemp() / "fedquad-cache"))


@pytest.fixture
def minilm_lora():
    """MiniLM classifier (2 labels), LoRA on all 6 blocks: (model, parts, structure)."""
    from fedquad.models.lora import attach_lora, build_structure
    from fedquad.models.registry import describe_model, load_sequence_classifier

    torch.manual_seed(0)
    model = load_sequence_classifier("minilm", num_labels=2)
    parts = describe_model(model)
    structure = build_structure(parts.num_blocks, ranks=[8, 8, 4, 4, 2, 2])
    return attach_lora(model, parts, structure), parts, structure
