"""Per-layer aggregation, exact on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from fedquad.aggregate import Update, aggregate_per_layer


def test_weighted_mean_over_the_devices_that_trained_each_tensor():
    state = {"a": torch.zeros(2), "b": torch.full((2,), 7.0), "head": torch.zeros(1)}
    updates = [
        Update({"a": torch.tensor([1.0, 2.0]), "head": torch.tensor([3.0])}, num_samples=1),
        Update({"a": torch.tensor([4.0, 8.0]), "head": torch.tensor([6.0])}, num_samples=3),
        Update({"head": torch.tensor([9.0])}, num_samples=2),
    ]
    new = aggregate_per_layer(state, updates)
    assert torch.equal(new["a"], torch.tensor([(1 + 12) / 4, (2 + 24) / 4]))
    assert torch.equal(new["head"], torch.tensor([(3 + 18 + 18) / 6]))
    # nobody trained b: it keeps its value (and is a copy, not the same tensor)
    assert torch.equal(new["b"], state["b"])
    assert new["b"] is not state["b"]


def test_uniform_weighting_ignores_sample_counts():
    state = {"a": torch.zeros(1)}
    updates = [Update({"a": torch.tensor([1.0])}, 1), Update({"a": torch.tensor([3.0])}, 100)]
    assert aggregate_per_layer(state, updates, "uniform")["a"].item() == 2.0


def test_unknown_tensor_is_rejected():
    with pytest.raises(KeyError, match="zzz"):
        aggregate_per_layer({"a": torch.zeros(1)}, [Update({"zzz": torch.zeros(1)}, 1)])
