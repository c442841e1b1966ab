"""Cost model (docs/methods.md §3) on hand-made profiles: exact bytes, linear times, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedquad.cost.fleet import Device
from fedquad.cost.model import (
    CostProfile,
    deepest_that_fits,
    download_bytes,
    fewest_that_fit,
    fit_times,
    full_footprint,
    largest_feasible_depth,
    memory_bytes,
    min_quantized,
    round_time,
    step_seconds,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from helpers import tiny_profile as tiny


def workload() -> CostProfile:
    """L = 6, activations dominate: M(d, 0) = 1_140_000 + 1_120_000·d, footprint 7_860_000."""
    return CostProfile(
        num_blocks=6,
        frozen_weight_bytes=1_000_000,
        lora_params=(10_000,) * 6,
        head_params=2_000,
        saved_bytes=(1_000_000,) * 6,
        saved_bytes_bottom=(800_000,) * 6,
        quant_ratio={8: 0.3, 4: 0.2, 2: 0.1},
        head_saved_bytes=100_000,
        f=0.01,
        g=0.03,
        o=0.004,
        c=0.2,
    )


# --------------------------------------------------------------------------- memory


def test_memory_formula_exact():
    p = tiny()
    # W + (30+40)·16 + (10+20)·4 + A_bottom[2] + A[3] + A_head + slack
    assert memory_bytes(p, DeviceConfig(depth=2)) == 1000 + 1120 + 120 + 270 + 400 + 50 + 7
    assert memory_bytes(p, DeviceConfig(depth=1)) == 1000 + 640 + 240 + 360 + 57
    # bottom quantization hits the span's lowest block (bottom measurement), top the highest
    assert memory_bytes(p, DeviceConfig(depth=2, quantized=1)) == 2967 - 270 + 135
    assert memory_bytes(p, DeviceConfig(depth=2, quantized=1, quant_position="top")) == 2767
    assert memory_bytes(p, DeviceConfig(depth=2, quantized=2, bits=4)) == 2297 + 81 + 120
    assert full_footprint(p) == 1000 + 100 * 16 + (90 + 200 + 300 + 400) + 57


def test_sgd_has_no_optimizer_state():
    assert memory_bytes(tiny(optimizer_bytes_per_param=0), DeviceConfig(depth=2)) == 2967 - 70 * 8


def test_memory_falls_with_more_quantized_blocks_and_fewer_bits():
    p = workload()
    for depth in range(1, 7):
        by_q = [memory_bytes(p, DeviceConfig(depth=depth, quantized=q)) for q in range(depth + 1)]
        assert all(a > b for a, b in zip(by_q, by_q[1:], strict=False))
        by_bits = [
            memory_bytes(p, DeviceConfig(depth=depth, quantized=depth, bits=b)) for b in (8, 4, 2)
        ]
        assert by_bits[0] > by_bits[1] > by_bits[2]


def test_memory_rejects_bad_configs():
    p = tiny()
    with pytest.raises(FedquadError, match="depth 5"):
        memory_bytes(p, DeviceConfig(depth=5))
    with pytest.raises(FedquadError, match="q = 3"):
        memory_bytes(p, DeviceConfig(depth=2, quantized=3))
    with pytest.raises(FedquadError, match="bits = 3"):
        memory_bytes(p, DeviceConfig(depth=2, quantized=1, bits=3))


def test_profile_checks_lengths():
    with pytest.raises(FedquadError, match="saved_bytes has 3 entries"):
        tiny(saved_bytes=(1, 2, 3))


def test_profile_json_round_trip():
    p = tiny()
    back = CostProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert memory_bytes(back, DeviceConfig(depth=3, quantized=2, bits=2)) == memory_bytes(
        p, DeviceConfig(depth=3, quantized=2, bits=2)
    )


# --------------------------------------------------------------------------- time, comm


def test_step_time_linear_in_depth_and_quantized():
    p = workload()
    t = {
        (d, q): step_seconds(p, DeviceConfig(depth=d, quantized=q))
        for d in range(1, 7)
        for q in (0, 1)
    }
    for d in range(1, 6):
        assert t[(d + 1, 0)] - t[(d, 0)] == pytest.approx(p.g)
        assert t[(d, 1)] - t[(d, 0)] == pytest.approx(p.o)
    assert t[(1, 0)] == pytest.approx(6 * p.f + p.g + p.c)
    slowed = step_seconds(p, DeviceConfig(depth=3, quantized=1), slowdown=2.66)
    assert slowed == pytest.approx(2.66 * t[(3, 1)])


def test_upload_is_top_blocks_plus_head():
    p = tiny()
    assert upload_bytes(p, 1) == 4 * (40 + 5)
    assert upload_bytes(p, 3) == 4 * (20 + 30 + 40 + 5)
    assert download_bytes(p) == 4 * (100 + 5) == upload_bytes(p, 4)


def test_round_time_adds_compute_and_transfers():
    p = tiny()
    device = Device(0, "x", slowdown=2.0, memory_budget_bytes=0, uplink=10.0, downlink=42.0)
    config = DeviceConfig(depth=2, quantized=1)
    rt = round_time(p, config, device, local_steps=5)
    assert rt.compute == pytest.approx(5 * 2.0 * (4 * 0.01 + 2 * 0.02 + 0.005 + 0.1))
    assert rt.download == pytest.approx(4 * 105 / 42.0)
    assert rt.upload == pytest.approx(4 * 75 / 10.0)
    assert rt.total == pytest.approx(rt.compute + rt.download + rt.upload)


# --------------------------------------------------------------------------- feasibility


def test_fractional_budgets_scale_with_the_footprint():
    p = workload()
    assert full_footprint(p) == 7_860_000
    data = p.to_dict()
    for key in ("frozen_weight_bytes", "head_saved_bytes"):
        data[key] *= 2
    for key in ("lora_params", "saved_bytes", "saved_bytes_bottom"):
        data[key] = [2 * v for v in data[key]]
    doubled = CostProfile.from_dict(data)
    assert full_footprint(doubled) == 2 * 7_860_000
    # a fraction of the footprint means the same thing at any model size; bytes do not
    for frac in (0.4, 0.7, 1.2, 2.0):
        for quantize in (False, True):
            a = largest_feasible_depth(p, int(frac * full_footprint(p)), quantize=quantize)
            b = largest_feasible_depth(
                doubled, int(frac * full_footprint(doubled)), quantize=quantize
            )
            assert a == b
    assert largest_feasible_depth(doubled, int(1.2 * full_footprint(p))) == 2


def test_largest_feasible_depth_default_tiers():
    p = workload()
    full = full_footprint(p)
    small, medium, large = (int(x * full) for x in (0.4, 1.2, 2.0))
    # small: limit 0.9·0.4·F = 2_829_600; M(d,0) = 1_140_000 + 1_120_000·d → d = 1
    assert largest_feasible_depth(p, small) == 1
    # all quantized: M = 1_280_000 + 420_000·d (8 bit), 1_300_000 + 320_000·d (4), … (2)
    assert largest_feasible_depth(p, small, quantize=True, bits=8) == 3
    assert largest_feasible_depth(p, small, quantize=True, bits=4) == 4
    assert largest_feasible_depth(p, small, quantize=True, bits=2) == 6
    # medium just holds full depth after κ = 0.1 (1.08·F), not after κ = 0.2 (0.96·F)
    assert largest_feasible_depth(p, medium) == 6
    assert largest_feasible_depth(p, medium, kappa=0.2) == 5
    # large comfortably: even κ = 0.45 leaves 1.1·F
    assert largest_feasible_depth(p, large, kappa=0.45) == 6
    assert largest_feasible_depth(p, 1_000_000) is None
    assert largest_feasible_depth(p, large, max_depth=3) == 3


def test_min_quantized_is_fewest_that_fit():
    p = workload()
    small = int(0.4 * full_footprint(p))
    assert min_quantized(p, 1, small) == 0
    assert min_quantized(p, 2, small) == 1  # 3_380_000 - 560_000 = 2_820_000 <= 2_829_600
    assert min_quantized(p, 3, small) == 3
    assert min_quantized(p, 4, small) is None


def test_fit_searches_are_generic_over_what_k_counts():
    memory = {0: 9, 1: 7, 2: 5, 3: 6, 4: 3}.__getitem__  # not monotone
    assert fewest_that_fit(memory, 6, 4) == 2
    assert fewest_that_fit(memory, 9, 4) == 0
    assert fewest_that_fit(memory, 6, 1) is None  # only 0 … most are tried
    assert fewest_that_fit(memory, 2, 4) is None
    # the deepest that fits, past a depth that does not (1 … deepest; 0 is no depth)
    assert deepest_that_fits(memory, 6, 4) == 4
    assert deepest_that_fits(memory, 6, 3) == 3
    assert deepest_that_fits(memory, 5.5, 3) == 2
    assert deepest_that_fits(memory, 4, 3) is None


# --------------------------------------------------------------------------- calibration


def test_fit_times_recovers_synthetic_coefficients():
    f, g, o, c, L = 0.01, 0.03, 0.004, 0.2, 6
    rng = np.random.default_rng(0)
    samples = [
        (d, q, L * f + d * g + q * o + c + float(rng.normal(0, 1e-5)))
        for d in range(1, L + 1)
        for q in range(d + 1)
    ]
    fit = fit_times(samples, L, forward_per_block=f)
    assert fit == pytest.approx((f, g, o, c), abs=1e-4)
    # without a forward measurement only L·f + c is identified: f = 0, c absorbs it
    f0, g0, o0, c0 = fit_times(samples, L)
    assert f0 == 0.0
    assert (g0, o0, c0) == pytest.approx((g, o, L * f + c), abs=1e-4)


def test_fit_times_without_quantized_samples_and_bad_input():
    samples = [(d, 0, 0.5 + 0.1 * d) for d in (1, 2, 3)]
    assert fit_times(samples, 4) == pytest.approx((0.0, 0.1, 0.0, 0.5))
    # one depth (global LoRA depth 1): g folds into the constant, predictions there are exact
    assert fit_times([(1, 0, 1.0), (1, 1, 1.25)], 4, forward_per_block=0.1) == pytest.approx(
        (0.1, 0.0, 0.25, 0.6)
    )
    with pytest.raises(FedquadError, match="no samples"):
        fit_times([], 4)
    with pytest.raises(FedquadError, match="vary q"):
        fit_times([(1, 1, 1.0), (2, 2, 1.1), (3, 3, 1.2)], 4)


def test_planner_path_picks_the_same_blocks_as_the_trainer():
    # largest_feasible_depth / min_quantized choose blocks without a DeviceConfig; they must agree.
    from fedquad.cost.model import _memory

    p = tiny()
    for depth in range(1, 5):
        for q in range(depth + 1):
            for position in ("bottom", "top"):
                config = DeviceConfig(depth=depth, quantized=q, bits=2, quant_position=position)
                assert _memory(p, depth, q, 2, position) == memory_bytes(p, config)
