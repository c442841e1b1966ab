"""Heterogeneous devices in the trainer: FedRA block subsets and rank truncations (HetLoRA)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from fedquad.config import TrainConfig
from fedquad.cost.model import CostProfile, download_bytes
from fedquad.cost.profiler import _param_counts
from fedquad.errors import FedquadError
from fedquad.models.lora import (
    block_of,
    federated_param_names,
    get_state,
    load_state,
    span_param_names,
    truncate_rank,
)
from fedquad.server.configure import device_tensors
from fedquad.server.rounds import tensor_bytes
from fedquad.train.local import DeviceConfig, prepared, train_local
from fedquad.train.saved_tensors import HEAD, SavedTensorMeter
from helpers import make_batch

pytestmark = pytest.mark.integration  # every test here loads a model

SETTINGS = TrainConfig(local_steps=2, batch_size=8, lr=1e-2)


@pytest.fixture
def trained_like(minilm_lora):
    """Non-zero ``B`` everywhere, so truncation and the frozen LoRA's values are visible."""
    model, parts, structure = minilm_lora
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model, parts, structure


def _train(model, parts, structure, config):
    return train_local(model, parts, structure, make_batch(16), config, SETTINGS, seed=0)


def _changed(before, after):
    return {n for n in before if not torch.equal(before[n], after[n])}


# --------------------------------------------------------------------------- FedRA blocks


def test_fedra_trains_exactly_the_chosen_blocks_and_the_head(minilm_lora):
    model, parts, structure = minilm_lora
    before = get_state(model)
    result = _train(model, parts, structure, DeviceConfig(depth=4, blocks=(2, 5)))
    after = get_state(model)
    trained = set(span_param_names(model, parts, (2, 5)))
    assert set(result.tensors) == trained
    assert _changed(before, after) <= trained
    # block 2's LoRA learned: the gradient reached it through the frozen blocks 3 and 4
    assert any(".lora_B." in n and block_of(n, parts) == 2 for n in _changed(before, after))
    assert any(block_of(n, parts) is None for n in _changed(before, after))  # the head
    for name, value in result.tensors.items():
        assert torch.equal(value, after[name]), name


def test_fedra_gradients_flow_through_frozen_blocks_and_stop_at_the_cut(minilm_lora):
    model, parts, structure = minilm_lora
    config = DeviceConfig(depth=4, blocks=(2, 5))
    with prepared(model, parts, structure, config, frozen_prefix_eval=True) as names:
        assert not parts.blocks[1].training and parts.blocks[3].training
        with SavedTensorMeter(parts.blocks, list(model.parameters())) as meter:
            loss = model(**make_batch()).loss
        loss.backward()
        for name, param in model.named_parameters():
            if name in names:
                assert param.grad is not None, name
                if ".lora_A." not in name:  # lora_B starts at zero: A's first gradient is zero
                    assert param.grad.abs().sum() > 0, name
            else:
                assert param.grad is None and not param.requires_grad, name
        # blocks 3 and 4 are frozen but on the backward path; nothing below block 2 is saved
        assert {b for b in meter.saved.per_block if b != HEAD} == {2, 3, 4, 5}
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("depth", "blocks", "message"),
    [
        (4, (5, 2), r"device blocks \(5, 2\) are not allowed"),
        (4, (2, 2, 5), r"device blocks \(2, 2, 5\) are not allowed"),
        (4, (3, 5), r"do not match depth 4: the lowest must be 2"),
        (4, (2, 6), r"device block 6 carries no LoRA: use blocks 0 to 5"),
        (7, (0, 5), r"device depth 7 is not allowed"),
    ],
)
def test_bad_fedra_blocks_are_clear_errors(minilm_lora, depth, blocks, message):
    model, parts, structure = minilm_lora
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(FedquadError, match=message):
        _train(model, parts, structure, DeviceConfig(depth=depth, blocks=blocks))
    assert flags == [p.requires_grad for p in model.parameters()]  # checked before any change


# --------------------------------------------------------------------------- rank truncation


def _rank_axis_size(name, tensor):
    return tensor.shape[0] if ".lora_A." in name else tensor.shape[1]


def _first(name, tensor, rank):
    """Components ``:rank`` of a LoRA tensor (rows of A, columns of B)."""
    return tensor[:rank] if ".lora_A." in name else tensor[:, :rank]


def _rest(name, tensor, rank):
    return tensor[rank:] if ".lora_A." in name else tensor[:, rank:]


def test_rank_truncation_uploads_slices_and_keeps_the_rest_zero(trained_like):
    model, parts, structure = trained_like
    before = get_state(model)
    params = dict(model.named_parameters())
    tail = [n for n in span_param_names(model, parts, (4, 5)) if ".lora_" in n]
    checked_steps, dirty = [], []

    def check_tail(optimizer, args, kwargs):
        # after every optimizer step, components 2: of the global rank-8 tensors are still zero
        checked_steps.append(1)
        dirty.extend(n for n in tail if _rest(n, params[n], 2).abs().sum() > 0)

    handle = register_optimizer_step_post_hook(check_tail)
    try:
        result = _train(model, parts, structure, DeviceConfig(depth=2, rank=2))
    finally:
        handle.remove()
    assert len(checked_steps) == SETTINGS.local_steps and not dirty
    after = get_state(model)
    for name in tail:
        assert structure.rank_of(block_of(name, parts)) == 8
        value = result.tensors[name]
        assert _rank_axis_size(name, value) == 2
        assert value.shape == _first(name, before[name], 2).shape
        assert torch.equal(value, _first(name, after[name], 2))
        assert not torch.equal(value, _first(name, before[name], 2))
    # the LoRA below the cut ran with its full global values and keeps them
    for name in federated_param_names(model):
        block = block_of(name, parts)
        if block is not None and block < 4:
            assert torch.equal(before[name], after[name]), name
    # bytes up scale with the rank: a quarter of the rank-8 LoRA
    full = sum(before[n].numel() for n in tail)
    assert sum(result.tensors[n].numel() for n in tail) * 4 == full


