"""Host seconds per simulated device-step, side by side: today's path against each speed-up.

The workload is the SST-2 comparison's (``reproduce.py``: MiniLM, length 64, batch 16, 16 local
steps, 5 devices a round; the directory from ``--sst2-dir`` or ``$FEDQUAD_SST2_DIR``), or the
fine-food reviews' when SST-2 is absent (said so). One instruction list — the same devices,
configs (every block trained) and seeds — is replayed in every variant, and only the executor's
training is timed; loading the model and data, starting workers and evaluating are printed apart.

    .venv/bin/python benchmarks/host_throughput.py [--devices 10] [--steps 16] [--workers 2]
        [--bf16 auto|yes|no]

Variants: (a) today's path: padded batches, fp32, in this process (``engine.workers = 0``);
(b) each speed-up alone: trimmed batches, bf16, worker processes; (c) all of them together (and
in this process alone); (d) a bare PEFT loop doing the same steps with the same batch trimming
and precision, single-threaded, as the floor. A variant whose setting this version of the
config does not know is skipped with a note. Timings mean something only on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from fedquad.api import seed_everything
from fedquad.config import ExperimentConfig, load_config
from fedquad.data.sources import _find_sst2_dir
from fedquad.device_config import DeviceConfig
from fedquad.engines import local_executor
from fedquad.engines.local import single_thread
from fedquad.engines.workers import WorkerPoolExecutor, host_cores
from fedquad.errors import FedquadError
from fedquad.models.lora import get_state
from fedquad.quiet import quiet_libraries
from fedquad.server.messages import TrainInstruction
from fedquad.workbench import Workbench, build_workbench

TODAY = {"train.trim_batches": "false", "train.precision": "'fp32'", "engine.workers": "0"}
"""Today's path; a key this config does not know is today's behaviour by definition."""


@dataclass
class Variant:
    label: str
    settings: dict[str, str]
    bare: bool = False
    """The bare PEFT loop with the variant's trimming and precision, not the executor."""


def variants(workers: int, with_bf16: bool) -> list[Variant]:
    trim, bf16 = {"train.trim_batches": "true"}, {"train.precision": "'bf16'"}
    pool = {"engine.workers": str(workers)}
    if not with_bf16:
        return [
            Variant("(a) today: padded, fp32, 1 process", {}),
            Variant("(b) trimmed", trim),
            Variant(f"(b) {workers} workers", pool),
            Variant(f"(c) trimmed + {workers} workers", trim | pool),
            Variant("(d) bare PEFT loop: padded, fp32", {}, bare=True),
            Variant("(d) bare PEFT loop: trimmed", trim, bare=True),
        ]
    return [
        Variant("(a) today: padded, fp32, 1 process", {}),
        Variant("(b) trimmed", trim),
        Variant("(b) bf16", bf16),
        Variant(f"(b) {workers} workers", pool),
        Variant(f"(c) trimmed + {workers} workers", trim | pool),
        Variant("(c) trimmed + bf16, 1 process", trim | bf16),
        Variant(f"(c) trimmed + bf16 + {workers} workers", trim | bf16 | pool),
        Variant("(d) bare PEFT loop: padded, fp32", {}, bare=True),
        Variant("(d) bare PEFT loop: trimmed", trim, bare=True),
        Variant("(d) bare PEFT loop: trimmed + bf16", trim | bf16, bare=True),
    ]


def host_has_bf16() -> bool:
    """bf16 pays off only with hardware support; elsewhere autocast is far slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported())


def _overrides(settings: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


def known(base: list[str], key: str, value: str) -> bool:
    try:
        load_config(None, [*base, f"{key}={value}"])
    except FedquadError:
        return False
    return True


def variant_config(base: list[str], variant: Variant) -> ExperimentConfig | str:
    """The variant's config, or why it is skipped."""
    settings = {k: v for k, v in TODAY.items() if known(base, k, v)} | variant.settings
    unknown = [k for k, v in variant.settings.items() if not known(base, k, v)]
    if unknown:
        return f"skipped: this config has no {', '.join(unknown)}"
    return load_config(None, [*base, *_overrides(settings)])


def instructions(bench: Workbench, count: int) -> list[TrainInstruction]:
    """``count`` devices with samples, every block trained, fixed seeds: the same in every
    variant (the workbench is built after the same seeding)."""
    with_data = [i for i, d in enumerate(bench.device_data) if len(d["labels"])]
    devices = random.Random(0).sample(with_data, min(count, len(with_data)))
    config = DeviceConfig(depth=bench.structure.depth)
    tensors = get_state(bench.model)
    return [
        TrainInstruction(device_id=d, round=1, config=config, tensors=tensors, seed=1000 + d)
        for d in devices
    ]


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def executor_seconds(bench: Workbench, todo: list[TrainInstruction]) -> dict[str, float]:
    """Training seconds of the run's executor on ``todo``, a round of ``per_round`` at a time."""
    config = bench.config
    local = local_executor(bench)
    per_round = bench.fleet.per_round
    rounds = [todo[i : i + per_round] for i in range(0, len(todo), per_round)]
    workers = int(config.engine.workers)
    times: dict[str, float] = {}
    if workers == 0:
        times["train"] = sum(timed(lambda r=r: local.train(r))[0] for r in rounds)
    else:
        with WorkerPoolExecutor(local, config, bench.model.config.num_labels, workers) as pool:
            times["worker start"] = timed(pool.start)[0]
            times["train"] = sum(timed(lambda r=r: pool.train(r))[0] for r in rounds)
    times["evaluate"] = timed(lambda: local.evaluate(get_state(bench.model)))[0]
    return times


