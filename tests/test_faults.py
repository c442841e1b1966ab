"""Injected crashes, stragglers past the deadline and NaN updates: the round goes on with the
others, and the metrics say who was left out and why."""

from __future__ import annotations

import pytest

import fedquad
from fedquad.config import FaultConfig, load_config
from fedquad.server.capacity import CapacityEstimator
from fedquad.server.configure import extra_devices
from fedquad.server.faults import CORRUPT, CRASH, DELAY, fault_of

RUN = [
    "method='fedquad'",
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "data.partition='iid'",
    "model.max_length=32",
    "federation.rounds=3",
    "federation.num_devices=8",
    "federation.devices_per_round=6",
    "federation.norm_bound=0",
    "fleet.name='uniform'",
    "train.local_steps=2",
    "train.batch_size=8",
    "profile.timed_steps=1",
    "faults.crash_probability=0.2",
    "faults.delay_probability=0.2",
    "faults.corrupt_probability=0.2",
    "faults.delay_factor=50.0",  # late whatever share of the round compute has on this host
]


def test_fault_draws_follow_their_probabilities_and_are_seeded():
    faults = FaultConfig(crash_probability=0.1, delay_probability=0.2, corrupt_probability=0.3)
    draws = [fault_of(faults, 0, r, d) for r in range(1, 101) for d in range(50)]
    share = {k: draws.count(k) / len(draws) for k in (CRASH, DELAY, CORRUPT, None)}
    assert share[CRASH] == pytest.approx(0.1, abs=0.02)
    assert share[DELAY] == pytest.approx(0.2, abs=0.02)
    assert share[CORRUPT] == pytest.approx(0.3, abs=0.02)
    assert draws == [fault_of(faults, 0, r, d) for r in range(1, 101) for d in range(50)]
    assert fault_of(FaultConfig(), 0, 1, 1) is None


@pytest.mark.integration
def test_faulty_devices_are_left_out_with_their_reason_and_the_round_goes_on(tmp_path):
    result = fedquad.run(load_config(None, [*RUN, f"output_dir={tmp_path}"]))
    faults = load_config(None, RUN).faults
    seen = set()
    for m in result.metrics:
        aggregated = {d["device"] for d in m["devices"]}
        dropped = {int(k): v for k, v in m["dropped"].items()}
        rejected = {int(k): v for k, v in m["rejected"].items()}
        assert aggregated | set(dropped) | set(rejected) == set(m["sampled"])
        for device in m["sampled"]:
            kind = fault_of(faults, 0, m["round"], device)
            seen.add(kind)
            if kind == CRASH:
                assert "crashed" in dropped[device]
            elif kind == DELAY:
                assert "missed the deadline" in dropped[device]
            elif kind == CORRUPT:
                assert "NaN" in rejected[device]
            else:
                assert device in aggregated
        if any(fault_of(faults, 0, m["round"], d) == DELAY for d in m["sampled"]):
            assert m["virtual_seconds"] == pytest.approx(m["round_deadline"])
        assert 0 <= m["test_accuracy"] <= 1
    assert {CRASH, DELAY, CORRUPT, None} <= seen  # every kind happened at least once


@pytest.mark.parametrize(
    ("rate", "fraction", "extra"),
    [(0.0, 0.5, 0), (0.2, 0.0, 0), (0.2, 0.5, 2), (0.25, 0.5, 2), (0.25, 0.2, 1), (1.0, 0.5, 3)],
)
def test_over_selection_makes_up_for_the_expected_failures_within_its_cap(rate, fraction, extra):
    assert extra_devices(6, rate, fraction) == extra


def test_failure_rate_is_a_moving_average_that_survives_a_checkpoint():
    capacity = CapacityEstimator(gamma=0.5)
    capacity.observe_round(planned=4, aggregated=2)
    capacity.observe_round(planned=4, aggregated=4)
    assert capacity.failure_rate == pytest.approx(0.5 * (0.5 * 0.5))
    again = CapacityEstimator.from_dict(capacity.to_dict())
    assert again.failure_rate == capacity.failure_rate
