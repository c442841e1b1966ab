"""bf16 training and the training device: placement, autocast, the saved-tensor meter under
autocast, the hardware checks. Everything here runs on the CPU; the CUDA-only tests skip."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from fedquad.config import ExperimentConfig, TrainConfig, load_config
from fedquad.cost.profiler import ProfileSettings
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import (
    attach_lora,
    build_structure,
    federated_param_names,
    set_trainable,
    span_param_names,
)
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.train import placement
from fedquad.train.local import evaluate, train_local
from fedquad.train.quantizer import QuantSpec
from fedquad.train.saved_tensors import SavedTensorMeter, StoredView
from fedquad.workbench import workload_key
from helpers import make_batch

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def minilm(precision: str = "fp32"):
    torch.manual_seed(0)
    model = load_sequence_classifier("minilm", num_labels=2)
    parts = describe_model(model)
    structure = build_structure(parts.num_blocks, rank=8)
    peft_model = attach_lora(model, parts, structure)
    placement.place_model(peft_model, "cpu", precision)
    return peft_model, parts, structure


@pytest.fixture(scope="module")
def bf16_model():
    return minilm("bf16")


# --------------------------------------------------------------------------- config and hardware


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "train.precision='fp16'",
            "train.precision = 'fp16' is not allowed: use one of fp32, bf16",
        ),
        ("train.device='tpu'", "train.device = 'tpu' is not allowed: use one of auto, cpu, cuda"),
        ("train.trim_batches=1", "train.trim_batches = 1: expected bool"),
    ],
)
def test_bad_training_options_are_one_line_errors(override, fragment):
    with pytest.raises(FedquadError, match=fragment.replace("(", r"\(")) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_training_options_are_checked_when_built_in_python():
    with pytest.raises(FedquadError, match="train.trim_batches = 'yes'"):
        TrainConfig(trim_batches="yes")  # type: ignore[arg-type]
    with pytest.raises(FedquadError, match="train.precision = 'BF16'"):
        TrainConfig(precision="BF16")
    assert TrainConfig().precision == "fp32" and TrainConfig().trim_batches


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(placement, "_mps_available", lambda: False)
    assert placement.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(placement, "_mps_available", lambda: True)
    assert placement.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement.resolve_device("auto") == torch.device("cuda")


def test_an_absent_accelerator_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(placement, "_mps_available", lambda: False)
    with pytest.raises(FedquadError, match="train.device = 'cuda' but torch sees no CUDA device"):
        placement.resolve_device("cuda")
    with pytest.raises(FedquadError, match="train.device = 'mps' but this machine has no MPS"):
        placement.resolve_device("mps")


def test_bf16_on_a_cuda_device_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    with pytest.raises(FedquadError, match="'Old GPU' has no bfloat16 support: use fp32"):
        placement.check_precision("bf16", torch.device("cuda"))
    placement.check_precision("fp32", torch.device("cuda"))  # fp32 runs anywhere


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(placement, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fedquad.train.placement"):
        placement.check_precision("bf16", cpu)
    assert "without bf16 instructions" in caplog.text and "slower" in caplog.text
    caplog.clear()
    monkeypatch.setattr(placement, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="fedquad.train.placement"):
        placement.check_precision("bf16", cpu)
        placement.check_precision("fp32", cpu)
    assert caplog.text == ""


def test_the_profile_key_holds_precision_and_device(minilm_lora):
    model, parts, structure = minilm_lora

    def key(precision: str) -> dict:
        config = ExperimentConfig()
        config.train = dataclasses.replace(config.train, precision=precision)
        bench = SimpleNamespace(
            config=config, parts=parts, structure=structure, model=model, label_names=["a", "b"]
        )
        return workload_key(bench, ProfileSettings())  # type: ignore[arg-type]

    fp32, bf16 = key("fp32"), key("bf16")
    assert (fp32["precision"], bf16["precision"], fp32["device"]) == ("fp32", "bf16", "cpu")
    assert {k for k in fp32 if fp32[k] != bf16[k]} == {"precision"}


# --------------------------------------------------------------------------- bf16 training


def test_bf16_stores_only_the_frozen_base_weights_in_bf16(bf16_model):
    model, parts, structure = bf16_model
    federated = set(federated_param_names(model))
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if name in federated else torch.bfloat16), name
    assert placement.compute_dtype(model) == torch.bfloat16
    result = train_local(
        model, parts, structure, make_batch(4, 16), DeviceConfig(depth=3), TrainConfig(2, 4), 0
    )
    assert all(t.dtype == torch.float32 for t in result.tensors.values())
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in federated)
    assert "peak_device_bytes" not in result.measurements()  # no accelerator allocator here


def test_bf16_training_and_evaluation_stay_close_to_fp32(bf16_model):
    fp32 = minilm("fp32")
    batch, config, train = make_batch(8, 24), DeviceConfig(depth=6), TrainConfig(2, 8)
    # same seed, same initial LoRA and head: only the precision differs
    assert placement.compute_dtype(fp32[0]) is None
    a = train_local(*fp32, batch, config, train, 0)
    b16_model, parts, structure = minilm("bf16")
    b = train_local(b16_model, parts, structure, batch, config, train, 0)
    assert abs(a.loss - b.loss) < 0.02
    # halved activations, with fp32 kept where autocast keeps it (softmax of the attention)
    assert 0.4 * a.saved.total < b.saved.total < 0.8 * a.saved.total
    test = make_batch(16, 24, seed=5)
    ev32, ev16 = evaluate(fp32[0], test, 8), evaluate(b16_model, test, 8)
    assert abs(ev32["loss"] - ev16["loss"]) < 0.02


def _counted_and_quantized(model, parts, structure, casts: bool):
    """The tensors a bf16 step's meter counted (or quantized) in the span's blocks."""
    names = span_param_names(model, parts, structure.span(3))
    set_trainable(model, names)
    model.eval()
    meter = SavedTensorMeter(
        parts.blocks,
        list(model.parameters()),
        quantized_blocks=[4],
        spec=QuantSpec(bits=8),
        generator=torch.Generator().manual_seed(0),
        casts=casts,
    )
    counted, quantized = [], []
    pack_for = meter._pack_for

    def recording(block):
        pack = pack_for(block)

        def inner(t):
            before = meter.saved.per_block.get(block, 0)
            out = pack(t)
            if isinstance(out, StoredView):
                quantized.append(t)
            elif meter.saved.per_block.get(block, 0) > before:
                counted.append(t)
            return out

        return inner

    meter._pack_for = recording  # type: ignore[method-assign]
    with meter, placement.autocast(torch.device("cpu"), torch.bfloat16):
        loss = model(**make_batch(4, 16)).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    set_trainable(model, [])
    return counted, quantized


def _is_cast_of_a_parameter(t: torch.Tensor, model) -> bool:
    """Holds a parameter's values in another dtype (as saved: the weight or its transpose)."""
    values = t.detach()
    for p in model.parameters():
        if p.dtype == t.dtype or p.numel() != t.numel() or p.dim() != 2:
            continue
        for view in (p.detach(), p.detach().t()):
            if view.shape == values.shape and torch.equal(view.to(t.dtype), values):
                return True
    return False


