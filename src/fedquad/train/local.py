"""Local training on one device: ``τ`` steps of the LoRA blocks (and head) chosen by its config.

The config says which blocks train (the span ``L-d … L-1``, or a FedRA subset whose lowest is
``L-d``), for rank-heterogeneous methods the rank the device trains them at, and which of them
run under activation checkpointing (:mod:`fedquad.train.checkpointing`). Training runs on the
model's device and in its precision (:mod:`fedquad.train.placement`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import (
    LoraStructure,
    State,
    check_rank,
    rank_slice,
    set_trainable,
    span_param_names,
    truncate_rank,
)
from fedquad.models.registry import ModelParts
from fedquad.train.checkpointing import checkpointed
from fedquad.train.generate import PromptTestSet, evaluate_causal_lm
from fedquad.train.placement import (
    autocast,
    compute_dtype,
    fork_rng,
    model_device,
    peak_memory,
    precision_scope,
    reset_peak_memory,
    synchronize,
    to_device,
)
from fedquad.train.quantizer import QuantSpec
from fedquad.train.saved_tensors import SavedBytes, SavedTensorMeter


@dataclass
class TrainResult:
    tensors: State
    """The tensors this device trained: its trained blocks' LoRA, cut to its rank, and the head."""
    num_samples: int
    loss: float
    step_seconds: list[float]
    saved: SavedBytes
    """The saved bytes of the step that saved the most."""
    trimmed: bool = False
    """Some batch was cut shorter than the data's padded length: its saved bytes are then not
    those of the configured sequence length."""
    peak_device_bytes: int | None = None
    """The accelerator allocator's peak over the steps (``None`` on a CPU)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def measurements(self) -> dict[str, Any]:
        out = {
            "loss": self.loss,
            "step_seconds": self.step_seconds,
            "median_step_seconds": statistics.median(self.step_seconds),
            "saved_bytes": self.saved.as_dict(),
            "peak_saved_bytes": self.saved.total,
            "trimmed": self.trimmed,
        }
        if self.peak_device_bytes is not None:
            out["peak_device_bytes"] = self.peak_device_bytes
        return {**out, **self.extra}


def set_modes(model: nn.Module, parts: ModelParts, span: range, frozen_prefix_eval: bool) -> None:
    """Train mode for the span and the head; the frozen prefix without dropout when asked."""
    model.train()
    if frozen_prefix_eval:
        parts.embeddings.eval()
        for index in range(span.start):
            parts.blocks[index].eval()


@contextmanager
def prepared(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    config: DeviceConfig,
    frozen_prefix_eval: bool,
) -> Iterator[list[str]]:
    """The model set up as the device's: yields the names it trains; undone on exit.

    Exactly the trained blocks' LoRA and the head require grad (frozen blocks between FedRA's
    chosen ones stay on the backward path); below the cut nothing does. With a rank, the trained
    LoRA is the rank truncation; LoRA that is not trained keeps its full global values.
    """
    blocks = structure.trained(config.depth, config.blocks)
    if config.rank is not None:
        check_rank(config.rank)
    names = span_param_names(model, parts, blocks)
    handles = []
    try:
        set_trainable(model, names)
        set_modes(model, parts, structure.span(config.depth), frozen_prefix_eval)
        if config.rank is not None:
            handles = truncate_rank(model, names, config.rank)
        yield names
    finally:
        for handle in handles:
            handle.remove()
        model.eval()
        set_trainable(model, [])


def upload(model: nn.Module, names: list[str], rank: int | None) -> State:
    """Host copies of the trained tensors, LoRA cut to ``rank``: bytes up scale with the rank."""
    params = dict(model.named_parameters())
    # copy after slicing: a view would keep the full tensor's storage alive
    return {n: rank_slice(n, params[n].detach(), rank).to("cpu", copy=True) for n in names}


def trim_batch(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The batch cut after its last column holding a real token, and whether it was cut.

    Every tensor of the sequence's width (ids, mask, a causal LM's token labels) is cut; with
    right padding nothing the model computes for real tokens changes, and the loss ignores
    padding (class labels, or ``-100`` token labels).
    """
    mask = batch["attention_mask"]
    width = mask.shape[1]
    real = mask.any(dim=0).nonzero()
    keep = int(real.max()) + 1 if real.numel() else 1
    if keep == width:
        return batch, False
    cut = {k: v[:, :keep] if v.dim() >= 2 and v.shape[1] == width else v for k, v in batch.items()}
    return cut, True


