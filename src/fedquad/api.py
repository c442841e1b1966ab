"""The public Python API: ``fedquad.run(config) -> RunResult``. The CLI is a thin layer over it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedquad.config import ExperimentConfig
from fedquad.cost.fleet import fleet_to_toml
from fedquad.engines.local import LocalExecutor
from fedquad.models.lora import get_state, load_state
from fedquad.quiet import quiet_libraries
from fedquad.report.progress import RoundProgress
from fedquad.report.results import RunWriter, default_run_name, new_run_dir
from fedquad.server.rounds import (
    best_accuracy,
    median_step_seconds,
    run_rounds,
    settings_for,
    time_to_target,
)
from fedquad.workbench import build_workbench, workload_profile

TARGET_FRACTION = 0.95
"""Without a set target, "time to target" is the time to 95% of the final accuracy."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(config: ExperimentConfig, *, progress: bool = False) -> RunResult:
    """Run one federated fine-tuning experiment and write its results directory."""
    config.validate()
    quiet_libraries()
    seed_everything(config.seed)
    bench = build_workbench(config)
    profiled = workload_profile(bench)
    executor = LocalExecutor(
        bench.model,
        bench.parts,
        bench.structure,
        bench.device_data,
        bench.test_data,
        config.train,
        config.quant,
    )
    name = config.run_name or default_run_name(
        config.method, config.data.name, config.model.name, config.seed
    )
    writer = RunWriter(new_run_dir(config.output_dir, name))
    writer.write_config(config.to_toml())
    writer.write_json("cost_profile.json", profiled.profile.to_dict())
    writer.write_text("fleet.toml", fleet_to_toml(bench.fleet))
    fed = config.federation
    settings = settings_for(config)
    with RoundProgress(fed.rounds, enabled=progress) as bar:

        def on_round(record: dict[str, Any]) -> None:
            writer.append_metrics(record)
            bar.update(record)

        outcome = run_rounds(
            settings,
            bench.fleet,
            profiled.profile,
            bench.structure.depth,
            executor,
            get_state(bench.model),
            on_round,
        )
    load_state(bench.model, outcome.state)
    bench.model.save_pretrained(str(writer.adapter_dir))
    (writer.adapter_dir / "fedquad.json").write_text(
        json.dumps({"model": config.model.name, "label_names": bench.label_names}, indent=2)
    )
    summary = summarize(config, outcome.metrics, bench.label_names, bench.parts.num_blocks)
    summary["adapter_dir"] = str(writer.adapter_dir)
    writer.write_summary(summary)
    return RunResult(run_dir=writer.dir, metrics=outcome.metrics, summary=summary)


def summarize(
    config: ExperimentConfig, metrics: list[dict[str, Any]], labels: list[str], num_blocks: int
) -> dict[str, Any]:
    last_eval: dict[str, Any] = next((m for m in reversed(metrics) if "test_accuracy" in m), {})
    return {
        "method": config.method,
        "model": config.model.name,
        "dataset": config.data.name,
        "label_names": labels,
        "num_blocks": num_blocks,
        "rounds": len(metrics),
        "final_accuracy": last_eval.get("test_accuracy"),
        "final_test_loss": last_eval.get("test_loss"),
        "best_accuracy": best_accuracy(metrics),
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "host_seconds": metrics[-1]["host_seconds_total"] if metrics else 0.0,
        "virtual_seconds": metrics[-1]["virtual_seconds_total"] if metrics else 0.0,
        "median_step_seconds": median_step_seconds(metrics),
        "device_rounds": sum(len(m["devices"]) for m in metrics),
        "device_rounds_sat_out": sum(len(m["sat_out"]) for m in metrics),
        **_target_summary(config, metrics, last_eval.get("test_accuracy")),
    }


def _target_summary(
    config: ExperimentConfig, metrics: list[dict[str, Any]], final: float | None
) -> dict[str, Any]:
    target = config.federation.target_accuracy
    if target is None:
        if final is None:
            return {"target_accuracy": None, "time_to_target": None}
        target = TARGET_FRACTION * final
    return {"target_accuracy": target, "time_to_target": time_to_target(metrics, target)}
