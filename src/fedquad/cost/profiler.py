"""The profiler of docs/methods.md §3: measure a workload's cost profile with real training steps.

Everything the cost model needs is measured on this host with the trainer itself
(:func:`fedquad.train.local.train_local`), so the model predicts what the trainer does:

- saved-activation bytes per block, counted exactly by the trainer's saved-tensor hooks: one
  step at every depth ``1 … D`` (block ``L-d`` is then the bottom of the span, which saves less
  than a block with a trainable block below it). Quantized bytes follow exactly from the sizes
  of the storages quantization would compress (``SavedBytes.quantized_per_block``), so no
  quantized step is needed for them; and one step at every depth with every block of the span
  checkpointed, for the bytes a checkpointed block keeps (its inputs);
- the time terms by timing real steps at depths ``1, ⌈D/2⌉, D`` unquantized and at depth ``D``
  with every block quantized, fitting ``g``, ``o`` and ``L·f + c``; ``f`` is the mean forward
  time of a frozen block, timed with block hooks.

Steps run on the model's device and in its precision (bf16 halves the activations, and
quantization then saves half as much against them), always on untrimmed batches of the sequence
length, whatever ``train.trim_batches`` says: a profile describes the configured ``max_length``
and never depends on the data or the seed.

The profile is cached on disk, keyed by everything it depends on (:func:`profile_key`). The
time terms are measured once per workload and shared by all its rank layouts (:data:`TIMING_FREE`),
so the methods of a comparison run on one clock.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.cost.model import CostProfile, fit_times
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import (
    LoraStructure,
    block_of,
    federated_param_names,
    get_state,
    is_head_param,
    load_state,
)
from fedquad.models.registry import ModelParts
from fedquad.train.local import train_local
from fedquad.train.placement import model_device, synchronize
from fedquad.train.quantizer import QuantSpec
from fedquad.train.saved_tensors import HEAD, SavedBytes

PROFILE_VERSION = 7
"""Bump when what the profiler measures changes: old cache entries are then ignored."""
TIMING_VERSION = 6
"""Bump when what the time terms measure changes. Reference timings carry it in their key (as
``profile_version``, the name they were written under), so a change to the measured bytes alone
(7: checkpointed blocks) leaves the shipped references valid."""

TIMING_FREE = ("ranks", "lora_alpha", "lora_scale")
"""Key fields the step times are shared across. A rank of 16 or 24 instead of 8 changed a
MiniLM step by −1% to +5% (measured interleaved, batch 16, sequence 64, depths 1 and 6), while
load from other processes changed a fitted time term by up to 2.3x between two measurements
minutes apart (SST-2 workload: f = 0.035 s idle, 0.078 s beside three other jobs). Timed
separately, each method's rank layout (or per-block LoRA scale) would carry the load of its own
moment into its virtual times."""

BITS = (8, 4, 2)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StepTiming:
    """A profile's time terms (docs/methods.md §3) and the timed steps they were fitted to."""

    f: float
    g: float
    o: float
    c: float
    timed: tuple[tuple[int, int, float], ...] = ()

    @classmethod
    def of(cls, profile: CostProfile) -> StepTiming:
        timed = tuple(tuple(t) for t in profile.extra.get("timed", ()))
        return cls(profile.f, profile.g, profile.o, profile.c, timed)

    @property
    def shareable(self) -> bool:
        """Fitted over at least two depths: a fit over one (a global LoRA depth of 1) cannot
        tell ``g`` from ``c``, so it must not serve deeper layouts."""
        return len({depth for depth, _, _ in self.timed}) >= 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepTiming:
        timed = tuple((int(a), int(b), float(t)) for a, b, t in d["timed"])
        return cls(float(d["f"]), float(d["g"]), float(d["o"]), float(d["c"]), timed)


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    timed_steps: int = 4
    """Timed steps per timing point after one warm-up step; the fastest is used, since
    interference from other processes only ever adds time."""
    bits: tuple[int, ...] = BITS


