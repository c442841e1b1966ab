"""The default experiment end to end on every engine: the local executor, Flower's Simulation
Engine (``flower-sim``) and a Flower deployment on loopback (``flower``: a SuperLink and one
SuperNode process per device, TLS and node authentication). Prints side by side each engine's
accuracy, virtual and host time, its largest difference from the local curves, whether the
bytes sent to and received from each device equal the cost model's download and upload for its
config, and what the deployed devices measured of themselves.

    .venv/bin/python benchmarks/flower_engines.py [--engines local,flower-sim,flower]
        [--config FILE] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import fedquad
from fedquad.config import PRESETS_DIR, load_config
from fedquad.cost.model import CostProfile, download_bytes, upload_bytes
from fedquad.device_config import DeviceConfig
from fedquad.loopback import loopback
from fedquad.report.results import read_metrics

QUICKSTART = PRESETS_DIR / "quickstart.toml"
CURVE = ("test_accuracy", "test_loss", "train_loss")


def _config_of(d: dict[str, Any]) -> DeviceConfig:
    blocks = tuple(d["blocks"]) if "blocks" in d else None
    return DeviceConfig(d["depth"], d["quantized"], d["bits"], rank=d.get("rank"), blocks=blocks)


def _bytes_match(run_dir: Path) -> tuple[int, int]:
    """(device-rounds whose sent and received bytes equal the cost model's, device-rounds with
    counted bytes): only the Flower engines count what crossed the wire."""
    profile = CostProfile.from_dict(json.loads((run_dir / "cost_profile.json").read_text()))
    good = counted = 0
    for m in read_metrics(run_dir):
        for d in m["devices"]:
            if "sent_bytes" not in d:
                continue
            counted += 1
            config = _config_of(d)
            good += d["sent_bytes"] == d["bytes_down"] == download_bytes(profile, config) and d[
                "received_bytes"
            ] == d["bytes_up"] == upload_bytes(profile, config)
    return good, counted


def _largest_difference(metrics: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
    return max(
        (
            abs(m[k] - n[k])
            for m, n in zip(metrics, reference, strict=True)
            for k in CURVE
            if k in m
        ),
        default=0.0,
    )


def _node_figures(metrics: list[dict[str, Any]]) -> str:
    nodes = [d["node"] for m in metrics for d in m["devices"] if "node" in d]
    if not nodes:
        return "—"
    rss = [n["peak_rss_bytes"] / 2**20 for n in nodes]
    train = [n["train_seconds"] for n in nodes]
    return (
        f"{len({n['pid'] for n in nodes})} ClientApp processes; peak RSS median "
        f"{statistics.median(rss):.0f} MiB (max {max(rss):.0f}); train s median "
        f"{statistics.median(train):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="local,flower-sim,flower")
    parser.add_argument("--config", default=str(QUICKSTART), help="default: the make-run preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedquad-engines-"))
    base = [*args.overrides, f"output_dir={work / 'runs'}"]
    num_devices = load_config(args.config, base).federation.num_devices or 0
    results = {}
    for engine in args.engines.split(","):
        sets = [*base, f"run_name={engine}", f"engine={engine}"]
        print(f"{engine}: running", flush=True)
        if engine == "flower":
            with loopback(work / "loopback", num_devices) as deployment:
                run = fedquad.run(load_config(args.config, [*sets, *deployment.run_settings()]))
        else:
            run = fedquad.run(load_config(args.config, sets))
        results[engine] = run
    reference = next(iter(results.values()))
    print(
        f"\n{'engine':11} {'final':>6} {'best':>6} {'virtual s':>9} {'host s':>7} "
        f"{'max |Δ| vs ' + next(iter(results)):>16} {'bytes = model':>13}  devices measured"
    )
    for engine, run in results.items():
        s, metrics = run.summary, read_metrics(run.run_dir)
        good, counted = _bytes_match(run.run_dir)
        match = f"{good}/{counted}" if counted else "—"
        diff = _largest_difference(metrics, read_metrics(reference.run_dir))
        print(
            f"{engine:11} {s['final_accuracy']:6.4f} {s['best_accuracy']:6.4f} "
            f"{s['virtual_seconds']:9.1f} {s['host_seconds']:7.0f} {diff:16.2e} {match:>13}  "
            f"{_node_figures(metrics)}"
        )
    print(f"\nruns in {work / 'runs'}")


if __name__ == "__main__":
    main()
