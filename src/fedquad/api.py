"""The public Python API: ``fedquad.run(config) -> RunResult``. The CLI is a thin layer over it."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedquad.config import ExperimentConfig, load_config
from fedquad.cost.fleet import fleet_to_toml, load_fleet
from fedquad.cost.model import CostProfile
from fedquad.cost.timing import TimingSource, read_timing, with_timing
from fedquad.engines import execute
from fedquad.errors import FedquadError, RunInterrupted
from fedquad.extras import check_extras
from fedquad.models.adapter import save_adapter
from fedquad.models.hub_cache import seed_hub_cache
from fedquad.models.lora import get_state, load_state
from fedquad.models.registry import builtin_name, load_tokenizer
from fedquad.quiet import quiet_libraries
from fedquad.report.compare import time_to_target
from fedquad.report.plots import write_run_plots
from fedquad.report.progress import RoundProgress
from fedquad.report.provenance import provenance
from fedquad.report.results import (
    RunWriter,
    check_run_dir,
    default_run_name,
    new_run_dir,
    read_metrics,
)
from fedquad.report.run_info import label_shares, read_run_info
from fedquad.report.tensorboard import TensorBoardLog
from fedquad.server.checkpoint import (
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedquad.server.configure import settings_for
from fedquad.server.records import best_accuracy, median_step_seconds
from fedquad.server.rounds import run_rounds
from fedquad.train.generate import causal_lm_summary
from fedquad.train.placement import model_device
from fedquad.workbench import (
    Workbench,
    build_workbench,
    held_out_labels,
    seed_everything,
    workload_profile,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
TIMING_FILE = "timing.json"
"""The time terms a run used (a timing file), which ``--resume`` uses again."""

RoundCallback = Callable[[dict[str, Any]], None]
"""Called with each round's metrics record (a copy of the ``metrics.jsonl`` line) once it is
written: for logging to a tool of the user's own."""

TARGET_FRACTION = 0.95
"""Without a set target, "time to target" is the time to 95% of the final accuracy."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


def run(
    config: ExperimentConfig, *, progress: bool = False, on_round: RoundCallback | None = None
) -> RunResult:
    """Run one federated fine-tuning experiment and write its results directory; ``on_round``
    gets each round's metrics record as soon as it is written."""
    config.validate()
    check_extras(config)
    quiet_libraries()
    seed_everything(config.seed)
    bench = build_workbench(config)
    measured = workload_profile(bench)
    profile, timing = measured.profile, measured.timing
    name = config.run_name or default_run_name(
        config.method, config.data.name, config.model.name, config.seed
    )
    writer = RunWriter(new_run_dir(config.output_dir, name))
    writer.write_config(config.to_toml())
    writer.write_json("cost_profile.json", profile.to_dict())
    writer.write_json(TIMING_FILE, timing.to_dict())
    writer.write_text("fleet.toml", fleet_to_toml(bench.fleet))
    with _resumable(writer.dir):
        return _execute(bench, profile, writer, progress, on_round, timing=timing)


def resume(
    run_dir: str | Path, *, progress: bool = False, on_round: RoundCallback | None = None
) -> RunResult:
    """Continue a run from its last checkpoint, with the config, fleet and cost profile it
    recorded: the result is the one the run would have given uninterrupted. A run killed before
    its first checkpoint starts its rounds again (its initial state is a function of the seed).
    ``on_round`` gets the records of the rounds run now (not those already in the file)."""
    run_dir = check_run_dir(run_dir)
    checkpoint: Checkpoint | None = None
    started = all((run_dir / name).is_file() for name in ("cost_profile.json", "fleet.toml"))
    if started and not has_checkpoint(run_dir / CHECKPOINT_DIR):
        pass  # killed before its first checkpoint: every round is run again, from the start
    else:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_DIR)
    config = load_config(run_dir / "config.toml")
    check_extras(config)
    quiet_libraries()
    seed_everything(config.seed)
    bench = build_workbench(config)
    bench.fleet = load_fleet(run_dir / "fleet.toml")
    profile = CostProfile.from_dict(json.loads((run_dir / "cost_profile.json").read_text()))
    timing = None
    if (run_dir / TIMING_FILE).is_file():  # the time terms the run started with
        timing = read_timing(run_dir / TIMING_FILE, kind="recorded")
        profile = with_timing(profile, timing.timing)
    writer = RunWriter(run_dir)
    # rounds after the checkpoint were lost with the process: run them again
    done = 0 if checkpoint is None else checkpoint.round
    writer.keep_metrics(lambda record: record["round"] <= done)
    with _resumable(writer.dir):
        return _execute(bench, profile, writer, progress, on_round, checkpoint, timing)


