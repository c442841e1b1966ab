"""The CUDA path in one run: the quickstart for a few rounds in fp32 and in bf16 on the GPU,
quantizer parity of CUDA tensors against the CPU, and step time and peak GPU memory per depth.

Exits with a message (status 2) when torch sees no CUDA device, so it can be tried anywhere.

    .venv/bin/python benchmarks/gpu_check.py [--rounds 3] [--batch 16] [--seq 128] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import fedquad
from fedquad.config import QuantConfig, TrainConfig, load_config
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import attach_lora, build_structure
from fedquad.models.registry import describe_model, load_sequence_classifier
from fedquad.quiet import quiet_libraries
from fedquad.train.local import train_local
from fedquad.train.placement import place_model
from fedquad.train.quantizer import QuantSpec, quantize

QUICKSTART = Path(__file__).parents[1] / "presets" / "quickstart.toml"
PRECISIONS = ("fp32", "bf16")


def quickstart(rounds: int) -> None:
    print(f"\n== quickstart, {rounds} rounds on cuda ==")
    print(
        f"{'precision':>9}  {'final acc':>9}  {'best acc':>8}  {'host s':>7}  {'median step s':>13}"
    )
    for precision in PRECISIONS:
        with tempfile.TemporaryDirectory() as out:
            overrides = [
                f"federation.rounds={rounds}",
                "federation.eval_every=1",
                "train.device='cuda'",
                f"train.precision='{precision}'",
                f"output_dir='{out}'",
            ]
            result = fedquad.run(load_config(QUICKSTART, overrides))
        s = result.summary
        print(
            f"{precision:>9}  {s['final_accuracy']:>9.3f}  {s['best_accuracy']:>8.3f}  "
            f"{s['host_seconds']:>7.1f}  {s['median_step_seconds']:>13.4f}"
        )


def quantizer_parity() -> bool:
    """Same grid (scale, minimum) on both devices, codes within one level (the dither differs),
    every element within one step, and the mean of many draws unbiased on the GPU."""
    print("\n== quantizer: CUDA tensors against the CPU ==")
    ok = True
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(64, 4099, generator=g) * 3).to(dtype)
        for bits in (8, 4, 2):
            spec = QuantSpec(bits=bits)
            cpu = quantize(x, spec, torch.Generator().manual_seed(1))
            gpu = quantize(x.cuda(), spec, torch.Generator(device="cuda").manual_seed(1))
            same_grid = torch.equal(gpu.scale.cpu(), cpu.scale) and torch.equal(
                gpu.minimum.cpu(), cpu.minimum
            )
            step = cpu.scale.float().repeat_interleave(spec.group_size)[: x.numel()]
            err = (gpu.dequantize().cpu().float().reshape(-1) - x.float().reshape(-1)).abs()
            slack = x.float().abs().reshape(-1) * torch.finfo(dtype).eps + 1e-6
            within = bool((err <= step * (1 + 1e-4) + slack).all())
            draws = torch.stack(
                [
                    quantize(x.cuda(), spec, torch.Generator(device="cuda").manual_seed(s))
                    .dequantize()
                    .float()
                    for s in range(200)
                ]
            ).mean(0)
            bias = ((draws.cpu() - x.float()).reshape(-1) / step.clamp_min(1e-12)).mean().item()
            row_ok = same_grid and within and abs(bias) < 0.01
            ok &= row_ok
            print(
                f"{str(dtype):>15} {bits} bits: same grid {same_grid}, within one step {within}, "
                f"mean bias {bias:+.5f} steps, bytes {gpu.nbytes} (cpu {cpu.nbytes}) "
                f"{'ok' if row_ok else 'FAILED'}"
            )
    return ok


def per_depth(batch_size: int, seq: int, steps: int) -> None:
    print(f"\n== MiniLM step time and peak GPU memory per depth (batch {batch_size}, seq {seq}) ==")
    print(f"{'precision':>9}  {'depth':>5}  {'q':>2}  {'median step s':>13}  {'peak GPU MiB':>12}")
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 5000, (batch_size, seq), generator=g),
        "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=g),
    }
    for precision in PRECISIONS:
        torch.manual_seed(0)
        model = load_sequence_classifier("minilm", num_labels=2)
        parts = describe_model(model)
        structure = build_structure(parts.num_blocks, rank=8)
        peft_model = attach_lora(model, parts, structure)
        place_model(peft_model, "cuda", precision)
        train = TrainConfig(local_steps=steps + 1, batch_size=batch_size, trim_batches=False)
        for depth in range(1, parts.num_blocks + 1):
            for q in sorted({0, depth}):
                config = DeviceConfig(depth=depth, quantized=q)
                result = train_local(
                    peft_model, parts, structure, batch, config, train, 0, QuantConfig()
                )
                median = statistics.median(result.step_seconds[1:])
                peak = (result.peak_device_bytes or 0) / 2**20
                print(f"{precision:>9}  {depth:>5}  {q:>2}  {median:>13.4f}  {peak:>12.1f}")
        del peft_model, model
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device here; run it on a machine with a GPU")
        return 2
    quiet_libraries()
    name = torch.cuda.get_device_name()
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"bf16 supported: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    start = time.perf_counter()
    parity = quantizer_parity()
    per_depth(args.batch, args.seq, args.steps)
    quickstart(args.rounds)
    print(f"\nquantizer parity {'ok' if parity else 'FAILED'}; {time.perf_counter() - start:.0f} s")
    return 0 if parity else 1


if __name__ == "__main__":
    sys.exit(main())
