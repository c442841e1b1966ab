"""Measure the reference time terms (docs/methods.md §6) of every built-in workload and write them
into the package (``src/fedquad/timing/``), where ``profile.timing = "reference"`` finds them.

    .venv/bin/python benchmarks/reference_timings.py [--only NAME,...] [--sst2-dir DIR] [--force]

Run it alone on an idle machine: nothing beside it, not even the tests. Each workload is measured
by ``fedquad profile --export``'s method (one thread, the points ``(1,0), (⌈D/2⌉,0), (D,0), (D,D)``
visited round-robin, the fastest step of each, batches padded to ``max_length``) and is refused
when the load average is above 0.3 unless ``--force``. The workloads: every preset
of the package, the reproduction workload of docs/methods.md §8 (MiniLM on SST-2, sequence 64,
batch 16, fp32; its data from ``--sst2-dir`` or ``$FEDQUAD_SST2_DIR``, skipped without) and the
fine-food comparison of ``benchmarks/reproduce.py``. Only the workload's shape enters a timing
key, so the data are cut short here to load fast.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fedquad.config import PRESETS_DIR, load_config
from fedquad.cost.timing import REFERENCE_THREADS, TIMING_DIR_ENV
from fedquad.errors import FedquadError
from fedquad.quiet import quiet_libraries

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_TIMING = ROOT / "src" / "fedquad" / "timing"

SMALL_DATA = ["data.max_train_samples=2000", "data.max_test_samples=16", "data.partition='iid'"]
"""Not part of any timing key: enough samples that every device (80 in the reproduction
workloads) has a full batch."""

FP32 = ["train.precision='fp32'"]

REPRODUCTION = [
    "model.name='minilm'",
    "model.max_length=64",
    "train.batch_size=16",
    "train.local_steps=16",
    "train.lr=1e-3",
    "train.optimizer='adamw'",
    "lora.rank=8",
    *FP32,
]

WORKLOADS: dict[str, tuple[Path | None, list[str]]] = {
    **{p.stem: (p, []) for p in sorted(PRESETS_DIR.glob("*.toml"))},
    # bf16 pays off only on hardware with bf16 instructions: measured where there are some
    "quickstart-bf16": (PRESETS_DIR / "quickstart.toml", ["train.precision='bf16'"]),
    "sst2-reproduction": (None, [*REPRODUCTION, "data.name='sst2'"]),
    "fine-foods-reproduction": (
        None,
        [*REPRODUCTION, "data.name='fine-foods'", "model.max_length=128", "train.local_steps=8"],
    ),
}


def _sst2_present() -> bool:
    from fedquad.data.sources import _find_sst2_dir

    try:
        _find_sst2_dir()
    except FedquadError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated names of: {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--out", help=f"folder to write into (default: ${TIMING_DIR_ENV}, else {PACKAGE_TIMING})"
    )
    parser.add_argument("--sst2-dir", help="GLUE SST-2 directory (default: $FEDQUAD_SST2_DIR)")
    parser.add_argument("--repeats", type=int, default=8, help="round-robin visits of each point")
    parser.add_argument("--force", action="store_true", help="measure even on a busy machine")
    args = parser.parse_args()
    if args.sst2_dir:
        os.environ["FEDQUAD_SST2_DIR"] = args.sst2_dir
    out = Path(args.out or os.environ.get(TIMING_DIR_ENV) or PACKAGE_TIMING)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"error: unknown workload {unknown[0]!r}: use {', '.join(WORKLOADS)}")

    from fedquad.workbench import export_timing, seed_everything

    quiet_libraries()
    measured = 0
    for name in names:
        preset, overrides = WORKLOADS[name]
        if "data.name='sst2'" in overrides and not _sst2_present():
            print(f"{name}: no SST-2 data (set $FEDQUAD_SST2_DIR or --sst2-dir): skipped")
            continue
        config = load_config(str(preset) if preset else None, [*overrides, *SMALL_DATA])
        seed_everything(config.seed)
        start = time.perf_counter()
        try:
            # after a first export, this process's own thread is still in the load average
            own = float(REFERENCE_THREADS) if measured else 0.0
            source = export_timing(
                config, out / f"{name}.json", args.force, args.repeats, own_load=own
            )
            measured += 1
        except FedquadError as exc:
            raise SystemExit(f"error: {name}: {exc}") from None
        t, p = source.timing, source.provenance
        print(
            f"{name}: f={t.f:.6f} g={t.g:.6f} o={t.o:.6f} c={t.c:.6f} s, load "
            f"{p['load_before']:.2f} -> {p['load_after']:.2f}, "
            f"{time.perf_counter() - start:.0f} s -> {out / (name + '.json')}"
        )


if __name__ == "__main__":
    main()
