"""Aggregation rules (per-layer, zero-padded, SVD), exact on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from fedquad.aggregate import (
    Update,
    aggregate,
    aggregate_per_layer,
    aggregate_svd,
    aggregate_zero_padded,
)
from fedquad.errors import FedquadError

A, B = "m.lora_A.default.weight", "m.lora_B.default.weight"
A2, B2 = "n.lora_A.default.weight", "n.lora_B.default.weight"


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


@pytest.mark.parametrize("rule", [aggregate_per_layer, aggregate_zero_padded, aggregate_svd])
def test_unknown_tensor_is_a_clear_error(rule):
    with pytest.raises(FedquadError, match="update carries tensor 'zzz' that the global state"):
        rule({"a": torch.zeros(1)}, [Update({"zzz": torch.zeros(1)}, 1)])


def test_per_layer_rejects_a_truncated_tensor():
    state = {A: torch.zeros(4, 3)}
    with pytest.raises(FedquadError, match=r"'m.lora_A.default.weight' has shape \(2, 3\)"):
        aggregate_per_layer(state, [Update({A: torch.zeros(2, 3)}, 1)])


# --------------------------------------------------------------------------- zero-padded (HetLoRA)


def test_zero_padded_pads_rows_of_a_and_columns_of_b_then_averages():
    state = {
        A: torch.full((3, 2), 5.0),
        B: torch.full((2, 3), 5.0),
        A2: torch.full((1, 2), 9.0),
        "head": torch.zeros(1),
    }
    updates = [
        Update(
            {
                A: torch.tensor([[1.0, 2.0]]),
                B: torch.tensor([[1.0], [2.0]]),
                "head": torch.tensor([3.0]),
            },
            1,
        ),
        Update(
            {A: torch.full((3, 2), 4.0), B: torch.full((2, 3), 4.0), "head": torch.tensor([7.0])}, 3
        ),
    ]
    new = aggregate_zero_padded(state, updates)
    # rank-1 device: (1·[1, 2] + 3·4) / 4 in its row, (1·0 + 3·4) / 4 beyond its rank
    assert torch.equal(new[A], torch.tensor([[3.25, 3.5], [3.0, 3.0], [3.0, 3.0]]))
    assert torch.equal(new[B], torch.tensor([[3.25, 3.0, 3.0], [3.5, 3.0, 3.0]]))
    assert torch.equal(new["head"], torch.tensor([6.0]))
    assert torch.equal(new[A2], state[A2])  # nobody trained it


def test_zero_padded_rejects_a_cut_along_the_wrong_axis():
    state = {A: torch.zeros(4, 3)}
    with pytest.raises(FedquadError, match="truncation along the rank axis 0"):
        aggregate_zero_padded(state, [Update({A: torch.zeros(4, 2)}, 1)])


# --------------------------------------------------------------------------- SVD (FlexLoRA)


def _factors(out, inp, rank, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(out, rank, generator=g, dtype=torch.float64)
    a = torch.randn(rank, inp, generator=g, dtype=torch.float64)
    return b, a


def _global(rank=4, out=6, inp=5):
    b, a = _factors(out, inp, rank, seed=99)
    b2, a2 = _factors(out, inp, rank, seed=98)
    return {A: a, B: b, A2: a2, B2: b2, "head": torch.zeros(2, dtype=torch.float64)}


def test_svd_reproduces_the_mean_product_when_its_rank_fits():
    state = _global(rank=4)
    b1, a1 = _factors(6, 5, 1, seed=1)
    b2, a2 = _factors(6, 5, 2, seed=2)
    head = torch.tensor([1.0, 2.0], dtype=torch.float64)
    updates = [Update({A: a1, B: b1, "head": head}, 1), Update({A: a2, B: b2, "head": 3 * head}, 3)]
    new = aggregate_svd(state, updates)
    mean = (b1 @ a1 + 3 * b2 @ a2) / 4  # rank ≤ 3 ≤ 4
    assert new[B].shape == (6, 4) and new[A].shape == (4, 5)
    assert torch.allclose(new[B] @ new[A], mean, rtol=0, atol=1e-10)
    assert torch.equal(new["head"], torch.tensor([2.5, 5.0], dtype=torch.float64))
    assert torch.equal(new[A2], state[A2]) and torch.equal(new[B2], state[B2])


def test_svd_preserves_identical_full_rank_updates():
    state = _global(rank=4)
    b, a = _factors(6, 5, 4, seed=3)
    new = aggregate_svd(state, [Update({A: a, B: b}, n) for n in (1, 2, 5)])
    assert torch.allclose(new[B] @ new[A], b @ a, rtol=0, atol=1e-10)


def test_svd_keeps_the_best_rank_r_approximation_and_the_global_dtype():
    state = {k: v.float() for k, v in _global(rank=2).items()}
    terms = [_factors(6, 5, 2, seed=s) for s in (4, 5)]
    new = aggregate_svd(state, [Update({A: a.float(), B: b.float()}, 1) for b, a in terms])
    mean = sum(b @ a for b, a in terms) / 2  # rank 4 > 2
    u, s, vh = torch.linalg.svd(mean)
    best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    assert new[A].dtype == torch.float32 and new[B].dtype == torch.float32
    assert torch.allclose((new[B] @ new[A]).double(), best, atol=1e-5)
    # the first component alone is the best rank-1 approximation: what a rank-1 device gets
    rank1 = u[:, :1] @ torch.diag(s[:1]) @ vh[:1]
    assert torch.allclose((new[B][:, :1] @ new[A][:1]).double(), rank1, atol=1e-5)


def test_svd_needs_both_factors_at_one_rank():
    state = _global(rank=4)
    b, a = _factors(6, 5, 2, seed=6)
    with pytest.raises(FedquadError, match="without 'm.lora_B.default.weight'"):
        aggregate_svd(state, [Update({A: a}, 1)])
    with pytest.raises(FedquadError, match="has rank 2 but its B has 1"):
        aggregate_svd(state, [Update({A: a, B: b[:, :1]}, 1)])


# --------------------------------------------------------------------------- by name


def test_rule_by_name():
    state = _global(rank=4)
    b, a = _factors(6, 5, 2, seed=7)
    updates = [Update({A: a, B: b}, 1)]
    assert aggregate("svd", state, updates)[A].equal(aggregate_svd(state, updates)[A])
    assert aggregate("zeropad", state, updates)[A].equal(aggregate_zero_padded(state, updates)[A])
    full = [Update({"head": torch.ones(2, dtype=torch.float64)}, 1)]
    assert aggregate("perlayer", state, full, "uniform")["head"].equal(torch.ones(2).double())
    with pytest.raises(
        FedquadError, match="rule 'fedavg' is unknown: use one of perlayer, zeropad, svd"
    ):
        aggregate("fedavg", state, updates)


def test_zero_padded_keeps_components_beyond_every_rank_trained_this_round():
    from fedquad.aggregate import aggregate_zero_padded

    a_name, b_name = "m.lora_A.default.weight", "m.lora_B.default.weight"
    old = {a_name: torch.full((4, 3), 7.0), b_name: torch.full((2, 4), 5.0)}
    updates = [
        Update({a_name: torch.ones(2, 3), b_name: torch.ones(2, 2)}, 1),
        Update({a_name: torch.zeros(1, 3), b_name: torch.zeros(2, 1)}, 1),
    ]
    new = aggregate_zero_padded(old, updates)
    # row 0: both devices (1 and 0); row 1: device 1 and the other's zero padding
    assert torch.equal(new[a_name][:2], torch.tensor([[0.5] * 3, [0.5] * 3]))
    assert torch.equal(new[b_name][:, :2], torch.full((2, 2), 0.5))
    # rows / columns 2 and 3: no device had that rank this round, they keep their values
    assert torch.equal(new[a_name][2:], old[a_name][2:])
    assert torch.equal(new[b_name][:, 2:], old[b_name][:, 2:])


def test_robust_median_and_trimmed_mean_ignore_one_wild_update():
    from fedquad.aggregate import aggregate_robust

    old = {"w": torch.zeros(2), "untouched": torch.ones(1)}
    values = [1.0, 2.0, 3.0, 4.0, 1000.0]
    updates = [Update({"w": torch.tensor([v, -v])}, 10 * (i + 1)) for i, v in enumerate(values)]
    median = aggregate_robust(old, updates, "median")
    assert torch.equal(median["w"], torch.tensor([3.0, -3.0]))
    trimmed = aggregate_robust(old, updates, "trimmed-mean", trim_fraction=0.2)
    assert torch.equal(trimmed["w"], torch.tensor([3.0, -3.0]))  # mean of 2, 3, 4
    assert torch.equal(median["untouched"], old["untouched"])
    even = aggregate_robust(old, updates[:4], "median")
    assert torch.equal(even["w"], torch.tensor([2.5, -2.5]))
