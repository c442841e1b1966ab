"""Training batches cut to their longest sample: exact under the attention mask, for both tasks;
saved bytes of trimmed batches never reach the capacity estimator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
import torch
from test_causal_lm import tiny_tokenizer, write_tiny_decoder
from torch import nn

from fedquad.config import TrainConfig
from fedquad.cost.fleet import Device
from fedquad.cost.model import CostProfile
from fedquad.data.chat import IGNORE_INDEX, tokenize_pairs
from fedquad.device_config import DeviceConfig
from fedquad.models.causal_lm import keep_answer_logits
from fedquad.models.lora import attach_lora, build_structure, federated_param_names, set_trainable
from fedquad.models.registry import describe_model, load_causal_lm
from fedquad.server.messages import TrainReply
from fedquad.server.rounds import _report
from fedquad.train.local import train_local, trim_batch
from helpers import make_batch

GOLDEN_PROFILE = Path(__file__).parent / "golden" / "fedquad.profile.json"


def right_padded(lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A classification batch of the given real lengths, right-padded (pad id 0) to ``width``."""
    batch = make_batch(len(lengths), width, seed)
    for row, n in enumerate(lengths):
        batch["attention_mask"][row, n:] = 0
        batch["input_ids"][row, n:] = 0
    return batch


def no_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def loss_and_grads(model: nn.Module, batch: dict[str, torch.Tensor], names: list[str]):
    params = dict(model.named_parameters())
    for name in names:
        params[name].grad = None
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: params[n].grad.clone() for n in names}


def assert_same_loss_and_grads(model: nn.Module, padded: dict[str, torch.Tensor]) -> None:
    names = federated_param_names(model)
    set_trainable(model, names)
    model.train()
    trimmed, cut = trim_batch(padded)
    assert cut
    loss_p, grads_p = loss_and_grads(model, padded, names)
    loss_t, grads_t = loss_and_grads(model, trimmed, names)
    set_trainable(model, [])
    torch.testing.assert_close(loss_t, loss_p, rtol=1e-5, atol=1e-6)
    nonzero = 0
    for name in names:
        torch.testing.assert_close(grads_t[name], grads_p[name], rtol=1e-4, atol=1e-6)
        nonzero += bool(grads_p[name].abs().sum() > 0)
    assert nonzero > len(names) // 2  # the comparison is informative, not of zeros


def test_trim_cuts_every_sequence_tensor_to_the_last_real_column():
    batch = right_padded([5, 11, 3], 16)
    batch["token_labels"] = torch.full((3, 16), IGNORE_INDEX)
    cut, was_cut = trim_batch(batch)
    assert was_cut
    assert cut["input_ids"].shape == cut["attention_mask"].shape == (3, 11)
    assert cut["token_labels"].shape == (3, 11)
    assert torch.equal(cut["labels"], batch["labels"])  # class labels are per sample
    assert torch.equal(cut["input_ids"], batch["input_ids"][:, :11])
    full = make_batch(3, 16)
    same, was_cut = trim_batch(full)
    assert not was_cut and same is full


def test_trimmed_classifier_batch_gives_the_padded_loss_and_gradients(trained_like):
    model, _, _ = trained_like
    no_dropout(model)
    assert_same_loss_and_grads(model, right_padded([7, 20, 12, 4], 48))


def test_trimmed_causal_lm_batch_gives_the_padded_loss_and_gradients(tmp_path):
    directory = write_tiny_decoder(tmp_path / "decoder")
    model = load_causal_lm(str(directory))
    parts = dataclasses.replace(describe_model(model), head_names=[])
    peft_model = attach_lora(model, parts, build_structure(parts.num_blocks, rank=4))
    keep_answer_logits(peft_model)
    with torch.no_grad():  # lora_B starts at zero: make every LoRA gradient informative
        for name, p in peft_model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    no_dropout(peft_model)
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": ["Review : good good good", "hello", "Review : bad"],
            "response": ["great", "hi", "other other"],
        }
    )
    rows = tokenize_pairs(pairs, tiny_tokenizer(), max_length=40)[:]
    padded = {k: rows[k] for k in ("input_ids", "attention_mask", "labels")}
    assert padded["labels"].dim() == 2 and int(padded["attention_mask"].sum(1).max()) < 40
    assert_same_loss_and_grads(peft_model, padded)


def test_peak_saved_bytes_is_the_largest_step_and_trimmed_is_reported(minilm_lora):
    model, parts, structure = minilm_lora
    data = right_padded([6, 30], 32)
    config = DeviceConfig(depth=2)
    one_each = TrainConfig(local_steps=2, batch_size=1)
    both = train_local(model, parts, structure, data, config, one_each, 0)
    long_only = {k: v[1:] for k, v in data.items()}
    alone = train_local(model, parts, structure, long_only, config, one_each, 0)
    short_only = {k: v[:1] for k, v in data.items()}
    short = train_local(model, parts, structure, short_only, config, one_each, 0)
    assert short.saved.total < alone.saved.total
    assert both.saved.total == alone.saved.total  # the longer sample's step, whatever the order
    assert both.trimmed and both.measurements()["trimmed"] is True
    assert both.measurements()["peak_saved_bytes"] == alone.saved.total
    untrimmed = dataclasses.replace(one_each, trim_batches=False)
    padded = train_local(model, parts, structure, data, config, untrimmed, 0)
    assert not padded.trimmed and padded.saved.total > both.saved.total
    # a batch with nothing to cut is not "trimmed": its bytes are the configured length's
    full = train_local(model, parts, structure, make_batch(2, 32), config, one_each, 0)
    assert not full.trimmed and full.saved.total == padded.saved.total


def test_a_trimmed_device_reports_no_saved_bytes_to_the_capacity_estimator():
    profile = CostProfile.from_dict(json.loads(GOLDEN_PROFILE.read_text()))
    device = Device(
        id=0, tier="t", slowdown=1.0, memory_budget_bytes=10**9, uplink=1e6, downlink=1e6
    )
    config = DeviceConfig(depth=2)

    def report(trimmed: bool):
        measurements = {"peak_saved_bytes": 1234, "trimmed": trimmed}
        reply = TrainReply(device_id=0, tensors={}, num_samples=3, measurements=measurements)
        return _report(profile, {0: config}, {0: device}, reply)

    assert report(False).saved_bytes == 1234
    assert report(True).saved_bytes is None


@pytest.fixture
def trained_like(minilm_lora):
    model, parts, structure = minilm_lora
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model, parts, structure
