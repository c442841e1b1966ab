"""The saved adapter loads in a fresh process with PEFT's own API, by the base model's hub id,
with the network off and an empty Hugging Face home; snapshots every k rounds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import fedquad
from fedquad.config import load_config
from fedquad.errors import FedquadError

LABELS = ["red", "green", "blue"]
WORDS = {
    "red": ["cherry", "tomato", "brick", "ruby", "blood"],
    "green": ["grass", "leaf", "lime", "frog", "moss"],
    "blue": ["sky", "ocean", "sapphire", "denim", "berry"],
}
SETTINGS = [
    "method='fedlora'",
    "data.max_test_samples=30",
    "model.max_length=16",
    "federation.rounds=2",
    "federation.num_devices=3",
    "federation.devices_per_round=2",
    "federation.save_adapter_every=1",
    "train.local_steps=2",
    "train.batch_size=8",
    "lora.depth=2",
    "fleet.name=uniform",
    "profile.timed_steps=1",
]


def write_colours(path):
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(150):
        label = LABELS[i % 3]
        rows.append(f"{' '.join(rng.choices(WORDS[label], k=4))} and more,{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    data = write_colours(root / "colours.csv")
    config = load_config(None, [*SETTINGS, f"data.name='{data}'", f"output_dir='{root}'"])
    return config, fedquad.run(config)


def test_adapter_names_the_hub_id_and_carries_tokenizer_and_labels(colour_run):
    _, result = colour_run
    adapter = result.run_dir / "adapter"
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert peft_config["task_type"] == "SEQ_CLS"
    assert (adapter / "tokenizer_config.json").is_file()
    model_config = json.loads((adapter / "config.json").read_text())
    assert model_config["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    assert model_config["label2id"] == {"blue": 0, "green": 1, "red": 2}
    metadata = json.loads((adapter / "fedquad.json").read_text())
    assert metadata["base_model"] == peft_config["base_model_name_or_path"]
    assert metadata["label_names"] == ["blue", "green", "red"]
    assert metadata["round"] == 2


def test_adapter_snapshots_every_k_rounds(colour_run):
    _, result = colour_run
    adapter = result.run_dir / "adapter"
    assert sorted(p.name for p in adapter.glob("round-*")) == ["round-0001", "round-0002"]
    final = load_file(adapter / "adapter_model.safetensors")
    last = load_file(adapter / "round-0002" / "adapter_model.safetensors")
    first = load_file(adapter / "round-0001" / "adapter_model.safetensors")
    assert final.keys() == last.keys() == first.keys()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert not all(torch.equal(final[k], first[k]) for k in final)  # round 2 trained on
    assert json.loads((adapter / "round-0001" / "fedquad.json").read_text())["round"] == 1


LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer
    from fedquad.models.hub_cache import seed_hub_cache

    adapter, texts_file = sys.argv[1], sys.argv[2]
    seed_hub_cache()  # the embedded MiniLM under its hub id, in this process's empty HF_HOME
    labels = json.load(open(adapter + "/config.json"))["id2label"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        adapter, num_labels=len(labels)
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    texts = json.load(open(texts_file))
    batch = tokenizer(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1).tolist()
    print(json.dumps([labels[str(p)] for p in predictions]))
    """
)


def test_adapter_loads_offline_by_hub_id_in_a_fresh_process(colour_run, tmp_path):
    from fedquad.data import load_text_classification

    config, result = colour_run
    dc = config.data
    data = load_text_classification(
        dc.name,
        test_fraction=dc.test_fraction,
        seed=config.seed,
        max_train_samples=dc.max_train_samples,
        max_test_samples=dc.max_test_samples,
    )
    texts, labels = list(data.test["text"]), list(data.test["label"])
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(result.run_dir / "adapter"), texts_file],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = json.loads(done.stdout.strip().splitlines()[-1])
    names = data.label_names
    accuracy = sum(p == names[y] for p, y in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy == pytest.approx(result.summary["final_accuracy"])
    # the hub id resolved to the embedded copy, laid out as the hub cache does
    hub = tmp_path / "hf-home" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    assert (hub / "refs" / "main").is_file()


def test_save_adapter_every_must_be_a_whole_number():
    for bad in ["federation.save_adapter_every=-1", "federation.save_adapter_every=1.5"]:
        with pytest.raises(FedquadError, match=r"^federation\.save_adapter_every"):
            load_config(None, [bad])


def test_every_file_of_the_run_has_the_same_mode(colour_run):
    _, result = colour_run
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        str(p.relative_to(result.run_dir)): p.stat().st_mode & 0o777
        for p in result.run_dir.rglob("*")
        if p.is_file()
    }
    assert len(modes) > 10
    odd = {name: oct(m) for name, m in modes.items() if m != 0o666 & ~umask}
    assert not odd


def test_a_smollm2_adapter_records_its_base_is_the_dequantised_gguf():
    from fedquad.models.adapter import adapter_metadata

    meta = adapter_metadata("smollm2-135m", "causal-lm", [], 3)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1 GGUF" in meta["base_weights"] and "dequantised" in meta["base_weights"]
    assert "GGUF" not in adapter_metadata("minilm", "classification", ["a"], 1)["base_weights"]


def test_a_builtin_hub_id_is_the_local_copy_and_the_hub_own_copy_is_kept(tmp_path):
    from fedquad.models.hub_cache import seed_hub_cache
    from fedquad.models.registry import resolve_model

    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model(hub_id) == resolve_model("minilm")
    snapshot = seed_hub_cache(tmp_path, ["minilm"])[hub_id]
    assert (snapshot / "config.json").is_file() and (snapshot / "tokenizer.json").is_file()
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    assert (repo / "refs" / "main").read_text() == snapshot.name
    assert seed_hub_cache(tmp_path, ["minilm"])[hub_id] == snapshot  # again: the same one
    # a copy downloaded from the hub is left as it is
    (repo / "snapshots" / "abc123").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert seed_hub_cache(tmp_path, ["minilm"])[hub_id].name == "abc123"
    assert (repo / "refs" / "main").read_text() == "abc123"
    with pytest.raises(FedquadError, match="'gpt2' is not a built-in model; built-in: minilm"):
        seed_hub_cache(tmp_path, ["gpt2"])