def _batches(data: Any, batch_size: int, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The trainer's batches for a device seed: reshuffled passes over the device's samples."""
    generator = torch.Generator().manual_seed(seed)
    n, order = len(data["labels"]), []
    while len(order) < steps * batch_size:
        order.extend(torch.randperm(n, generator=generator).tolist())
    picks = [torch.tensor(order[s * batch_size : (s + 1) * batch_size]) for s in range(steps)]
    return [{k: v[idx] for k, v in data.items()} for idx in picks]


def bare_seconds(bench: Workbench, todo: list[TrainInstruction]) -> dict[str, float]:
    """The same devices' steps in a plain PEFT loop: every block's LoRA and the head, AdamW."""
    train = bench.config.train
    trim = bool(getattr(train, "trim_batches", False))
    bf16 = getattr(train, "precision", "fp32") == "bf16"
    model = bench.model
    names = [n for n, p in model.named_parameters() if ".lora_" in n or ".modules_to_save." in n]
    params = dict(model.named_parameters())
    start_state = {n: params[n].detach().clone() for n in names}
    total = 0.0
    with single_thread():
        for ins in todo:
            with torch.no_grad():
                for n in names:
                    params[n].copy_(start_state[n])
            for p in model.parameters():
                p.requires_grad_(False)
            trained = [params[n] for n in names]
            for p in trained:
                p.requires_grad_(True)
            model.train()
            optimizer = torch.optim.AdamW(trained, lr=train.lr, weight_decay=train.weight_decay)
            data = bench.device_data[ins.device_id]
            begin = time.perf_counter()
            for batch in _batches(data, train.batch_size, train.local_steps, ins.seed):
                if trim:
                    length = int(batch["attention_mask"].sum(dim=1).max())
                    batch = {k: v[:, :length] if v.dim() == 2 else v for k, v in batch.items()}
                autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
                with autocast:
                    loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            total += time.perf_counter() - begin
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"train": total}


WORKLOAD = [  # docs/methods.md §8: MiniLM on SST-2, sequence 64, batch 16, 16 local steps
    "model.name='minilm'",
    "model.max_length=64",
    "data.name='sst2'",
    "data.max_train_samples=20000",
    "data.partition='iid'",
    "train.batch_size=16",
    "train.local_steps=16",
    "train.optimizer='adamw'",
    "train.lr=1e-3",
    "lora.rank=8",
    "federation.num_devices=80",
]
FINE_FOODS = ["data.name='fine-foods'", "model.max_length=128", "train.local_steps=8"]
"""In place of SST-2 when it is absent: the fine-food comparison's workload."""


def workload(args: argparse.Namespace) -> list[str]:
    if args.sst2_dir:
        os.environ["FEDQUAD_SST2_DIR"] = args.sst2_dir
    try:
        _find_sst2_dir()
        name = "sst2"
    except FedquadError as exc:
        print(f"SST-2 is absent ({exc}): the fine-food reviews' workload instead")
        name = "fine-foods"
    base = [*WORKLOAD, *(FINE_FOODS if name == "fine-foods" else []), "fleet.name='uniform'"]
    if args.steps is not None:
        base.append(f"train.local_steps={args.steps}")
    if args.max_train_samples is not None:
        base.append(f"data.max_train_samples={args.max_train_samples}")
    base.append(f"data.max_test_samples={args.max_test_samples}")
    print(f"workload: {name}; {' '.join(base)}")
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2-dir", help="GLUE SST-2 directory (train.tsv, dev.tsv)")
    parser.add_argument("--devices", type=int, default=10, help="devices replayed (default 10)")
    parser.add_argument("--steps", type=int, help="local steps per device (default: workload's)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the pool variants")
    parser.add_argument("--max-train-samples", type=int, help="fewer sentences (smoke tests)")
    parser.add_argument("--max-test-samples", type=int, default=512, help="evaluated samples")
    parser.add_argument(
        "--bf16",
        choices=["auto", "yes", "no"],
        default="auto",
        help="include the bf16 variants (auto: only where the hardware has bf16 instructions)",
    )
    args = parser.parse_args()
    quiet_libraries()
    base = workload(args)
    print(
        f"host: {host_cores()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    with_bf16 = {"yes": True, "no": False}.get(args.bf16, host_has_bf16())
    if not with_bf16:
        print("bf16 variants left out (no bf16 instructions here, or --bf16 no)")
    rows: list[tuple[str, float]] = []
    for variant in variants(args.workers, with_bf16):
        config = variant_config(base, variant)
        if isinstance(config, str):
            print(f"{variant.label}: {config}")
            continue
        seed_everything(config.seed)
        load, bench = timed(lambda c=config: build_workbench(c))
        todo = instructions(bench, args.devices)
        steps = len(todo) * config.train.local_steps
        times = bare_seconds(bench, todo) if variant.bare else executor_seconds(bench, todo)
        per_step = times["train"] / steps
        rows.append((variant.label, per_step))
        apart = ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if k != "train")
        print(
            f"{variant.label}: {per_step:.4f} s per device-step ({steps} steps, "
            f"train {times['train']:.1f} s; apart: load {load:.1f} s"
            + (f", {apart}" if apart else "")
            + ")"
        )
    if not rows:
        return
    today = rows[0][1]
    print("\ndevice-steps per host second, relative to (a):")
    for label, per_step in rows:
        print(f"  {label:<45} {today / per_step:5.2f}x")
    measured = dict(rows)
    for executor, floor in [
        ("(a) today: padded, fp32, 1 process", "(d) bare PEFT loop: padded, fp32"),
        ("(c) trimmed + bf16, 1 process", "(d) bare PEFT loop: trimmed + bf16"),
        ("(b) trimmed", "(d) bare PEFT loop: trimmed"),
    ]:
        if executor in measured and floor in measured:
            ratio = measured[executor] / measured[floor]
            print(f"executor / bare loop per step, {floor.split(': ')[1]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