@contextmanager
def _resumable(run_dir: Path) -> Iterator[None]:
    """A Ctrl-C inside becomes :class:`RunInterrupted`, which names the run to resume."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(str(run_dir)) from None


def _execute(
    bench: Workbench,
    profile: CostProfile,
    writer: RunWriter,
    progress: bool,
    user_callback: RoundCallback | None = None,
    checkpoint: Checkpoint | None = None,
    timing: TimingSource | None = None,
) -> RunResult:
    config = bench.config
    fed = config.federation
    with RoundProgress(fed.rounds, enabled=progress) as bar:
        if checkpoint is not None:
            bar.skip(checkpoint.round)

        board = TensorBoardLog(writer.dir / "tensorboard") if config.tensorboard else None

        def on_round(record: dict[str, Any]) -> None:
            writer.append_metrics(record)
            bar.update(record)
            if board is not None:
                board.log(record)
            if user_callback is not None:
                user_callback(copy.deepcopy(record))  # the user's changes stay theirs

        settings = settings_for(config)
        # one callback for both: it fires every gcd(checkpoint_every, save_adapter_every) rounds
        every = math.gcd(fed.checkpoint_every, fed.save_adapter_every)
        settings = dataclasses.replace(
            settings, federation=dataclasses.replace(fed, checkpoint_every=every)
        )

        def on_checkpoint(c: Checkpoint) -> None:
            if fed.checkpoint_every and (
                c.round % fed.checkpoint_every == 0 or c.round == fed.rounds
            ):
                save_checkpoint(writer.dir / CHECKPOINT_DIR, c)
            if fed.save_adapter_every and c.round % fed.save_adapter_every == 0:
                kept = get_state(bench.model)
                load_state(bench.model, c.state)
                _save_adapter(bench, writer.adapter_dir / f"round-{c.round:04d}", c.round)
                load_state(bench.model, kept)

        outcome = execute(
            bench,
            lambda executor: run_rounds(
                settings,
                bench.fleet,
                profile,
                bench.structure.depth,
                executor,
                get_state(bench.model),
                on_round,
                resume=checkpoint,
                on_checkpoint=on_checkpoint,
            ),
        )
    if board is not None:
        board.close()
    metrics = read_metrics(writer.dir)
    load_state(bench.model, outcome.state)
    _save_adapter(bench, writer.adapter_dir, fed.rounds)
    summary = summarize(config, metrics, bench.label_names, bench.parts.num_blocks)
    summary["adapter_dir"] = str(writer.adapter_dir)
    summary["provenance"] = provenance(
        threads=torch.get_num_threads(),
        device=model_device(bench.model).type,  # what "auto" resolved to
        precision=getattr(config.train, "precision", "fp32"),
        timing=None if timing is None else timing.describe(),
    )
    summary.update(causal_lm_summary(metrics, bench.test_data))
    labels = held_out_labels(bench.test_data, bench.label_names)
    summary["test_label_shares"] = None if labels is None else label_shares(labels)
    writer.write_summary(summary)
    write_run_plots(writer.dir, metrics, config.method, read_run_info(writer.dir))
    return RunResult(run_dir=writer.dir, metrics=metrics, summary=summary)


def _save_adapter(bench: Workbench, directory: Path, round_: int) -> None:
    """The global adapter in PEFT format; snapshots of earlier rounds inside ``adapter/`` stay."""
    builtin = builtin_name(bench.config.model.name)
    if builtin is not None:
        # the hub id the adapter names resolves to the local copy in this environment
        try:
            seed_hub_cache(names=[builtin])
        except FedquadError as exc:
            logger.warning("%s: load the adapter with the base model passed in", exc)
    snapshots = sorted(directory.glob("round-*")) if directory.is_dir() else []
    if snapshots:  # the final adapter replaces adapter/ but keeps its round-XXXX/ children
        aside = directory.with_name(f".{directory.name}-snapshots")
        aside.mkdir(exist_ok=True)
        for snapshot in snapshots:
            snapshot.replace(aside / snapshot.name)
    save_adapter(
        bench.model,
        directory,
        model_name=bench.config.model.name,
        task=bench.config.model.task,
        label_names=bench.label_names,
        tokenizer=load_tokenizer(bench.config.model.name),
        round_=round_,
    )
    if snapshots:
        for snapshot in snapshots:
            (aside / snapshot.name).replace(directory / snapshot.name)
        aside.rmdir()


def summarize(
    config: ExperimentConfig, metrics: list[dict[str, Any]], labels: list[str], num_blocks: int
) -> dict[str, Any]:
    # every evaluation has a loss; a causal LM has an accuracy only on recast classification data
    last_eval: dict[str, Any] = next((m for m in reversed(metrics) if "test_loss" in m), {})
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
    reached = time_to_target(metrics, target)
    return {"target_accuracy": target, "time_to_target": reached and dataclasses.asdict(reached)}
