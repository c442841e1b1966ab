"""Activation checkpointing against the cost model (docs/methods.md §4.4): the predicted step time
of checkpointed configs (one more forward ``f`` per checkpointed block) against the measured one,
and the predicted saved bytes against the trainer's meter.

    PYTHONPATH=src .venv/bin/python benchmarks/checkpoint_cost.py [--batch 16] [--seq 64]
        [--repeats 5]

The time terms are measured first by the reference method (interleaved points, the fastest
step of each, one thread), then every config is timed the same way: interleaved, the fastest of
``--repeats`` visits, so a slow moment of the machine hits every config alike. Run it on an
idle machine. The workload is that of docs/methods.md §8 (MiniLM-L6, rank 8, batch 16,
sequence 64, AdamW) on synthetic token ids with some padding, never trimmed.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from fedquad.config import QuantConfig, TrainConfig
from fedquad.cost.model import saved_bytes, step_seconds
from fedquad.cost.profiler import ProfileSettings, profile_workload
from fedquad.cost.timing import load_average, measure_reference
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import attach_lora, build_structure
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.quiet import quiet_libraries
from fedquad.train.local import train_local

TOLERANCE = 0.25
"""docs/methods.md §3: a predicted step time within 25% of the measured one."""


def padded_batch(n: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, seq, dtype=torch.long)
    for i in range(n):
        mask[i, seq // 2 + (i * seq) // (2 * n) :] = 0  # lengths from seq/2 up
    return {
        "input_ids": torch.randint(1000, 5000, (n, seq), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed visits of every config")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)  # as every device trains, and as the reference time terms

    torch.manual_seed(0)
    model = load_sequence_classifier("minilm", num_labels=2)
    parts = describe_model(model)
    L = parts.num_blocks
    structure = build_structure(L, rank=args.rank)
    model = attach_lora(model, parts, structure)
    batch = padded_batch(args.batch, args.seq)
    train = TrainConfig(batch_size=args.batch, local_steps=2, trim_batches=False)
    quant = QuantConfig()

    load_before = load_average()
    timing = measure_reference(model, parts, structure, batch, train, quant, args.repeats)
    profile = profile_workload(
        model, parts, structure, batch, train, quant, ProfileSettings(timed_steps=1), timing
    )
    half = (L + 1) // 2
    configs = [
        DeviceConfig(L),
        *(DeviceConfig(L, checkpointed=k) for k in (1, half, L)),
        DeviceConfig(half),
        DeviceConfig(half, checkpointed=half),
        DeviceConfig(1),
        DeviceConfig(1, checkpointed=1),
        DeviceConfig(L, quantized=1, checkpointed=L - 1),
    ]
    best = dict.fromkeys(configs, float("inf"))
    measured_bytes: dict[DeviceConfig, int] = {}
    steps = dataclasses.replace(train, local_steps=2)  # the first step of a call warms up
    for visit in range(args.repeats + 1):
        for config in configs:
            result = train_local(model, parts, structure, batch, config, steps, 0, quant)
            measured_bytes[config] = result.saved.total
            if visit:
                best[config] = min(best[config], result.step_seconds[1])
    load_after = load_average()

    print(
        f"minilm ({L} blocks), batch {args.batch}, sequence {args.seq}, rank {args.rank}, "
        f"1 thread, fastest of {args.repeats} interleaved visits; load {load_before:.2f} before, "
        f"{load_after:.2f} after"
    )
    terms = ", ".join(f"{n} {getattr(timing, n):.4f} s" for n in "fgoc")
    print(f"time terms: {terms}")
    print(
        f"{'config (d, q, k)':18} {'predicted s':>11} {'measured s':>10} {'error':>7} "
        f"{'saved MiB':>9} {'bytes':>6}"
    )
    worst = 0.0
    for config in configs:
        predicted = step_seconds(profile, config)
        error = predicted / best[config] - 1
        worst = max(worst, abs(error))
        exact = saved_bytes(profile, config) == measured_bytes[config]
        name = f"({config.depth}, {config.quantized}, {config.checkpointed})"
        print(
            f"{name:18} {predicted:11.3f} {best[config]:10.3f} {error:+7.1%} "
            f"{measured_bytes[config] / 2**20:9.2f} {'exact' if exact else 'DIFFER':>6}"
        )
    print("measured recompute per checkpointed block against f:")
    for depth in (L, half, 1):
        plain = best[DeviceConfig(depth)]
        for config in configs:
            if config.depth == depth and config.checkpointed and not config.quantized:
                per_block = (best[config] - plain) / config.checkpointed
                print(
                    f"  depth {depth}, k {config.checkpointed}: {per_block:.4f} s "
                    f"({per_block / timing.f:.2f} f)"
                )
    verdict = "within" if worst <= TOLERANCE else "OUTSIDE"
    print(f"largest step-time error {worst:.1%}: {verdict} the {TOLERANCE:.0%} of §3")


if __name__ == "__main__":
    main()
