"""LoRA structure and depth: what a device of depth d trains, stores and leaves alone."""

from __future__ import annotations

import pytest
import torch

from fedquad.config import TrainConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import (
    block_of,
    build_structure,
    federated_param_names,
    get_state,
    is_head_param,
    set_trainable,
    span_param_names,
)
from fedquad.train.local import DeviceConfig, set_modes, train_local
from fedquad.train.saved_tensors import HEAD, SavedTensorMeter
from helpers import make_batch


@pytest.mark.integration
def test_rank_pattern_gives_each_block_its_rank(minilm_lora):
    model, parts, structure = minilm_lora
    params = dict(model.named_parameters())
    for name in federated_param_names(model):
        if ".lora_A." in name:
            block = block_of(name, parts)
            assert block is not None
            assert params[name].shape[0] == structure.rank_of(block)
    # slot 0 of the distribution is the block nearest the output
    assert structure.rank_of(5) == 8 and structure.rank_of(0) == 2


@pytest.mark.integration
def test_global_depth_limits_which_blocks_carry_lora():
    from fedquad.models.lora import attach_lora
    from fedquad.models.registry import describe_model, load_sequence_classifier

    model = load_sequence_classifier("minilm", num_labels=2)
    parts = describe_model(model)
    peft_model = attach_lora(model, parts, build_structure(parts.num_blocks, depth=2, rank=4))
    blocks = {block_of(n, parts) for n in federated_param_names(peft_model)}
    assert blocks == {4, 5, None}  # None: the head


@pytest.mark.integration
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_only_the_span_and_head_get_gradients_and_nothing_below_is_saved(minilm_lora, depth):
    model, parts, structure = minilm_lora
    span = structure.span(depth)
    names = span_param_names(model, parts, span)
    set_trainable(model, names)
    set_modes(model, parts, span, frozen_prefix_eval=True)
    params = [p for p in model.parameters()]
    with SavedTensorMeter(parts.blocks, params) as meter:
        loss = model(**make_batch()).loss
    loss.backward()
    for name, param in model.named_parameters():
        if name in names:
            assert param.grad is not None, name
            # lora_B starts at zero, so only B and the head get a non-zero first gradient
            if ".lora_A." not in name:
                assert param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
            assert not param.requires_grad, name
    blocks_with_saves = {b for b in meter.saved.per_block if b != HEAD}
    assert blocks_with_saves == set(span)
    assert all(meter.saved.per_block[b] > 0 for b in span)
    assert any(is_head_param(n) for n in names)


@pytest.mark.integration
def test_saved_bytes_exclude_parameters_and_count_each_storage_once(minilm_lora):
    model, parts, structure = minilm_lora
    set_trainable(model, span_param_names(model, parts, structure.span(6)))
    model.eval()
    params = list(model.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with SavedTensorMeter(parts.blocks, params) as meter:
        model(**make_batch())
    # an independent count with a plain global hook gives the same total
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**make_batch())
    assert meter.saved.total == sum(seen.values())


@pytest.mark.integration
def test_training_leaves_lora_below_the_span_at_the_global_values(minilm_lora):
    model, parts, structure = minilm_lora
    before = get_state(model)
    result = train_local(
        model,
        parts,
        structure,
        make_batch(16),
        DeviceConfig(depth=2),
        TrainConfig(local_steps=2, batch_size=8, lr=1e-2),
        seed=0,
    )
    after = get_state(model)
    trained = set(result.tensors)
    assert trained == set(span_param_names(model, parts, range(4, 6)))
    for name in before:
        block = block_of(name, parts)
        if block is not None and block < 4:
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in trained if ".lora_B." in n)
    m = result.measurements()
    assert len(m["step_seconds"]) == 2 and m["median_step_seconds"] > 0
    assert set(m["saved_bytes"]["per_block"]) >= {"4", "5"}
    assert m["peak_saved_bytes"] == result.saved.total > 0
    assert result.num_samples == 16


def test_depth_out_of_range_is_a_clear_error():
    with pytest.raises(FedquadError, match="lora.depth = 7"):
        build_structure(6, depth=7)
    structure = build_structure(6, depth=3)
    with pytest.raises(FedquadError, match="device depth 4"):
        structure.span(4)