def profile_workload(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    quant: QuantConfig,
    settings: ProfileSettings | None = None,
    timing: StepTiming | None = None,
) -> CostProfile:
    """Measure the cost profile of training ``structure`` on batches shaped like ``batch``.

    ``batch`` holds ``train.batch_size`` samples padded to the sequence length, and is measured
    at that length (never trimmed to its longest sample). With ``timing``
    (the same workload's time terms, measured before) only the bytes are measured. The model's
    federated tensors and the global torch RNG are restored afterwards, so profiling does not
    change the run that follows.
    """
    settings = settings or ProfileSettings()
    train = dataclasses.replace(train, trim_batches=False)
    num_blocks, top = structure.num_blocks, structure.depth
    batch = _take(batch, train.batch_size)
    before = get_state(model)
    rng = torch.get_rng_state()
    try:
        path = _saved_on_path(model, parts, structure, batch, train, quant)
        saved = {
            d: _saved_at_depth(model, parts, structure, batch, train, quant, d)
            for d in range(1, top + 1)
        }
        padded = _padded(batch)
        recomputed = {
            d: _saved_at_depth(model, parts, structure, padded, train, quant, d, checkpointed=d)
            for d in range(1, top + 1)
        }
        if timing is None:
            timing = _fit_timing(
                *_time_steps(model, parts, structure, batch, train, quant, settings), num_blocks
            )
    finally:
        load_state(model, before)
        torch.set_rng_state(rng)

    mid, bottom = _per_block(saved, num_blocks, lambda s: s.per_block)
    kept, kept_bottom = _per_block(recomputed, num_blocks, lambda s: s.per_block)
    quantized: dict[int, tuple[int, ...]] = {}
    quantized_bottom: dict[int, tuple[int, ...]] = {}
    for bits in settings.bits:
        spec = QuantSpec(bits=bits, group_size=quant.group_size)
        quantized[bits], quantized_bottom[bits] = _per_block(
            saved, num_blocks, functools.partial(SavedBytes.quantized_per_block, spec=spec)
        )
    full = saved[top]
    span_blocks = [b for b in full.per_block if b != HEAD]
    unquantized_total = sum(full.per_block[b] for b in span_blocks)
    ratio = {}
    for bits in settings.bits:
        held = full.quantized_per_block(QuantSpec(bits=bits, group_size=quant.group_size))
        ratio[bits] = sum(held[b] for b in span_blocks) / max(1, unquantized_total)
    lora, head = _param_counts(model, parts, num_blocks)
    return CostProfile(
        num_blocks=num_blocks,
        frozen_weight_bytes=_frozen_bytes(model),
        lora_params=lora,
        head_params=head,
        lora_ranks=tuple(
            structure.rank_of(b) if b in structure.lora_blocks else 0 for b in range(num_blocks)
        ),
        saved_bytes=mid,
        saved_bytes_bottom=bottom,
        quant_ratio={b: r for b, r in ratio.items() if r > 0},
        head_saved_bytes=full.per_block.get(HEAD, 0),
        f=timing.f,
        g=timing.g,
        o=timing.o,
        c=timing.c,
        optimizer_bytes_per_param=0 if train.optimizer == "sgd" else 8,
        saved_bytes_path=path,
        saved_bytes_quantized=quantized,
        saved_bytes_bottom_quantized=quantized_bottom,
        saved_bytes_checkpointed=kept,
        saved_bytes_bottom_checkpointed=kept_bottom,
        extra={"timed": [list(t) for t in timing.timed], "lora_depth": top},
    )


def _fit_timing(
    times: list[tuple[int, int, float]], forward: float | None, num_blocks: int
) -> StepTiming:
    f, g, o, c = fit_times(times, num_blocks, forward_per_block=forward)
    if c < 0:
        # A frozen block's forward (timed) can exceed the fitted constant's share: the
        # embeddings, head and optimizer are then too cheap to separate. Only L·f + c enters
        # any prediction, so keep that sum and put it all in f.
        f, c = f + c / num_blocks, 0.0
    return StepTiming(f, g, o, c, tuple(times))


# --------------------------------------------------------------------------- bytes


