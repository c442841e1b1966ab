"""Local executor: every client in this process, one after the other, on one shared base model.

Only the LoRA and head tensors are swapped per device; the frozen base weights are never copied.
"""

from __future__ import annotations

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.models.lora import LoraStructure, State, load_state
from fedquad.models.registry import ModelParts
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.train.local import evaluate, train_local

TensorData = dict[str, torch.Tensor]


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
        replies = []
        for ins in instructions:
            load_state(self.model, ins.tensors)
            result = train_local(
                self.model,
                self.parts,
                self.structure,
                self.device_data[ins.device_id],
                ins.config,
                self.settings,
                ins.seed,
                self.quant,
            )
            replies.append(
                TrainReply(
                    device_id=ins.device_id,
                    tensors=result.tensors,
                    num_samples=result.num_samples,
                    measurements=result.measurements(),
                )
            )
        return replies

    def evaluate(self, state: State) -> dict[str, float]:
        load_state(self.model, state)
        return evaluate(self.model, self.test_data, self.settings.eval_batch_size)
