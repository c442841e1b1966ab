"""Training parity of activation quantization: the default federated experiment with every
trainable block's saved activations quantized at 8 and 4 bits, against the unquantized run (same
seed, same rounds). Prints final and best test accuracy of each and the difference in points.

    .venv/bin/python benchmarks/actquant_parity.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

import fedquad
from fedquad.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="fedquad-parity-")
    base = [*args.overrides, f"output_dir={out}"]
    blocks = load_config(args.config, base).lora.depth or 10**6  # q is capped at each depth
    runs = {}
    for label, extra in [
        ("unquantized", ["quant.blocks=0"]),
        ("8 bits, all blocks", [f"quant.blocks={blocks}", "quant.bits=8"]),
        ("4 bits, all blocks", [f"quant.blocks={blocks}", "quant.bits=4"]),
    ]:
        result = fedquad.run(load_config(args.config, [*base, *extra]))
        runs[label] = result.summary
        print(f"done: {label}: {result.summary['final_accuracy']:.4f}", flush=True)
    ref = runs["unquantized"]
    print(f"{'run':22} {'final acc':>9} {'best acc':>9} {'Δ final (points)':>17} {'host s':>7}")
    for label, s in runs.items():
        delta = 100 * (s["final_accuracy"] - ref["final_accuracy"])
        print(
            f"{label:22} {s['final_accuracy']:9.4f} {s['best_accuracy']:9.4f} {delta:17.1f} "
            f"{s['host_seconds']:7.0f}"
        )


if __name__ == "__main__":
    main()