def _one_step(train: TrainConfig, steps: int = 1) -> TrainConfig:
    return dataclasses.replace(train, local_steps=steps)


def _saved_at_depth(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    quant: QuantConfig,
    depth: int,
    checkpointed: int = 0,
) -> SavedBytes:
    config = DeviceConfig(depth=depth, quantized=0, bits=quant.bits, checkpointed=checkpointed)
    batch_train = dataclasses.replace(train, batch_size=len(batch["labels"]))
    return train_local(
        model, parts, structure, batch, config, _one_step(batch_train), 0, quant
    ).saved


def _padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with its last sample's last token masked. A checkpointed block keeps the inputs
    it is given, and BERT gives its blocks an attention mask only when some sample is padded:
    measured on a padded batch whatever the data, the bytes are those of the common case and
    never below a run's."""
    mask = batch["attention_mask"].clone()
    mask[-1, -1] = 0
    return {**batch, "attention_mask": mask}


def _saved_on_path(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    quant: QuantConfig,
) -> tuple[int, ...]:
    """``A_l`` of blocks backward passes through without training them (FedRA's gaps): one step
    training only the lowest and the top LoRA block. Empty when there is no block between."""
    lowest, top = structure.lora_blocks[0], structure.lora_blocks[-1]
    if top - lowest < 2:
        return ()
    config = DeviceConfig(depth=structure.depth, blocks=(lowest, top))
    step = train_local(model, parts, structure, batch, config, _one_step(train), 0, quant)
    inner = [step.saved.per_block.get(b, 0) for b in range(lowest + 1, top)]
    value = round(sum(inner) / len(inner))  # alike blocks; also used below the global depth
    return tuple(
        step.saved.per_block.get(b, value) if lowest < b < top else value
        for b in range(structure.num_blocks)
    )


