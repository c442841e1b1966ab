"""Local executor: every client in this process, one after the other, on one shared base model.

Only the LoRA and head tensors are swapped per device; the frozen base weights are never copied.
:func:`train_device` is the client's whole work on one instruction, and every executor's client
side calls it, so no engine carries its own copy of the training logic.
"""

from __future__ import annotations

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.models.lora import LoraStructure, State, load_state
from fedquad.models.registry import ModelParts
from fedquad.server.faults import CORRUPT, CRASH, DELAY
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.train.local import evaluate, train_local

TensorData = dict[str, torch.Tensor]


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

    An injected fault (``instruction.fault``) makes the device crash before replying, report
    that it ran ``delay_factor`` times slower, or send NaN in place of its update.
    """
    if instruction.fault == CRASH:
        return TrainReply(
            device_id=instruction.device_id,
            tensors={},
            num_samples=len(data["labels"]),
            error="crashed mid-round (injected fault)",
        )
    load_state(model, instruction.tensors)
    # the update is a function of the instruction alone (train_local seeds dropout too),
    # whichever process trains it and whatever ran there before
    result = train_local(
        model, parts, structure, data, instruction.config, settings, instruction.seed, quant
    )
    measurements = result.measurements()
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
