"""Activation quantization in training: which blocks, how many bytes, how close the gradients."""

from __future__ import annotations

import pytest
import torch

from fedquad.models.lora import set_trainable, span_param_names
from fedquad.train.local import DeviceConfig, set_modes
from fedquad.train.quantizer import QuantSpec
from fedquad.train.saved_tensors import HEAD, SavedTensorMeter
from helpers import make_batch


def test_quantized_blocks_follow_position():
    assert DeviceConfig(depth=4, quantized=2).quantized_blocks(6) == [2, 3]
    assert DeviceConfig(depth=4, quantized=2, quant_position="top").quantized_blocks(6) == [4, 5]
    assert DeviceConfig(depth=3, quantized=0).quantized_blocks(6) == []
    assert DeviceConfig(depth=3, quantized=3).quantized_blocks(6) == [3, 4, 5]


def _grads(model, parts, structure, quantized, bits, batch, seed=0):
    span = structure.span(structure.depth)
    names = span_param_names(model, parts, span)
    set_trainable(model, names)
    # dropout off so the two passes differ only by quantization
    model.eval()
    meter = SavedTensorMeter(
        parts.blocks,
        list(model.parameters()),
        quantized_blocks=quantized,
        spec=QuantSpec(bits=bits),
        generator=torch.Generator().manual_seed(seed),
    )
    with meter:
        loss = model(**batch).loss
    loss.backward()
    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad(set_to_none=True)
    return grads, meter.saved


@pytest.fixture
def trained_like(minilm_lora):
    # lora_B starts at zero; give it values so every LoRA gradient is informative
    model, parts, structure = minilm_lora
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model, parts, structure


@pytest.mark.integration
def test_8bit_gradients_match_unquantized(trained_like):
    model, parts, structure = trained_like
    batch = make_batch(8, 64)
    exact, _ = _grads(model, parts, structure, [], 8, batch)
    approx, saved = _grads(model, parts, structure, list(range(6)), 8, batch)
    a = torch.cat([exact[n].flatten() for n in exact])
    b = torch.cat([approx[n].flatten() for n in exact])
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cosine >= 0.99
    assert not torch.equal(a, b)  # quantization really happened
    lora = [n for n in exact if ".lora_" in n]
    per_tensor = [
        torch.nn.functional.cosine_similarity(exact[n].flatten(), approx[n].flatten(), dim=0)
        for n in lora
    ]
    assert min(per_tensor).item() >= 0.95


@pytest.mark.integration
@pytest.mark.parametrize(("bits", "limit"), [(8, 0.30), (4, 0.17), (2, 0.12)])
def test_saved_bytes_shrink_with_bits(trained_like, bits, limit):
    model, parts, structure = trained_like
    batch = make_batch(8, 64)
    _, plain = _grads(model, parts, structure, [], bits, batch)
    _, quant = _grads(model, parts, structure, list(range(6)), bits, batch)
    blocks = [b for b in plain.per_block if b != HEAD]
    plain_total = sum(plain.per_block[b] for b in blocks)
    quant_total = sum(quant.per_block[b] for b in blocks)
    assert quant_total <= limit * plain_total
    # the meter's own "would have been" figure agrees with the unquantized run
    assert sum(quant.unquantized_per_block[b] for b in blocks) >= plain_total


@pytest.mark.integration
def test_only_the_chosen_blocks_are_quantized(trained_like):
    model, parts, structure = trained_like
    batch = make_batch(8, 64)
    _, plain = _grads(model, parts, structure, [], 8, batch)
    _, quant = _grads(model, parts, structure, [0, 1], 8, batch)
    for block in (0, 1):
        assert quant.per_block[block] < 0.5 * plain.per_block[block]
    for block in (2, 3, 4, 5, HEAD):
        assert quant.per_block[block] == plain.per_block[block]


@pytest.mark.integration
def test_training_step_with_quantization_runs_in_train_mode(trained_like):
    from fedquad.config import TrainConfig
    from fedquad.train.local import train_local

    model, parts, structure = trained_like
    result = train_local(
        model,
        parts,
        structure,
        make_batch(16, 32),
        DeviceConfig(depth=4, quantized=4, bits=4),
        TrainConfig(local_steps=2, batch_size=8),
        seed=3,
    )
    per_block = result.saved.per_block
    unq = result.saved.unquantized_per_block
    for block in (2, 3, 4, 5):
        assert per_block[block] < 0.3 * unq[block]
    assert 0 not in per_block and 1 not in per_block
    set_modes(model, parts, structure.span(6), True)
