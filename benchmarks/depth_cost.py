"""Host seconds per step and saved-activation MiB for LoRA depth 1, L/2 and L against plain PEFT
LoRA on all blocks, measured side by side in one run.

    .venv/bin/python benchmarks/depth_cost.py [--model minilm] [--batch 16] [--seq 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from fedquad.config import TrainConfig
from fedquad.models.lora import attach_lora, block_linear_targets, build_structure
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.quiet import quiet_libraries
from fedquad.train.local import DeviceConfig, train_local


def batch(n: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 5000, (n, seq), generator=g),
        "attention_mask": torch.ones(n, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def plain_peft(model_name: str, rank: int, data: dict, steps: int) -> tuple[float, float]:
    """Reference: PEFT LoRA on every block, whole model in train mode, one global count."""
    torch.manual_seed(0)
    model = load_sequence_classifier(model_name, num_labels=2)
    parts = describe_model(model)
    config = LoraConfig(
        r=rank,
        lora_alpha=16,
        target_modules=block_linear_targets(parts),
        modules_to_save=parts.head_names,
    )
    model = get_peft_model(model, config)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds, saved = [], 0
    for _ in range(steps):
        held: dict[int, int] = {}

        def pack(t, held=held):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                held[ptr] = t.untyped_storage().nbytes()
            return t

        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        seconds.append(time.perf_counter() - start)
        saved = sum(held.values())
    return statistics.median(seconds[1:]), saved / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(2)
    data = batch(args.batch, args.seq)

    torch.manual_seed(0)
    model = load_sequence_classifier(args.model, num_labels=2)
    parts = describe_model(model)
    L = parts.num_blocks
    structure = build_structure(L, rank=args.rank)
    model = attach_lora(model, parts, structure)
    settings = TrainConfig(local_steps=args.steps, batch_size=args.batch, lr=1e-4)
    rows = []
    for depth in sorted({1, max(1, L // 2), L}):
        result = train_local(model, parts, structure, data, DeviceConfig(depth=depth), settings, 0)
        rows.append(
            (
                f"fedquad depth {depth}",
                statistics.median(result.step_seconds[1:]),
                result.saved.total / 2**20,
            )
        )
    rows.append(
        (f"plain PEFT LoRA, all {L} blocks", *plain_peft(args.model, args.rank, data, args.steps))
    )

    ref_s, ref_mib = rows[-2][1], rows[-2][2]
    print(
        f"model {args.model} ({L} blocks), batch {args.batch}, seq {args.seq}, rank {args.rank}, "
        f"median of {args.steps - 1} steps, {torch.get_num_threads()} threads"
    )
    print(
        f"{'configuration':34} {'s/step':>8} {'saved MiB':>10} {'time vs L':>10} {'saved vs L':>11}"
    )
    for name, sec, mib in rows:
        print(f"{name:34} {sec:8.3f} {mib:10.1f} {sec / ref_s:10.2f} {mib / ref_mib:11.2f}")
    d1 = rows[0]
    print(
        f"depth 1 saves {1 - d1[2] / ref_mib:.0%} of the saved-activation bytes and "
        f"{1 - d1[1] / ref_s:.0%} of the step time of depth {L}"
    )


if __name__ == "__main__":
    main()
