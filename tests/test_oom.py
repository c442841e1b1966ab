"""Out of memory on a device: one retry with the server's cheaper fallback config, reported, and
the server plans that device below the failed config's memory from then on."""

from __future__ import annotations

import json

import pytest
import torch

import fedquad
from fedquad.config import FaultConfig, QuantConfig, TrainConfig, load_config
from fedquad.cost.fleet import devices_for_round, load_fleet
from fedquad.cost.model import (
    CostProfile,
    full_footprint,
    memory_bytes,
    step_seconds,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig
from fedquad.engines.flower_app import (
    instruction_content,
    instruction_from,
    reply_content,
    reply_from,
)
from fedquad.engines.local import injected_oom, is_out_of_memory, train_device
from fedquad.errors import FedquadError
from fedquad.models.lora import get_state
from fedquad.server.capacity import CapacityEstimator
from fedquad.server.faults import OOM, fault_of
from fedquad.server.messages import TrainInstruction, TrainReply
from helpers import make_batch

SETTINGS = TrainConfig(local_steps=2, batch_size=4)
PLANNED = DeviceConfig(depth=4)
FALLBACK = DeviceConfig(depth=4, quantized=1)


def _train(minilm_lora, fault=None, fallback=None, config=PLANNED):
    model, parts, structure = minilm_lora
    ins = TrainInstruction(
        device_id=3,
        round=1,
        config=config,
        tensors=get_state(model),
        seed=11,
        fault=fault,
        fallback=fallback,
    )
    data = make_batch(8, 16)
    return train_device(model, parts, structure, data, ins, SETTINGS, QuantConfig())


def test_memory_error_predicate_knows_the_three_kinds_and_nothing_else():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    with pytest.raises(RuntimeError) as real:  # torch's CPU allocator refuses 1 PiB at once
        torch.empty(2**50, dtype=torch.uint8)
    assert is_out_of_memory(real.value)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(KeyError("lora_A"))


@pytest.mark.integration
def test_an_oom_device_retries_with_the_fallback_and_says_so(minilm_lora):
    model, parts, structure = minilm_lora
    start = get_state(model)
    retried = _train(minilm_lora, fault=OOM, fallback=FALLBACK)
    assert retried.error is None
    assert retried.measurements["oom_retry"] == {
        "failed_config": PLANNED.as_dict(),
        "used_config": FALLBACK.as_dict(),
    }
    # the update is exactly the one the fallback config trains, from the same global state
    model.load_state_dict(start, strict=False)
    direct = _train(minilm_lora, config=FALLBACK)
    assert direct.error is None and "oom_retry" not in direct.measurements
    assert retried.tensors.keys() == direct.tensors.keys()
    assert all(torch.equal(retried.tensors[k], v) for k, v in direct.tensors.items())
    assert retried.measurements["loss"] == direct.measurements["loss"]
    # the quantized block of the fallback was really quantized: fewer saved bytes
    assert (
        retried.measurements["peak_saved_bytes"]
        < _train(minilm_lora).measurements["peak_saved_bytes"]
    )


@pytest.mark.integration
def test_no_fallback_or_a_failing_retry_is_an_error_without_tensors(minilm_lora):
    _, parts, _ = minilm_lora
    alone = _train(minilm_lora, fault=OOM)
    assert alone.error == "out of memory (no fallback config)"
    assert alone.tensors == {}
    assert alone.measurements["oom_retry"] == {"failed_config": PLANNED.as_dict()}
    with injected_oom(parts):  # the device is out of memory whatever it trains
        twice = _train(minilm_lora, fallback=FALLBACK)
    assert twice.error == "out of memory (after retry)"
    assert twice.tensors == {}
    assert twice.measurements["oom_retry"] == {
        "failed_config": PLANNED.as_dict(),
        "retry_failed_config": FALLBACK.as_dict(),
    }
    # nothing else is taken for a memory error
    with pytest.raises(RuntimeError, match="shapes"):
        _train_raising(minilm_lora, RuntimeError("shapes do not match"))


def _train_raising(minilm_lora, exc):
    _, parts, _ = minilm_lora

    def fail(*_):
        raise exc

    handle = parts.blocks[-1].register_forward_pre_hook(fail)
    try:
        return _train(minilm_lora, fallback=FALLBACK)
    finally:
        handle.remove()


def test_flower_messages_carry_the_fallback():
    tensors = {"head.bias": torch.zeros(2)}
    for fallback in (None, DeviceConfig(depth=2, quantized=2, bits=4, blocks=(4, 5))):
        ins = TrainInstruction(1, 2, PLANNED, tensors, seed=5, fault=OOM, fallback=fallback)
        assert instruction_from(instruction_content(ins)).fallback == fallback
    retry = {
        "failed_config": PLANNED.as_dict(),
        "used_config": DeviceConfig(3, blocks=(4, 5)).as_dict(),
    }
    for error in (None, "out of memory (after retry)"):
        reply = TrainReply(1, {}, 60, measurements={"oom_retry": retry}, error=error)
        assert reply_from(reply_content(reply)) == reply


def test_oom_probability_is_validated_and_drawn():
    faults = FaultConfig(oom_probability=0.25)
    draws = [fault_of(faults, 0, r, d) for r in range(1, 101) for d in range(40)]
    assert draws.count(OOM) / len(draws) == pytest.approx(0.25, abs=0.03)
    for bad in ("faults.oom_probability=1.5", "faults.oom_probability=-0.1"):
        with pytest.raises(FedquadError, match="faults probabilities"):
            load_config(None, [bad]).validate()
    with pytest.raises(FedquadError, match="summing to <= 1"):
        load_config(None, ["faults.oom_probability=0.6", "faults.crash_probability=0.5"]).validate()


def test_the_memory_ceiling_survives_a_checkpoint():
    capacity = CapacityEstimator()
    capacity.observe_out_of_memory(4, 9e6)
    capacity.observe_out_of_memory(4, 12e6)  # a larger failure says nothing new
    again = CapacityEstimator.from_dict(json.loads(json.dumps(capacity.to_dict())))
    assert again.memory_ceiling(4) == 9e6
    assert again.memory_ceiling(5) is None


RUN = [
    "data.max_train_samples=120",
    "data.max_test_samples=32",
    "data.partition='iid'",
    "model.max_length=24",
    "lora.depth=3",
    "federation.rounds=3",
    "federation.num_devices=5",
    "federation.devices_per_round=4",
    "federation.norm_bound=0",
    "federation.deadline_slack=10",  # a retry's extra step must not make it late
    "fleet.name='uniform'",
    "planner.epsilon=20",  # deep configs: room to fall back to a smaller depth
    "train.local_steps=1",
    "train.batch_size=8",
    "profile.timed_steps=1",
    "faults.oom_probability=0.4",
]


# End to end on the real trainer; the accounting rules on their own: tests/test_rounds.py
@pytest.mark.integration
def test_oom_rounds_are_accounted_for_and_the_device_is_planned_below_its_failure(tmp_path):
    method = "fedquad"  # falls back to more quantized blocks (fedquad-noquant: a smaller depth)
    config = load_config(None, [*RUN, f"method={method!r}", f"output_dir={tmp_path}"])
    result = fedquad.run(config)
    profile = CostProfile.from_dict(json.loads((result.run_dir / "cost_profile.json").read_text()))
    faults = load_config(None, RUN).faults
    ceiling: dict[int, int] = {}  # device -> predicted memory of the config it failed on
    fleet = load_fleet(result.run_dir / "fleet.toml")
    slowdown = devices_for_round(fleet, full_footprint(profile), 0, 1)[0].slowdown
    retried = replanned = 0
    for m in result.metrics:
        records = {d["device"]: d for d in m["devices"]}
        dropped = {int(k): v for k, v in m["dropped"].items()}
        oom = {int(k): v for k, v in m["out_of_memory"].items()}
        sat_out = {int(k) for k in m["sat_out"]}
        assert sat_out <= set(ceiling)  # only a device that ran out of memory fits nothing
        others = {int(k) for k in m["rejected"]} | sat_out
        assert set(records) | set(dropped) | others == set(m["sampled"])
        injected = {d for d in m["sampled"] if fault_of(faults, 0, m["round"], d) == OOM}
        assert set(oom) == injected  # every OOM device-round is in the metrics, no other
        for device in m["sampled"]:
            planned = None
            if device in oom:
                planned = DeviceConfig(**_config(oom[device]["failed_config"]))
                if "used_config" in oom[device]:
                    used = DeviceConfig(**_config(oom[device]["used_config"]))
                    record = records[device]
                    assert record["oom_retry"] == oom[device]
                    # aggregated as what it trained: the fallback's config and tensors
                    assert (record["depth"], record["quantized"]) == (used.depth, used.quantized)
                    assert record["bytes_up"] == upload_bytes(profile, used)
                    # the clock charged the failed attempt's first step, then the retry's steps
                    steps = step_seconds(profile, planned, 1.0) + step_seconds(profile, used, 1.0)
                    assert record["compute_seconds"] == pytest.approx(slowdown * steps)
                    assert memory_bytes(profile, used) < memory_bytes(profile, planned)
                    if method == "fedquad" and planned.quantized < planned.depth:
                        assert used.depth == planned.depth
                        assert used.quantized > planned.quantized
                    else:  # no quantization, or every block already quantized
                        assert used.depth < planned.depth
                        assert method == "fedquad" or used.quantized == 0
                    retried += 1
                else:
                    assert "out of memory" in dropped[device]
            elif device in records:
                record = records[device]
                planned = DeviceConfig(
                    depth=record["depth"], quantized=record["quantized"], bits=record["bits"]
                )
            if planned is not None and device in ceiling:
                # never given the failed config (or anything as large) again
                assert memory_bytes(profile, planned) < ceiling[device]
                replanned += 1
            if device in oom:
                need = memory_bytes(profile, planned)
                ceiling[device] = min(ceiling.get(device, need), need)
    assert retried >= 2 and replanned >= 1  # the path was exercised, not skipped


def _config(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