def test_the_meter_neither_counts_nor_quantizes_autocast_copies_of_parameters(bf16_model):
    model, parts, structure = bf16_model
    with torch.no_grad():  # a FedRA-like gap would also run untrained LoRA: give B values
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.02)
    counted, quantized = _counted_and_quantized(model, parts, structure, casts=True)
    assert counted and quantized
    assert not any(_is_cast_of_a_parameter(t, model) for t in counted + quantized)
    # without the check the LoRA weights' bf16 copies are counted and quantized: the test sees them
    counted, quantized = _counted_and_quantized(model, parts, structure, casts=False)
    assert any(_is_cast_of_a_parameter(t, model) for t in counted + quantized)


def test_frozen_fp32_parameters_cast_by_autocast_are_recognised():
    # untrained LoRA on a backward path: autocast copies it afresh, with no autograd history
    weight = torch.nn.Parameter(torch.randn(64, 32), requires_grad=False)
    x = torch.randn(8, 32, requires_grad=True)

    def saved(casts: bool) -> int:
        meter = SavedTensorMeter(torch.nn.ModuleList(), [weight], min_numel=1, casts=casts)
        with meter, torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.linear(x * 2, weight)
        y.float().sum().backward()
        return meter.saved.total

    assert saved(casts=False) - saved(casts=True) == 64 * 32 * 2  # exactly the weight's copy


@cuda_only
def test_a_training_step_on_cuda_reports_the_allocator_peak(minilm_lora):
    model, parts, structure = minilm_lora
    model.to("cuda")
    try:
        result = train_local(
            model, parts, structure, make_batch(4, 16), DeviceConfig(depth=2), TrainConfig(1, 4), 0
        )
        assert result.measurements()["peak_device_bytes"] > 0
        assert all(t.device.type == "cpu" for t in result.tensors.values())
    finally:
        model.to("cpu")