def _per_block(
    saved: dict[int, SavedBytes],
    num_blocks: int,
    values: Callable[[SavedBytes], dict[int, int]],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(A_l, A_l as the bottom of the span)`` per block from the step at every depth.

    A block's inner value comes from the deepest step (where it has a trainable block below);
    blocks no step trained inside a span (the lowest LoRA block, and blocks below the global
    depth ``D``) repeat the nearest measured value: they are never charged in that role, but
    ``M(L, 0)`` (the fleet's reference footprint) needs every block.
    """
    top = max(saved)
    deepest = values(saved[top])
    lowest = num_blocks - top
    bottom = [0] * num_blocks
    for depth, measured in saved.items():
        bottom[num_blocks - depth] = values(measured).get(num_blocks - depth, 0)
    mid = [deepest.get(b, 0) for b in range(num_blocks)]
    inner = mid[lowest + 1] if lowest + 1 < num_blocks else bottom[lowest]
    mid[lowest] = inner
    for b in range(lowest):  # below D: extrapolate from the lowest LoRA block
        mid[b], bottom[b] = inner, bottom[lowest]
    return tuple(mid), tuple(bottom)


def _param_counts(
    model: nn.Module, parts: ModelParts, num_blocks: int
) -> tuple[tuple[int, ...], int]:
    params = dict(model.named_parameters())
    lora = [0] * num_blocks
    head = 0
    for name in federated_param_names(model):
        if is_head_param(name):
            head += params[name].numel()
        else:
            block = block_of(name, parts)
            assert block is not None, name
            lora[block] += params[name].numel()
    return tuple(lora), head


def _frozen_bytes(model: nn.Module) -> int:
    """``W``: every parameter that is not a federated (LoRA or head) tensor."""
    federated = set(federated_param_names(model))
    return sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if n not in federated
    )


# --------------------------------------------------------------------------- time


@contextmanager
def _block_forward_timer(blocks: nn.ModuleList, below: int) -> Iterator[list[float]]:
    """Seconds of each forward of blocks ``0 … below-1`` (the frozen prefix) while active."""
    seconds: list[float] = []
    starts: dict[int, float] = {}
    handles = []
    device = model_device(blocks)

    def start(index: int) -> None:
        synchronize(device)  # an accelerator runs the block's kernels after the call returns
        starts[index] = time.perf_counter()

    def stop(index: int) -> None:
        synchronize(device)
        seconds.append(time.perf_counter() - starts[index])

    for index in range(below):
        block = blocks[index]
        handles.append(block.register_forward_pre_hook(lambda *_, i=index: start(i)))
        handles.append(block.register_forward_hook(lambda *_, i=index: stop(i)))
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


def _time_steps(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    quant: QuantConfig,
    settings: ProfileSettings,
) -> tuple[list[tuple[int, int, float]], float | None]:
    """Fastest step seconds at a few ``(d, q)`` and the mean forward seconds of a frozen block."""
    top, num_blocks = structure.depth, structure.num_blocks
    points = sorted({(1, 0), ((top + 1) // 2, 0), (top, 0), (top, top)})
    steps = _one_step(train, settings.timed_steps + 1)
    samples: list[tuple[int, int, float]] = []
    forward: float | None = None
    for depth, q in points:
        config = DeviceConfig(depth=depth, quantized=q, bits=quant.bits)
        frozen = num_blocks - depth if depth == 1 else 0
        with _block_forward_timer(parts.blocks, frozen) as block_seconds:
            result = train_local(model, parts, structure, batch, config, steps, 0, quant)
        samples.append((depth, q, min(result.step_seconds[1:])))
        if block_seconds:
            # drop the warm-up step's forwards, then the fastest step's mean per block
            per_step = [
                block_seconds[i : i + frozen] for i in range(frozen, len(block_seconds), frozen)
            ]
            forward = min(statistics.fmean(s) for s in per_step)
    return samples, forward


def _take(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Exactly ``size`` samples (repeated if the batch is smaller): the trainer's batch shape."""
    n = len(batch["labels"])
    times = -(-size // n)
    return {k: v.repeat(times, *([1] * (v.dim() - 1)))[:size] for k, v in batch.items()}


# --------------------------------------------------------------------------- cache


def profile_key(**fields: Any) -> dict[str, Any]:
    """The cache key: the caller's workload fields plus this host and library versions."""
    return {
        **fields,
        "profile_version": PROFILE_VERSION,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def cached_profile(
    key: dict[str, Any],
    measure: Callable[[StepTiming | None], CostProfile],
    cache_root: Path,
    refresh: bool = False,
) -> tuple[CostProfile, Path, bool]:
    """The cached profile for ``key``, measured (and stored atomically) when missing.

    ``measure`` is given the time terms already measured for a key that differs only in
    :data:`TIMING_FREE` fields (``None`` when there are none, or on ``refresh``); the time terms
    of a profile measured without them are stored for the next. Returns ``(profile, path,
    measured_now)``.
    """
    path = _entry_path(cache_root / "profiles", key)
    stored = None if refresh else _read_entry(path, key, CostProfile.from_dict)
    if stored is not None:
        return stored, path, False
    timing_key = {k: v for k, v in key.items() if k not in TIMING_FREE}
    timing_key["profile_version"] = TIMING_VERSION  # new bytes alone keep the time terms
    timing_path = _entry_path(cache_root / "timings", timing_key)
    timing = None if refresh else _read_entry(timing_path, timing_key, StepTiming.from_dict)
    profile = measure(timing)
    _write_entry(path, key, profile.to_dict())
    measured = StepTiming.of(profile)
    if timing is None and measured.shareable:
        _write_entry(timing_path, timing_key, measured.to_dict())
    return profile, path, True


def _json_key(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def _entry_path(folder: Path, key: dict[str, Any]) -> Path:
    return folder / f"{hashlib.sha256(_json_key(key).encode()).hexdigest()[:16]}.json"


def _read_entry(path: Path, key: dict[str, Any], parse: Callable[[Any], T]) -> T | None:
    """The value stored at ``path`` for exactly ``key``, parsed; ``None`` when missing,
    unreadable or foreign (it is then measured again and overwritten)."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") != json.loads(_json_key(key)):
            return None
        return parse(stored["value"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_entry(path: Path, key: dict[str, Any], value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": json.loads(_json_key(key)), "value": value}, indent=1))
    os.replace(tmp, path)