def test_blocks_of_rank_at_most_the_device_rank_are_uploaded_whole(trained_like):
    model, parts, structure = trained_like
    result = _train(model, parts, structure, DeviceConfig(depth=6, rank=4))
    for name, value in result.tensors.items():
        block = block_of(name, parts)
        if block is not None:
            assert _rank_axis_size(name, value) == min(4, structure.rank_of(block)), name
    state = get_state(model)
    assert all(result.tensors[n].shape == state[n].shape for n in result.tensors if ".0." in n)


def test_rank_none_and_a_rank_above_every_block_train_the_same(minilm_lora):
    model, parts, structure = minilm_lora
    start = get_state(model)
    torch.manual_seed(0)  # the same dropout masks in both runs
    plain = _train(model, parts, structure, DeviceConfig(depth=3))
    load_state(model, start)
    torch.manual_seed(0)
    high = _train(model, parts, structure, DeviceConfig(depth=3, rank=8))
    assert set(plain.tensors) == set(high.tensors)
    for name, value in plain.tensors.items():
        assert value.shape == start[name].shape
        assert torch.equal(value, high.tensors[name]), name


def test_rank_r_forward_is_the_truncated_product_at_the_global_scale(trained_like):
    model, parts, structure = trained_like
    module = parts.blocks[5].attention.self.query
    a_name = next(n for n in federated_param_names(model) if ".5.attention.self.query.lora_A" in n)
    b_name = a_name.replace(".lora_A.", ".lora_B.")
    params = dict(model.named_parameters())
    a, b = params[a_name].detach().clone(), params[b_name].detach().clone()
    scale = module.scaling["default"]
    assert scale == structure.scale_of(5)  # alpha_5 / 8, whatever the device rank
    handles = truncate_rank(model, [a_name, b_name], 2)
    try:
        model.eval()
        x = torch.randn(2, 3, a.shape[1], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = module.base_layer(x) + scale * (x @ a[:2].T @ b[:, :2].T)
            assert torch.allclose(module(x), expected, atol=1e-6)
    finally:
        for h in handles:
            h.remove()


def test_truncated_components_get_no_gradient_even_when_disturbed(trained_like):
    model, parts, structure = trained_like
    names = [n for n in span_param_names(model, parts, (5,)) if ".lora_" in n]
    handles = truncate_rank(model, names, 2)
    params = dict(model.named_parameters())
    try:
        with torch.no_grad():  # both factors zero would give zero gradients anyway: break that
            for n in names:
                _rest(n, params[n], 2).fill_(0.01)
        model(**make_batch(2, 8)).loss.backward()
        for n in names:
            assert _rest(n, params[n].grad, 2).abs().sum() == 0, n
            assert _first(n, params[n].grad, 2).abs().sum() > 0, n
    finally:
        for h in handles:
            h.remove()


def test_bad_rank_is_a_clear_error(minilm_lora):
    model, parts, structure = minilm_lora
    before = get_state(model)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(FedquadError, match="device rank 0 is not allowed: use a rank of 1 or more"):
        _train(model, parts, structure, DeviceConfig(depth=2, rank=0))
    assert not _changed(before, get_state(model))
    assert flags == [p.requires_grad for p in model.parameters()]  # checked before any change


@pytest.mark.parametrize(("depth", "rank"), [(6, 4), (6, 1), (3, 2), (6, None), (2, 16)], ids=str)
def test_a_device_is_sent_its_trained_lora_at_its_rank_as_the_cost_model_counts(
    trained_like, depth, rank
):
    model, parts, structure = trained_like
    state = get_state(model)
    lora, head = _param_counts(model, parts, parts.num_blocks)
    profile = CostProfile(
        num_blocks=parts.num_blocks,
        frozen_weight_bytes=0,
        lora_params=lora,
        head_params=head,
        lora_ranks=tuple(structure.rank_of(b) for b in range(parts.num_blocks)),
        saved_bytes=(0,) * parts.num_blocks,
        saved_bytes_bottom=(0,) * parts.num_blocks,
        quant_ratio={},
        head_saved_bytes=0,
        f=0.0,
        g=0.0,
        o=0.0,
        c=0.0,
    )
    config = DeviceConfig(depth=depth, rank=rank)
    sent = device_tensors(state, config, parts.num_blocks)
    assert tensor_bytes(sent) == download_bytes(profile, config)
    trained = set(span_param_names(model, parts, structure.trained(depth)))
    for name, tensor in sent.items():  # trained LoRA cut to the rank, the rest whole
        cut = name in trained and rank is not None and ".lora_" in name
        assert torch.equal(tensor, _first(name, state[name], rank) if cut else state[name])

    # the device loads the cut tensors into full-rank parameters, zero beyond the rank
    load_state(model, {n: torch.ones_like(t) for n, t in state.items()})
    load_state(model, sent)
    params = dict(model.named_parameters())
    for name in trained:
        if rank is not None and ".lora_" in name and _rank_axis_size(name, state[name]) > rank:
            assert torch.equal(_first(name, params[name], rank), _first(name, state[name], rank))
            assert not _rest(name, params[name], rank).any()
        else:
            assert torch.equal(params[name], state[name])
