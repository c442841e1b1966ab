"""The profiler against the trainer: predictions of the cost model from a measured profile must
match real measurements (saved bytes exactly for every (d, q); host step time within 25%)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fedquad.config import QuantConfig, TrainConfig
from fedquad.cost.model import CostProfile, saved_bytes, step_seconds
from fedquad.cost.profiler import ProfileSettings, StepTiming, cached_profile, profile_workload
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import attach_lora, build_structure, get_state
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.train.local import train_local
from helpers import make_batch

RANKS = [8, 8, 4, 4, 2, 2]  # per-block ranks from the output, so P_l differs per block


@pytest.fixture(scope="module")
def workload():
    torch.manual_seed(0)
    model = load_sequence_classifier("minilm", num_labels=2)
    parts = describe_model(model)
    structure = build_structure(parts.num_blocks, ranks=RANKS)
    return attach_lora(model, parts, structure), parts, structure


def _step(workload, batch, config, train, quant=None):
    model, parts, structure = workload
    return train_local(model, parts, structure, batch, config, train, 0, quant)


@pytest.mark.integration
def test_predicted_saved_bytes_equal_measured_for_every_config(workload):
    model, parts, structure = workload
    train = TrainConfig(local_steps=1, batch_size=4)
    quant = QuantConfig()
    batch = make_batch(4, 32)
    profile = profile_workload(
        model, parts, structure, batch, train, quant, ProfileSettings(timed_steps=1)
    )
    configs = [  # every (d, q) at 8 bits, both positions; every depth fully quantized at 4 and 2
        DeviceConfig(depth, q, bits=8, quant_position=position)
        for depth in range(1, parts.num_blocks + 1)
        for q in range(depth + 1)
        for position in (("bottom", "top") if 0 < q < depth else ("bottom",))
    ] + [DeviceConfig(d, d, bits=b) for b in (4, 2) for d in range(1, parts.num_blocks + 1)]
    for config in configs:
        measured = _step(workload, batch, config, train, quant).saved.total
        assert saved_bytes(profile, config) == measured, config
    # quantization really is charged less, and 4 bits less than 8
    full = DeviceConfig(6, 6, bits=8)
    assert saved_bytes(profile, full) < 0.3 * saved_bytes(profile, DeviceConfig(6, 0))
    assert profile.quant_ratio[4] < profile.quant_ratio[8]


@pytest.mark.integration
def test_given_time_terms_are_used_and_the_bytes_still_measured(workload):
    model, parts, structure = workload
    args = (model, parts, structure, make_batch(4, 16), TrainConfig(batch_size=4), QuantConfig())
    measured = profile_workload(*args, ProfileSettings(timed_steps=1))
    timing = StepTiming(f=1.0, g=2.0, o=3.0, c=4.0, timed=((1, 0, 9.0),))
    given = profile_workload(*args, ProfileSettings(timed_steps=1), timing=timing)
    assert (given.f, given.g, given.o, given.c) == (1.0, 2.0, 3.0, 4.0)
    assert given.extra["timed"] == [[1, 0, 9.0]]
    assert given.saved_bytes == measured.saved_bytes
    assert given.saved_bytes_quantized == measured.saved_bytes_quantized
    assert StepTiming.of(measured).f == measured.f and len(StepTiming.of(measured).timed) == 4


@pytest.mark.integration
def test_profile_counts_lora_and_head_parameters_per_block(workload):
    model, parts, structure = workload
    profile = profile_workload(
        model,
        parts,
        structure,
        make_batch(4, 16),
        TrainConfig(batch_size=4),
        QuantConfig(),
        ProfileSettings(timed_steps=1),
    )
    hidden = parts.hidden_size
    # A and B of q, k, v, attention output (hidden x hidden) and the two FFN linears
    for block, rank in zip(range(5, -1, -1), RANKS, strict=True):
        per_rank = 4 * 2 * hidden + 2 * (hidden + 4 * hidden)
        assert profile.lora_params[block] == rank * per_rank
    assert profile.head_params > 0
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(profile.lora_params) == lora


@pytest.mark.integration
def test_profiling_leaves_the_model_and_the_rng_as_they_were(workload):
    model, parts, structure = workload
    before = {k: v.clone() for k, v in get_state(model).items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    profile_workload(
        model,
        parts,
        structure,
        make_batch(4, 16),
        TrainConfig(batch_size=4),
        QuantConfig(),
        ProfileSettings(timed_steps=1),
    )
    assert torch.equal(torch.rand(3), expected)
    after = get_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.integration
@pytest.mark.slow  # timing: reliable on an idle machine only (make test-slow)
def test_predicted_step_time_within_25_percent_of_measured(workload):
    model, parts, structure = workload
    train = TrainConfig(batch_size=8, local_steps=6)
    batch = make_batch(8, 64, seed=1)
    profile = profile_workload(model, parts, structure, batch, train, QuantConfig())
    for depth in (1, 3, 6):
        config = DeviceConfig(depth)
        # the fastest step, as the profiler takes: interference from other processes only adds
        measured = min(_step(workload, batch, config, train).step_seconds[1:])
        predicted = step_seconds(profile, config)
        assert abs(predicted - measured) <= 0.25 * measured, (depth, predicted, measured)


def _tiny_profile(g: float = 0.1) -> CostProfile:
    return CostProfile(
        num_blocks=2,
        frozen_weight_bytes=10,
        lora_params=(1, 1),
        head_params=1,
        saved_bytes=(5, 5),
        saved_bytes_bottom=(4, 4),
        quant_ratio={8: 0.3},
        head_saved_bytes=1,
        f=0.1,
        g=g,
        o=0.01,
        c=0.2,
        extra={"timed": [[1, 0, 0.5], [2, 0, 0.9]]},
    )


def test_cached_profile_measures_once_per_key_and_survives_a_corrupt_entry(tmp_path):
    calls = []

    def measure(timing, g=0.1):
        calls.append(g)
        return _tiny_profile(g)

    key = {"model": "m", "batch_size": 4}
    first, path, fresh = cached_profile(key, measure, tmp_path)
    again, same_path, fresh_again = cached_profile(key, measure, tmp_path)
    assert fresh and not fresh_again and path == same_path and first == again
    assert len(calls) == 1
    _, other, _ = cached_profile({**key, "batch_size": 8}, lambda t: measure(t, 0.2), tmp_path)
    assert other != path and len(calls) == 2
    path.write_text("{not json")
    repaired, _, measured = cached_profile(key, measure, tmp_path)
    assert measured and repaired == first and len(calls) == 3
    _, _, refreshed = cached_profile(key, measure, tmp_path, refresh=True)
    assert refreshed and len(calls) == 4


def test_rank_layouts_of_one_workload_share_the_time_terms_measured_first(tmp_path):
    """The time terms are measured once per workload: another rank layout measures only its
    bytes, another batch size times again, and a refresh times again."""
    given = []

    def measure(timing, g):
        given.append(timing)
        profile = _tiny_profile(g)
        if timing is None:
            return profile
        return dataclasses.replace(profile, f=timing.f, g=timing.g, o=timing.o, c=timing.c)

    key = {"model": "m", "batch_size": 4, "ranks": [8, 8]}
    first, _, _ = cached_profile(key, lambda t: measure(t, 0.1), tmp_path)
    legend, _, fresh = cached_profile(
        {**key, "ranks": [16, 8]}, lambda t: measure(t, 0.9), tmp_path
    )
    assert (
        fresh
        and given[0] is None
        and given[1] == StepTiming(0.1, 0.1, 0.01, 0.2, ((1, 0, 0.5), (2, 0, 0.9)))
    )
    assert (legend.f, legend.g, legend.o, legend.c) == (first.f, first.g, first.o, first.c)
    other, _, _ = cached_profile({**key, "batch_size": 8}, lambda t: measure(t, 0.5), tmp_path)
    assert given[2] is None and other.g == 0.5
    cached_profile({**key, "ranks": [4, 4]}, lambda t: measure(t, 0.7), tmp_path, refresh=True)
    assert given[3] is None
    assert StepTiming(0.1, 0.1, 0.01, 0.2, ((1, 0, 0.5), (3, 0, 0.9))).shareable
    assert not StepTiming(0.1, 0.0, 0.01, 0.2, ((1, 0, 0.5), (1, 1, 0.6))).shareable


@pytest.mark.integration
def test_predicted_saved_bytes_of_fedra_subsets_equal_measured(workload):
    model, parts, structure = workload
    train = TrainConfig(local_steps=1, batch_size=4)
    batch = make_batch(4, 32)
    profile = profile_workload(
        model, parts, structure, batch, train, QuantConfig(), ProfileSettings(timed_steps=1)
    )
    assert profile.saved_bytes_path and profile.saved_bytes_path[2] < profile.saved_bytes[2]
    for blocks in [(0, 5), (1, 3, 5), (2, 4), (3, 4, 5), (0, 2, 3)]:
        config = DeviceConfig(depth=6 - blocks[0], blocks=blocks)
        measured = _step(workload, batch, config, train).saved.total
        assert saved_bytes(profile, config) == measured, blocks


@pytest.mark.integration
def test_the_methods_rank_layouts_share_one_timing_key(tmp_path):
    """FedQuad's uniform ranks, LEGEND's and HetLoRA's layouts of one workload differ in their
    cache keys only by the fields the time terms are shared across."""
    from fedquad.config import load_config
    from fedquad.cost.profiler import TIMING_FREE
    from fedquad.workbench import build_workbench, timing_key, workload_key

    base = [
        "data.max_train_samples=64",
        "data.max_test_samples=16",
        "model.max_length=16",
        "federation.num_devices=4",
        "federation.devices_per_round=2",
        "fleet.name='uniform'",
        f"output_dir='{tmp_path}'",
    ]
    benches = {
        method: build_workbench(load_config(None, [*base, f"method='{method}'"]))
        for method in ("fedquad", "legend", "hetlora")
    }
    keys = {m: workload_key(b, ProfileSettings()) for m, b in benches.items()}
    for method in ("legend", "hetlora"):
        differ = {k for k in keys["fedquad"] if keys[method][k] != keys["fedquad"][k]}
        assert "ranks" in differ and differ <= set(TIMING_FREE), method
    # and one reference timing serves them all
    assert len({json.dumps(timing_key(b), sort_keys=True) for b in benches.values()}) == 1


def test_padded_batches_are_profiled_at_the_full_length_never_trimmed(workload):
    model, parts, structure = workload
    train = TrainConfig(local_steps=1, batch_size=4)  # trim_batches on, as by default
    quant, settings = QuantConfig(), ProfileSettings(timed_steps=1)
    timing = StepTiming(f=1.0, g=2.0, o=3.0, c=4.0, timed=((1, 0, 9.0), (6, 0, 9.0)))
    padded = make_batch(4, 32)
    padded["attention_mask"][:, 10:] = 0  # every sample is shorter than the sequence length
    full = make_batch(4, 32)
    args = (model, parts, structure)
    profiled = profile_workload(*args, padded, train, quant, settings, timing=timing)
    reference = profile_workload(*args, full, train, quant, settings, timing=timing)
    assert profiled.saved_bytes == reference.saved_bytes
    assert profiled.saved_bytes_bottom == reference.saved_bytes_bottom
    assert profiled.saved_bytes_bottom_checkpointed == reference.saved_bytes_bottom_checkpointed
    # while the trainer itself cuts the same batch, and saves less
    step = _step(workload, padded, DeviceConfig(depth=6), train)
    assert step.trimmed
    assert step.saved.total < saved_bytes(profiled, DeviceConfig(depth=6))