def _batches(
    data: dict[str, torch.Tensor], batch_size: int, steps: int, generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """``steps`` batches drawn by reshuffled passes over the device's samples."""
    n = len(data["labels"])
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(torch.randperm(n, generator=generator).tolist())
    out = []
    for s in range(steps):
        idx = torch.tensor(order[s * batch_size : (s + 1) * batch_size])
        out.append({k: v[idx] for k, v in data.items()})
    return out


def _optimizer(model: nn.Module, names: list[str], settings: TrainConfig) -> torch.optim.Optimizer:
    params = dict(model.named_parameters())
    head = [params[n] for n in names if ".modules_to_save." in n]
    lora = [params[n] for n in names if ".modules_to_save." not in n]
    groups = [{"params": lora, "lr": settings.lr}]
    if head:
        groups.append({"params": head, "lr": settings.head_lr or settings.lr})
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)


def train_local(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    data: dict[str, torch.Tensor],
    config: DeviceConfig,
    settings: TrainConfig,
    seed: int,
    quant: QuantConfig | None = None,
) -> TrainResult:
    """Train the device's blocks for ``settings.local_steps`` steps from the model's current state.

    ``data`` holds the device's tokenized samples (``input_ids``, ``attention_mask``, ``labels``).
    The caller loads the global state first; the model is left with the trained values.
    ``quant`` gives the quantizer's group size and size threshold; ``config`` says which blocks,
    at which rank, how many bits and which blocks run under activation checkpointing.
    """
    quant = quant or QuantConfig()
    recomputed = config.checkpointed_blocks(structure.num_blocks)
    if len(recomputed) != config.checkpointed:
        raise FedquadError(
            f"checkpointed blocks k = {config.checkpointed} is not allowed: use 0 to the "
            f"{len(recomputed)} trained blocks that are not quantized"
        )
    device, dtype = model_device(model), compute_dtype(model)
    generator = torch.Generator().manual_seed(seed)  # batch order: the data stay on the host
    quant_generator = torch.Generator(device=device).manual_seed(seed + 1)
    params = list(model.parameters())  # their storages are never counted or quantized
    losses, seconds = [], []
    saved: SavedBytes | None = None
    trimmed = False
    # Dropout draws from the global generator: seed it per device and round (restored after),
    # so a device's training depends on nothing that ran before it, in this process or another.
    with (
        fork_rng(device),
        prepared(model, parts, structure, config, settings.frozen_prefix_eval) as names,
        checkpointed(parts.blocks, recomputed),
        precision_scope(model, dtype),
    ):
        torch.manual_seed(seed + 2)
        optimizer = _optimizer(model, names, settings)
        reset_peak_memory(device)
        for batch in _batches(data, settings.batch_size, settings.local_steps, generator):
            start = time.perf_counter()
            if settings.trim_batches:
                batch, cut = trim_batch(batch)
                trimmed = trimmed or cut
            batch = to_device(batch, device)
            meter = SavedTensorMeter(
                parts.blocks,
                params,
                quantized_blocks=config.quantized_blocks(structure.num_blocks),
                spec=QuantSpec(bits=config.bits, group_size=quant.group_size),
                generator=quant_generator,
                min_numel=quant.min_numel,
                casts=dtype is not None,
            )
            with meter, autocast(device, dtype):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
            losses.append(loss.item())
            if saved is None or meter.saved.total >= saved.total:
                saved = meter.saved
        tensors = upload(model, names, config.rank)
    return TrainResult(
        tensors=tensors,
        num_samples=len(data["labels"]),
        loss=statistics.fmean(losses),
        step_seconds=seconds,
        saved=saved or SavedBytes(),
        trimmed=trimmed,
        peak_device_bytes=peak_memory(device),
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    """Accuracy and mean loss of the model on tokenized samples.

    Samples are batched by length and each batch is cut to its longest sample: right padding
    changes nothing for the real tokens, and short reviews then cost what they are. Held-out
    prompts of a causal LM give their answer loss, perplexity and answer accuracy instead.
    """
    device, dtype = model_device(model), compute_dtype(model)
    with precision_scope(model, dtype), autocast(device, dtype):
        if isinstance(data, PromptTestSet):
            return evaluate_causal_lm(model, data, batch_size)
        return _evaluate_classifier(model, data, batch_size, device)


def _evaluate_classifier(
    model: nn.Module, data: dict[str, torch.Tensor], batch_size: int, device: torch.device
) -> dict[str, float]:
    model.eval()
    n = len(data["labels"])
    lengths = data["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    correct, loss_sum = 0, 0.0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        width = max(int(lengths[idx].max()), 1)
        batch = {k: v[idx, :width] if v.dim() == 2 else v[idx] for k, v in data.items()}
        batch = to_device(batch, device)
        out = model(**batch)
        loss_sum += out.loss.item() * len(batch["labels"])
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
    return {"accuracy": correct / n, "loss": loss_sum / n}
