"""Activation checkpointing in the trainer (docs/methods.md §4.4) on the real MiniLM: the update is
the one trained without it, the span's lowest block gets its LoRA gradient, the shared model is
restored after, and the cost model predicts the saved bytes of checkpointed configs exactly."""

from __future__ import annotations

import json

import pytest
import torch

import fedquad
from fedquad.config import QuantConfig, TrainConfig, load_config
from fedquad.cost.model import CostProfile, memory_bytes, saved_bytes
from fedquad.cost.profiler import ProfileSettings, StepTiming, profile_workload
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import get_state, load_state
from fedquad.report.results import read_metrics
from fedquad.train.checkpointing import checkpointed
from fedquad.train.local import train_local
from helpers import make_batch

pytestmark = pytest.mark.integration  # every test here loads a model

TIMING = StepTiming(f=1.0, g=2.0, o=3.0, c=4.0, timed=((1, 0, 9.0), (6, 0, 9.0)))
"""Given time terms: the bytes are measured, the time is not."""


def padded(n: int, seq: int) -> dict[str, torch.Tensor]:
    """Samples of different lengths, so BERT builds an attention mask every block shares."""
    batch = make_batch(n, seq)
    for i in range(n):
        batch["attention_mask"][i, seq - 2 * (i + 1) :] = 0
    return batch


def unchecked(parts) -> bool:
    return not any(vars(b).get("gradient_checkpointing", False) for b in parts.blocks)


def test_checkpointed_training_trains_the_same_update(minilm_lora):
    model, parts, structure = minilm_lora
    train = TrainConfig(local_steps=2, batch_size=4, trim_batches=False)
    batch = padded(8, 24)
    start = {k: v.clone() for k, v in get_state(model).items()}
    plain = train_local(model, parts, structure, batch, DeviceConfig(4), train, 7)
    load_state(model, start)
    recomputed = train_local(
        model, parts, structure, batch, DeviceConfig(4, checkpointed=2), train, 7
    )
    load_state(model, start)
    assert unchecked(parts)
    assert plain.tensors.keys() == recomputed.tensors.keys()
    for name, tensor in plain.tensors.items():  # dropout drew the same masks when recomputed
        assert torch.allclose(tensor, recomputed.tensors[name], atol=1e-6, rtol=0), name
    # the lowest block of the span (2), checkpointed with an input that needs no grad, trained
    lowest = [n for n in recomputed.tensors if ".layer.2." in n and "lora_B" in n]
    assert lowest and all(not torch.equal(recomputed.tensors[n], start[n]) for n in lowest)
    assert recomputed.saved.total < plain.saved.total
    assert recomputed.loss == pytest.approx(plain.loss, abs=1e-6)


def test_checkpointing_is_undone_after_training_and_after_an_error(minilm_lora):
    model, parts, structure = minilm_lora
    with pytest.raises(RuntimeError, match="inside"), checkpointed(parts.blocks, [1, 3]):
        assert parts.blocks[1].gradient_checkpointing and parts.blocks[3].gradient_checkpointing
        assert not parts.blocks[2].gradient_checkpointing
        raise RuntimeError("inside")
    assert unchecked(parts) and not any("_gradient_checkpointing_func" in vars(b)
                                        for b in parts.blocks)  # fmt: skip
    train = TrainConfig(local_steps=1, batch_size=4)
    with pytest.raises(FedquadError, match="k = 2 is not allowed: use 0 to the 1 trained"):
        train_local(
            model, parts, structure, make_batch(4, 8), DeviceConfig(2, 1, checkpointed=2), train, 0
        )
    assert unchecked(parts)


def test_predicted_saved_bytes_of_checkpointed_configs_equal_measured(minilm_lora):
    model, parts, structure = minilm_lora
    train = TrainConfig(local_steps=1, batch_size=4, trim_batches=False)
    quant = QuantConfig()
    batch = padded(4, 32)
    profile = profile_workload(
        model, parts, structure, batch, train, quant, ProfileSettings(timed_steps=1), TIMING
    )
    configs = [  # every k at depths 3 and 6, the fewest and the most at the others
        DeviceConfig(depth, checkpointed=k)
        for depth in range(1, parts.num_blocks + 1)
        for k in (range(depth + 1) if depth in (3, 6) else (1, depth))
    ]
    configs += [DeviceConfig(4, 1, checkpointed=k) for k in (1, 3)]
    configs += [DeviceConfig(4, 2, quant_position="top", checkpointed=k) for k in (1, 2)]
    for config in configs:
        measured = train_local(model, parts, structure, batch, config, train, 0, quant).saved
        assert saved_bytes(profile, config) == measured.total, config
    # a checkpointed block keeps its input hidden states; the attention mask every block is
    # given is counted once, in the lowest block of the span
    masks = []
    handle = parts.blocks[0].register_forward_pre_hook(lambda _, args: masks.append(args[1]))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    (mask,) = masks
    hidden = 4 * 32 * parts.hidden_size * 4
    assert mask is not None
    assert profile.saved_bytes_checkpointed[1:] == (hidden,) * (parts.num_blocks - 1)
    assert profile.saved_bytes_bottom_checkpointed == (
        (hidden + mask.untyped_storage().nbytes(),) * parts.num_blocks
    )


FLEET = """per_round = 3

[[tier]]
name = "roomy"
count = 1
slowdown = 1.0
memory = 1.5

[[tier]]
name = "tight"
count = 2
slowdown = 2.0
memory = TIGHT
"""


@pytest.mark.slow  # a whole run, its profile timed (the fast tests above hold the same parts)
def test_a_checkpointing_fedlora_run_trains_what_it_planned_at_the_predicted_bytes(tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.replace("TIGHT", "0.9"))
    config = load_config(
        None,
        [
            "method='fedlora'",
            "planner.infeasible='checkpoint'",
            "data.max_train_samples=120",
            "data.max_test_samples=16",
            "model.max_length=64",  # reviews shorter than this: padded, with a mask
            "federation.rounds=1",
            "train.local_steps=1",
            "train.batch_size=8",
            "train.trim_batches=false",  # the saved bytes of the configured length
            "profile.timing='measure'",
            "profile.timed_steps=1",
            f"fleet.name='{fleet}'",
            f"output_dir='{tmp_path}'",
        ],
    )
    result = fedquad.run(config)
    profile = CostProfile.from_dict(json.loads((result.run_dir / "cost_profile.json").read_text()))
    (m,) = read_metrics(result.run_dir)
    records = {d["device"]: d for d in m["devices"]}
    assert sorted(records) == [0, 1, 2] and m["sat_out"] == {}
    assert "checkpointed" not in records[0]
    blocks = profile.num_blocks
    for d, record in records.items():
        planned = DeviceConfig(blocks, checkpointed=record.get("checkpointed", 0))
        assert (d == 0) == (planned.checkpointed == 0)
        assert record["peak_saved_bytes"] == saved_bytes(profile, planned)  # memory factor 1
        assert record["memory_bytes"] == memory_bytes(profile, planned)
        assert record["memory_bytes"] <= 0.9 * record["memory_budget_bytes"]
