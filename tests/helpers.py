"""What several test modules share: small run overrides and synthetic batches."""

from __future__ import annotations

import torch

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
