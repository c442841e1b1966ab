"""Update checks before aggregation: each kind of bad update is rejected with its reason."""

from __future__ import annotations

import torch

from fedquad.device_config import DeviceConfig
from fedquad.server.configure import assigned_names
from fedquad.server.validate import norm_outliers, update_distance, update_problem

A3 = "base_model.model.encoder.layer.3.attention.query.lora_A.default.weight"
B3 = "base_model.model.encoder.layer.3.attention.query.lora_B.default.weight"
A5 = "base_model.model.encoder.layer.5.attention.query.lora_A.default.weight"
HEAD = "base_model.model.classifier.modules_to_save.default.weight"
STATE = {
    A3: torch.zeros(8, 4),
    B3: torch.zeros(4, 8),
    A5: torch.zeros(8, 4),
    HEAD: torch.zeros(2, 4),
}


def test_assigned_tensors_are_the_trained_blocks_and_the_head():
    assert assigned_names(STATE, DeviceConfig(depth=1), 6) == {A5, HEAD}
    assert assigned_names(STATE, DeviceConfig(depth=3), 6) == {A3, B3, A5, HEAD}
    assert assigned_names(STATE, DeviceConfig(depth=3, blocks=(3, 5)), 6) == {A3, B3, A5, HEAD}
    assert assigned_names(STATE, DeviceConfig(depth=2, blocks=(4, 5)), 6) == {A5, HEAD}


def test_each_bad_tensor_is_named_with_its_problem():
    everything = set(STATE)
    good = {A5: torch.ones(8, 4), HEAD: torch.ones(2, 4)}
    assert update_problem(good, STATE, everything) is None
    nan = {A5: torch.full((8, 4), float("nan"))}
    assert "NaN or Inf" in update_problem(nan, STATE, everything)
    inf = {HEAD: torch.tensor([[float("inf")] * 4] * 2)}
    assert "NaN or Inf" in update_problem(inf, STATE, everything)
    assert "shape (8, 5)" in update_problem({A5: torch.ones(8, 5)}, STATE, everything)
    assert "dtype torch.float64" in update_problem(
        {A5: torch.ones(8, 4, dtype=torch.float64)}, STATE, everything
    )
    assert "not assigned" in update_problem({A3: torch.ones(8, 4)}, STATE, {A5, HEAD})
    assert "not part of the model" in update_problem({"x.weight": torch.ones(1)}, STATE, everything)
    assert update_problem({}, STATE, everything) == "the update is empty"


def test_rank_truncations_pass_but_other_partial_shapes_do_not():
    everything = set(STATE)
    assert update_problem({A3: torch.ones(2, 4), B3: torch.ones(4, 2)}, STATE, everything) is None
    assert "shape" in update_problem({A3: torch.ones(8, 2)}, STATE, everything)  # wrong axis
    assert "shape" in update_problem({HEAD: torch.ones(1, 4)}, STATE, everything)


def test_a_far_update_is_an_outlier_of_its_round():
    distances = {0: 1.0, 1: 1.2, 2: 0.9, 3: 50.0}
    outliers = norm_outliers(distances, bound=10.0)
    assert set(outliers) == {3} and "median" in outliers[3]
    assert norm_outliers(distances, bound=0) == {}
    assert norm_outliers({0: 1.0, 1: 100.0}, bound=10.0) == {}  # too few to judge
    assert update_distance({A5: torch.full((8, 4), 2.0)}, STATE) == 2.0 * (32**0.5)
    assert update_distance({A3: torch.ones(2, 4)}, STATE) == 8**0.5  # the truncated part
