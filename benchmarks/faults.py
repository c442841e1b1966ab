"""Robustness to faults: the same run with and without injected failures (20% of device-rounds
crash or straggle past the deadline, 5% send corrupt updates), side by side: final accuracy,
and every failure accounted for in the metrics. The faulty run goes twice: as is, and with
over-selection (``federation.over_selection = 0.5``: more devices sampled in proportion to the
observed failure rate, up to 50% more).

    .venv/bin/python benchmarks/faults.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter

import fedquad
from fedquad.config import load_config

BASE = [
    "method='fedquad'",
    "data.name='fine-foods'",
    "data.partition='iid'",
    "model.max_length=128",
    "train.batch_size=8",
    "train.local_steps=5",
    "federation.rounds=30",
    "federation.num_devices=20",
    "federation.devices_per_round=5",
    "federation.eval_every=5",
]
FAULTS = [
    "faults.crash_probability=0.1",
    "faults.delay_probability=0.1",
    "faults.delay_factor=3.0",
    "faults.corrupt_probability=0.05",
]


def _kind(reason: str) -> str:
    kinds = [("crashed", "crash"), ("deadline", "late"), ("NaN", "NaN"), ("norm", "norm")]
    for word, kind in kinds:
        if word in reason:
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="fedquad-faults-")
    results = {}
    runs = [
        ("fault-free", []),
        ("with faults", FAULTS),
        ("over-select", [*FAULTS, "federation.over_selection=0.5"]),
    ]
    for label, extra in runs:
        config = load_config(None, [*BASE, *extra, *args.overrides, f"output_dir={out!r}"])
        results[label] = fedquad.run(config)
        print(f"done: {label}", flush=True)
    print(
        f"{'run':12} {'final acc':>9} {'best acc':>8} {'sampled':>8} {'trained':>8} "
        f"{'dropped':>8} {'rejected':>9} reasons"
    )
    for label, result in results.items():
        m = result.metrics
        sampled = sum(len(r["sampled"]) for r in m)
        trained = sum(len(r["devices"]) for r in m)
        dropped = [v for r in m for v in r.get("dropped", {}).values()]
        rejected = [v for r in m for v in r.get("rejected", {}).values()]
        sat_out = sum(len(r["sat_out"]) for r in m)
        assert trained + len(dropped) + len(rejected) + sat_out == sampled  # all accounted for
        kinds = Counter(_kind(reason) for reason in dropped + rejected)
        s = result.summary
        print(
            f"{label:12} {s['final_accuracy']:9.4f} {s['best_accuracy']:8.4f} {sampled:8} "
            f"{trained:8} {len(dropped):8} {len(rejected):9} {dict(kinds)}"
        )
    reference = results["fault-free"].summary["final_accuracy"]
    for label in ("with faults", "over-select"):
        delta = results[label].summary["final_accuracy"] - reference
        print(f"accuracy difference, {label}: {100 * delta:+.1f} points")


if __name__ == "__main__":
    main()
