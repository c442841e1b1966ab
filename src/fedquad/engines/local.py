"""Local executor: every client in this process, one after the other, on one shared base model
(``engine.workers = 0``; :mod:`fedquad.engines.workers` spreads them over processes).

Only the LoRA and head tensors are swapped per device; the frozen base weights are never copied.
:func:`train_device` is the client's whole work on one instruction, and every executor's client
side calls it, so no engine carries its own copy of the training logic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.data.tokenize import TensorData
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import LoraStructure, State, load_state
from fedquad.models.registry import ModelParts
from fedquad.server.faults import CORRUPT, CRASH, DELAY, OOM
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.train.local import TrainResult, evaluate, train_local
from fedquad.train.placement import release_cached_memory

_OUT_OF_MEMORY = ("out of memory", "can't allocate memory")
"""What the allocators that raise a plain RuntimeError say (the second: torch's CPU one)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A device memory error: torch's (CUDA, MPS, ...), Python's, or a RuntimeError whose
    message says the allocation failed."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY)


@contextmanager
def single_thread() -> Iterator[None]:
    """Torch on one thread inside the block: reductions and GEMMs split their work by thread
    count, so every device trains on one, whichever process trains it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def injected_oom(parts: ModelParts) -> Iterator[None]:
    """An ``oom`` fault: the first forward through the top block (always trained) raises a real
    :class:`torch.OutOfMemoryError`, mid-step, as an allocator would."""

    def fail(*_: object) -> None:
        raise torch.OutOfMemoryError("out of memory (injected fault)")

    handle = parts.blocks[-1].register_forward_pre_hook(fail)
    try:
        yield
    finally:
        handle.remove()


def train_device(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    data: TensorData,
    instruction: TrainInstruction,
    settings: TrainConfig,
    quant: QuantConfig,
) -> TrainReply:
    """Load the instruction's global tensors into ``model``, train, and reply.

    A device memory error (:func:`is_out_of_memory`) is retried once with the instruction's
    ``fallback`` config; the reply's ``oom_retry`` measurement says what failed and what the
    update was trained with. If there is no fallback or it fails too, the reply is an error.
    An injected fault (``instruction.fault``) makes the device crash before replying, report
    that it ran ``delay_factor`` times slower, send NaN in place of its update, or run out of
    memory in its first attempt.
    """
    if instruction.fault == CRASH:
        return TrainReply(
            device_id=instruction.device_id,
            tensors={},
            num_samples=len(data["labels"]),
            error="crashed mid-round (injected fault)",
        )

    def attempt(config: DeviceConfig) -> TrainResult:
        # the failed attempt may have left trained values and gradients: start afresh
        load_state(model, instruction.tensors)
        for param in model.parameters():
            param.grad = None
        # the update is a function of the instruction alone (train_local seeds dropout too),
        # whichever process trains it and whatever ran there before
        return train_local(model, parts, structure, data, config, settings, instruction.seed, quant)

    retry: dict[str, Any] = {}
    result: TrainResult | None = None
    try:
        with injected_oom(parts) if instruction.fault == OOM else nullcontext():
            result = attempt(instruction.config)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        retry["failed_config"] = instruction.config.as_dict()
    error = "out of memory (no fallback config)"
    if result is None and instruction.fallback is not None:
        release_cached_memory()
        try:
            result = attempt(instruction.fallback)
            retry["used_config"] = instruction.fallback.as_dict()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            retry["retry_failed_config"] = instruction.fallback.as_dict()
            error = "out of memory (after retry)"
    if result is None:
        return TrainReply(
            device_id=instruction.device_id,
            tensors={},
            num_samples=len(data["labels"]),
            measurements={"oom_retry": retry},
            error=error,
        )
    measurements = result.measurements()
    if retry:
        measurements["oom_retry"] = retry
    tensors = result.tensors
    if instruction.fault == DELAY:
        measurements["delay_factor"] = instruction.delay_factor
    elif instruction.fault == CORRUPT:
        tensors = {name: torch.full_like(t, float("nan")) for name, t in tensors.items()}
    return TrainReply(
        device_id=instruction.device_id,
        tensors=tensors,
        num_samples=result.num_samples,
        measurements=measurements,
    )


class LocalExecutor:
    def __init__(
        self,
        model: nn.Module,
        parts: ModelParts,
        structure: LoraStructure,
        device_data: list[TensorData],
        test_data: TensorData,
        settings: TrainConfig,
        quant: QuantConfig,
    ) -> None:
        self.model = model
        self.parts = parts
        self.structure = structure
        self.device_data = device_data
        self.test_data = test_data
        self.settings = settings
        self.quant = quant

    def device_samples(self) -> list[int]:
        return [len(d["labels"]) for d in self.device_data]

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        # one thread, as in a worker process: the updates are the same for any engine.workers
        with single_thread():
            return self._train(instructions)

    def _train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        return [
            train_device(
                self.model,
                self.parts,
                self.structure,
                self.device_data[ins.device_id],
                ins,
                self.settings,
                self.quant,
            )
            for ins in instructions
        ]

    def evaluate(self, state: State) -> dict[str, float]:
        load_state(self.model, state)
        return evaluate(self.model, self.test_data, self.settings.eval_batch_size)
