"""Capacity estimation (docs/methods.md §3): per-device moving averages of what devices report."""

from __future__ import annotations

import json

import pytest

from fedquad.cost.fleet import Device
from fedquad.cost.model import memory_bytes, saved_bytes, step_seconds
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.server.capacity import CapacityEstimator, Report
from helpers import tiny_profile as tiny

DECLARED = Device(3, "small", slowdown=2.66, memory_budget_bytes=10**6, uplink=2e6, downlink=15e6)
CONFIG = DeviceConfig(depth=2, quantized=1)


def report(step: float, up: float = 1.5e6, down: float = 12e6, saved: int | None = None) -> Report:
    return Report(3, CONFIG, step_seconds=step, uplink=up, downlink=down, saved_bytes=saved)


# --------------------------------------------------------------------------- saved bytes


def test_saved_bytes_are_the_activation_terms_of_memory():
    p = tiny()
    # A_bottom[2] + A[3] + A_head; the bottom block quantized at ρ = 0.5.
    assert saved_bytes(p, DeviceConfig(depth=2)) == 270 + 400 + 50
    assert saved_bytes(p, CONFIG) == 135 + 400 + 50
    assert (
        saved_bytes(p, DeviceConfig(depth=2, quantized=1, quant_position="top")) == 270 + 200 + 50
    )
    for depth in range(1, 5):
        for q in range(depth + 1):
            config = DeviceConfig(depth=depth, quantized=q, bits=4)
            # Quantizing changes only the activation terms of M(d, q).
            plain = DeviceConfig(depth=depth)
            assert memory_bytes(p, config) - saved_bytes(p, config) == memory_bytes(
                p, plain
            ) - saved_bytes(p, plain)
    unmeasured = tiny(quant_ratio={8: 0.5, 4: 0.3})  # a profile that never measured 2 bits
    with pytest.raises(FedquadError, match="bits = 2"):
        saved_bytes(unmeasured, DeviceConfig(depth=2, quantized=1, bits=2))


# --------------------------------------------------------------------------- estimates


def test_declared_profile_before_any_report():
    estimator = CapacityEstimator()
    assert estimator.estimate(DECLARED) == DECLARED
    assert estimator.memory_factor(3) == 1.0


def test_first_report_sets_the_estimate():
    p = tiny()
    estimator = CapacityEstimator(gamma=0.7)
    estimator.observe(report(0.9, saved=1170), p)
    got = estimator.estimate(DECLARED)
    assert got.slowdown == 0.9 / step_seconds(p, CONFIG, 1.0)
    assert (got.uplink, got.downlink) == (1.5e6, 12e6)
    assert (got.id, got.tier, got.memory_budget_bytes) == (3, "small", 10**6)
    assert estimator.memory_factor(3) == 1170 / saved_bytes(p, CONFIG) == 2.0


def test_second_report_follows_the_moving_average():
    p = tiny()
    gamma = 0.7
    estimator = CapacityEstimator(gamma)
    estimator.observe(report(0.9, up=1e6, saved=585), p)
    estimator.observe(report(0.6, up=3e6, down=9e6, saved=1000), p)
    host = step_seconds(p, CONFIG, 1.0)
    got = estimator.estimate(DECLARED)
    assert got.slowdown == gamma * (0.9 / host) + (1 - gamma) * (0.6 / host)
    assert got.uplink == gamma * 1e6 + (1 - gamma) * 3e6
    assert got.downlink == gamma * 12e6 + (1 - gamma) * 9e6
    expected = saved_bytes(p, CONFIG)
    assert estimator.memory_factor(3) == gamma * (585 / expected) + (1 - gamma) * (1000 / expected)


def test_report_without_saved_bytes_keeps_the_memory_factor():
    p = tiny()
    estimator = CapacityEstimator()
    estimator.observe(report(0.9), p)
    assert estimator.memory_factor(3) == 1.0
    estimator.observe(report(0.9, saved=1170), p)
    estimator.observe(report(0.9), p)
    assert estimator.memory_factor(3) == 2.0  # first measurement: set, not blended with 1.0


def test_gamma_zero_tracks_the_last_report():
    p = tiny()
    estimator = CapacityEstimator(gamma=0.0)
    for step, up in ((0.9, 1e6), (0.3, 2.5e6), (1.2, 0.5e6)):
        estimator.observe(report(step, up=up), p)
        got = estimator.estimate(DECLARED)
        assert got.slowdown == step / step_seconds(p, CONFIG, 1.0)
        assert got.uplink == up


def test_devices_are_independent():
    p = tiny()
    estimator = CapacityEstimator()
    other = Device(4, "large", slowdown=1.0, memory_budget_bytes=10**7, uplink=3e6, downlink=15e6)
    estimator.observe(report(0.9, saved=1170), p)
    assert estimator.estimate(other) == other
    assert estimator.memory_factor(4) == 1.0
    estimator.observe(Report(4, DeviceConfig(depth=4), 0.2, 2e6, 14e6), p)
    assert estimator.estimate(DECLARED).slowdown == 0.9 / step_seconds(p, CONFIG, 1.0)
    assert estimator.estimate(other).slowdown == 0.2 / step_seconds(p, DeviceConfig(depth=4))


def test_round_trip_is_exact():
    p = tiny()
    estimator = CapacityEstimator(gamma=0.55)
    estimator.observe(report(0.9, saved=1170), p)
    estimator.observe(report(0.7, up=1.1e6), p)
    estimator.observe(Report(12, DeviceConfig(depth=3, quantized=3, bits=4), 0.31, 2.2e6, 1e7), p)
    data = estimator.to_dict()
    back = CapacityEstimator.from_dict(json.loads(json.dumps(data)))
    assert back.to_dict() == data and back.gamma == 0.55
    twelve = Device(12, "medium", 1.44, 10**6, 2e6, 15e6)
    for declared in (DECLARED, twelve):
        assert back.estimate(declared) == estimator.estimate(declared)
        assert back.memory_factor(declared.id) == estimator.memory_factor(declared.id)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: CapacityEstimator(gamma=1.0), r"gamma = 1.0 .*0 <= gamma < 1"),
        (lambda: CapacityEstimator(gamma=-0.1), r"gamma = -0.1 .*0 <= gamma < 1"),
        (lambda: CapacityEstimator(gamma="x"), r"gamma = 'x' .*0 <= gamma < 1"),
        (lambda: report(0.0), r"step_seconds = 0.0 .*> 0"),
        (lambda: report(0.9, up=-1.0), r"uplink = -1.0 .*> 0"),
        (lambda: report(0.9, saved=0), r"saved_bytes = 0 .*whole number > 0"),
        (lambda: CapacityEstimator.from_dict({"gama": 0.5}), r"unknown field 'gama'"),
        (
            lambda: CapacityEstimator.from_dict({"devices": {"3": {"speed": 1.0}}}),
            r"unknown field 'speed'",
        ),
        (lambda: CapacityEstimator.from_dict({"devices": {"a": {}}}), r"device 'a'"),
        (
            lambda: CapacityEstimator().observe(Report(3, DeviceConfig(depth=5), 1, 1, 1), tiny()),
            r"depth 5",
        ),
    ],
)
def test_bad_input_is_one_line(call, match):
    with pytest.raises(FedquadError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
