"""FedLoRA end to end on the embedded model and data (a small, fast version of `make run`)."""

from __future__ import annotations

import json

import pytest
import torch

import fedquad
from fedquad.config import load_config
from fedquad.cost.model import (
    CostProfile,
    step_seconds,
    upload_bytes,
)
from fedquad.data import load_text_classification
from fedquad.device_config import DeviceConfig
from fedquad.methods_registry import METHODS
from fedquad.report.results import read_metrics
from fedquad.report.run_info import label_shares
from helpers import SMALL_RUN

pytestmark = pytest.mark.integration  # every test here loads a model


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = load_config(None, [*SMALL_RUN, f"output_dir={out}", "run_name=a"])
    return fedquad.run(config)


def test_run_writes_config_metrics_summary_and_adapter(small_run):
    run_dir = small_run.run_dir
    assert (run_dir / "config.toml").exists()
    resolved = load_config(run_dir / "config.toml")
    assert resolved.federation.rounds == 2
    metrics = read_metrics(run_dir)
    assert [m["round"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert len(m["devices"]) == 2
        for d in m["devices"]:
            assert d["depth"] == 2
            # upload: the span's LoRA + head; download: all of it
            assert 0 < d["bytes_up"] <= d["bytes_down"]
            assert d["peak_saved_bytes"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["final_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["label_names"] == ["great", "other"]
    # the test set's label shares, from which the plots draw the majority-class line
    test = load_text_classification("fine-foods", seed=0, max_test_samples=64).test
    names = summary["label_names"]
    assert summary["test_label_shares"] == label_shares(names[i] for i in test["label"])
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_adapter_loads_with_peft_and_predicts_like_the_run(small_run):
    from peft import PeftModel

    from fedquad.data import load_text_classification, tokenize_dataset
    from fedquad.models.registry import load_sequence_classifier, load_tokenizer
    from fedquad.train.local import evaluate
    from fedquad.workbench import to_tensors

    base = load_sequence_classifier("minilm", num_labels=2)
    model = PeftModel.from_pretrained(base, str(small_run.run_dir / "adapter"))
    data = load_text_classification("fine-foods", seed=0, max_test_samples=64)
    test = to_tensors(tokenize_dataset(data.test, load_tokenizer("minilm"), 32))
    result = evaluate(model, test, batch_size=64)
    assert result["accuracy"] == pytest.approx(small_run.summary["final_accuracy"])
    assert result["loss"] == pytest.approx(small_run.summary["final_test_loss"], rel=1e-5)


def test_same_seed_same_metrics_and_a_new_directory(small_run, tmp_path):
    config = load_config(None, [*SMALL_RUN, f"output_dir={small_run.run_dir.parent}", "run_name=a"])
    again = fedquad.run(config)
    assert again.run_dir != small_run.run_dir  # never overwrite an earlier run
    first, second = read_metrics(small_run.run_dir), read_metrics(again.run_dir)
    for a, b in zip(first, second, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["train_loss"] == b["train_loss"]
        assert a["sampled"] == b["sampled"]


def test_training_improves_on_the_untrained_model(small_run):
    # The first evaluation already follows one round; a longer schedule must beat the
    # untrained model's loss on the same test examples.
    metrics = read_metrics(small_run.run_dir)
    assert metrics[-1]["train_loss"] < 0.75
    assert torch.isfinite(torch.tensor(metrics[-1]["test_loss"]))


def test_quantized_run_tracks_the_unquantized_one(small_run, tmp_path):
    """Short parity check: every trainable block's activations at 8 bits, same seed and rounds."""
    config = load_config(None, [*SMALL_RUN, f"output_dir={tmp_path}", "quant.blocks=2"])
    quantized = fedquad.run(config)
    plain_metrics, quant_metrics = read_metrics(small_run.run_dir), read_metrics(quantized.run_dir)
    for plain, quant in zip(plain_metrics, quant_metrics, strict=True):
        assert all(d["quantized"] == 2 and d["bits"] == 8 for d in quant["devices"])
        # the same devices and samples, held in at most ~30% of the activation memory
        assert [d["device"] for d in quant["devices"]] == [d["device"] for d in plain["devices"]]
        for dq, dp in zip(quant["devices"], plain["devices"], strict=True):
            assert dq["peak_saved_bytes"] < 0.5 * dp["peak_saved_bytes"]
        assert abs(quant["test_accuracy"] - plain["test_accuracy"]) <= 2 / 64
        assert quant["test_loss"] == pytest.approx(plain["test_loss"], rel=0.02)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end_on_the_default_fleet(method, tmp_path):
    overrides = [o for o in SMALL_RUN if not o.startswith(("fleet.", "federation.", "lora."))]
    config = load_config(
        None,
        [
            *overrides,
            f"method={method!r}",
            "federation.rounds=2",
            "federation.num_devices=8",
            "federation.devices_per_round=4",
            "train.local_steps=1",
            "model.max_length=64",
            "train.batch_size=16",
            f"output_dir={tmp_path}",
        ],
    )
    result = fedquad.run(config)
    profile = CostProfile.from_dict(json.loads((result.run_dir / "cost_profile.json").read_text()))
    metrics = read_metrics(result.run_dir)
    trained = [d for m in metrics for d in m["devices"]]
    assert trained, method
    for d in trained:
        config_d = DeviceConfig(
            d["depth"],
            d["quantized"],
            d["bits"],
            rank=d.get("rank"),
            blocks=tuple(d["blocks"]) if "blocks" in d else None,
        )
        assert d["bytes_up"] == upload_bytes(profile, config_d), (method, d)
        assert d["memory_bytes"] <= 0.9 * d["memory_budget_bytes"]
    if method in ("fedquad", "joint"):
        assert all(not m["sat_out"] for m in metrics)
    assert 0 <= result.summary["final_accuracy"] <= 1
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_tensorboard_flag_writes_event_files(tmp_path):
    from fedquad.cli import main

    sets = [
        x
        for o in [*SMALL_RUN, "federation.rounds=1", f"output_dir={tmp_path}"]
        for x in ("--set", o)
    ]
    assert main(["run", "--quiet", "--tensorboard", *sets]) == 0
    (run_dir,) = list(tmp_path.iterdir())
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert "test_accuracy" in acc.Tags()["scalars"]
    (point,) = acc.Scalars("test_accuracy")
    assert point.value == pytest.approx(read_metrics(run_dir)[0]["test_accuracy"])


def test_a_global_lora_depth_of_one_is_profiled_and_trained(tmp_path, monkeypatch):
    # an empty cache: timed at depth 1 here, not given the time terms of a deeper layout
    monkeypatch.setenv("FEDQUAD_CACHE", str(tmp_path / "cache"))
    config = load_config(
        None, [*SMALL_RUN, "method='fedquad'", "lora.depth=1", f"output_dir={tmp_path / 'runs'}"]
    )
    result = fedquad.run(config)
    profile = CostProfile.from_dict(json.loads((result.run_dir / "cost_profile.json").read_text()))
    assert profile.g == 0.0 and step_seconds(profile, DeviceConfig(1)) > 0
    # one depth cannot tell g from c: that fit is not offered to deeper layouts
    assert not list((tmp_path / "cache" / "timings").glob("*.json"))
    assert all(d["depth"] == 1 for m in result.metrics for d in m["devices"])
