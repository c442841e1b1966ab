"""What several test modules share: small run overrides, synthetic batches and a hand-made cost
profile."""

from __future__ import annotations

import torch

from fedquad.cost.model import CostProfile

SMALL_RUN = [  # a small FedLoRA run: tiny data, uniform fleet, 2 rounds of 2 of 4 devices
    "method='fedlora'",
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "model.max_length=32",
    "federation.rounds=2",
    "federation.num_devices=4",
    "federation.devices_per_round=2",
    "train.local_steps=2",
    "train.batch_size=8",
    "lora.depth=2",
    "fleet.name=uniform",  # memory for every config: the same devices train in every variant
    "profile.timed_steps=1",
]

TINY_HETEROGENEOUS = [  # two one-step rounds on the default (heterogeneous) fleet; add devices
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "model.max_length=64",
    "federation.rounds=2",
    "train.local_steps=1",
    "train.batch_size=16",
    "lora.depth=2",
    "profile.timed_steps=1",
]


def make_batch(n: int = 8, seq: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 5000, (n, seq), generator=g),
        "attention_mask": torch.ones(n, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def tiny_profile(**overrides) -> CostProfile:
    """L = 4 with distinct numbers everywhere, so a wrong index shows up in the total."""
    values = dict(
        num_blocks=4,
        frozen_weight_bytes=1000,
        lora_params=(10, 20, 30, 40),
        head_params=5,
        saved_bytes=(100, 200, 300, 400),
        saved_bytes_bottom=(90, 180, 270, 360),
        quant_ratio={8: 0.5, 4: 0.3, 2: 0.15},
        head_saved_bytes=50,
        f=0.01,
        g=0.02,
        o=0.005,
        c=0.1,
        optimizer_bytes_per_param=8,
        slack_bytes=7,
    )
    values.update(overrides)
    return CostProfile(**values)  # type: ignore[arg-type]
