"""Training parity of activation quantization: the default federated experiment with every
trainable block's saved activations quantized at 8 and 4 bits, against the unquantized run (same
seed, same rounds). Prints final and best test accuracy of each and the difference in points, per
seed and averaged over the seeds (stochastic rounding changes the trajectory, so one seed's
difference is partly seed noise).

    .venv/bin/python benchmarks/actquant_parity.py [--seeds 0,1,2] [--config FILE] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import fedquad
from fedquad.config import PRESETS_DIR, load_config

QUICKSTART = PRESETS_DIR / "quickstart.toml"

VARIANTS = {
    "unquantized": ["quant.blocks=0"],
    "8 bits, all blocks": ["quant.blocks={all}", "quant.bits=8"],
    "4 bits, all blocks": ["quant.blocks={all}", "quant.bits=4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(QUICKSTART), help="default: the make-run preset")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = tempfile.mkdtemp(prefix="fedquad-parity-")
    # FedLoRA on the uniform fleet: every device trains every block, in every variant.
    base = ["method='fedlora'", "fleet.name=uniform", *args.overrides, f"output_dir={out}"]
    blocks = load_config(args.config, base).lora.depth or 10**6  # q is capped at each depth
    final: dict[str, list[float]] = {label: [] for label in VARIANTS}
    print(f"{'seed':>4} {'run':22} {'final acc':>9} {'best acc':>9} {'Δ final':>8} {'host s':>7}")
    for seed in seeds:
        ref = None
        for label, extra in VARIANTS.items():
            sets = [*base, f"seed={seed}", *(e.format(all=blocks) for e in extra)]
            s = fedquad.run(load_config(args.config, sets)).summary
            ref = s["final_accuracy"] if ref is None else ref
            final[label].append(s["final_accuracy"])
            delta = 100 * (s["final_accuracy"] - ref)
            print(
                f"{seed:4} {label:22} {s['final_accuracy']:9.4f} {s['best_accuracy']:9.4f} "
                f"{delta:8.1f} {s['host_seconds']:7.0f}",
                flush=True,
            )
    print(f"\nmean over seeds {seeds} (Δ in accuracy points against unquantized):")
    ref_mean = statistics.mean(final["unquantized"])
    for label, accs in final.items():
        spread = f"{min(accs):.4f}–{max(accs):.4f}"
        delta = 100 * (statistics.mean(accs) - ref_mean)
        print(f"  {label:22} mean {statistics.mean(accs):.4f}  range {spread}  Δ {delta:+.1f}")


if __name__ == "__main__":
    main()
