"""Activation quantization at full depth: saved-activation MiB, peak process memory during a
training step, and step time for q in {0, L/2, L} and bits in {8, 4, 2}, each against q = 0.

Each configuration runs in a fresh worker process, so its peak resident memory (ru_maxrss) is its
own; the worker also reports its resident memory before the first step, and the table shows the
step's peak above that baseline.

    .venv/bin/python benchmarks/actquant.py [--model minilm] [--batch 16] [--seq 128] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import psutil
import torch

from fedquad.config import TrainConfig
from fedquad.models.lora import attach_lora, build_structure
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.quiet import quiet_libraries
from fedquad.train.local import DeviceConfig, train_local


def worker(args: argparse.Namespace) -> None:
    quiet_libraries()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = load_sequence_classifier(args.model, num_labels=2)
    parts = describe_model(model)
    structure = build_structure(parts.num_blocks, rank=8)
    model = attach_lora(model, parts, structure)
    g = torch.Generator().manual_seed(0)
    data = {
        "input_ids": torch.randint(1000, 5000, (args.batch, args.seq), generator=g),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=g),
    }
    settings = TrainConfig(local_steps=args.steps, batch_size=args.batch, lr=1e-4)
    config = DeviceConfig(depth=structure.depth, quantized=args.q, bits=args.bits)
    baseline = psutil.Process().memory_info().rss
    result = train_local(model, parts, structure, data, config, settings, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "L": structure.num_blocks,
                "saved": result.saved.total,
                "seconds": statistics.median(result.step_seconds[1:]),
                "peak_above_baseline": peak - baseline,
                "peak": peak,
            }
        )
    )


def run_worker(args: argparse.Namespace, q: int, bits: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--q", str(q), "--bits", str(bits)]
    cmd += ["--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq)]
    cmd += ["--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--q", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bits", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    base = run_worker(args, 0, 8)
    L = base["L"]
    rows = [("q=0 (unquantized)", base)]
    for bits in (8, 4, 2):
        for q in sorted({L // 2, L}):
            rows.append((f"q={q} at {bits} bits", run_worker(args, q, bits)))
    # the baseline again at the end: its spread shows the machine's timing noise
    rows.append(("q=0 again", run_worker(args, 0, 8)))

    mib = 2**20
    print(
        f"model {args.model}, depth L={L}, batch {args.batch}, seq {args.seq}, "
        f"median of {args.steps - 1} steps"
    )
    header = f"{'configuration':20} {'saved MiB':>10} {'ratio':>6} {'peak+ MiB':>10} {'ratio':>6}"
    print(f"{header} {'s/step':>7} {'ratio':>6}")
    for name, r in rows:
        print(
            f"{name:20} {r['saved'] / mib:10.1f} {r['saved'] / base['saved']:6.2f} "
            f"{r['peak_above_baseline'] / mib:10.1f} "
            f"{r['peak_above_baseline'] / base['peak_above_baseline']:6.2f} "
            f"{r['seconds']:7.3f} {r['seconds'] / base['seconds']:6.2f}"
        )


if __name__ == "__main__":
    main()
