"""Executors that carry the round's messages to the clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fedquad.engines.local import LocalExecutor
from fedquad.server.messages import Executor

if TYPE_CHECKING:
    from fedquad.workbench import Workbench

T = TypeVar("T")


def local_executor(bench: Workbench) -> LocalExecutor:
    """The in-process executor over the bench's model and device data."""
    return LocalExecutor(
        bench.model,
        bench.parts,
        bench.structure,
        bench.device_data,
        bench.test_data,
        bench.config.train,
        bench.config.quant,
    )


def execute(bench: Workbench, body: Callable[[Executor], T]) -> T:
    """Run ``body`` (the round loop) with the executor of the bench's ``engine``."""
    config = bench.config
    local = local_executor(bench)
    if config.engine.name == "flower-sim":
        # Flower and Ray load only when asked for; the global model is evaluated here
        from fedquad.engines.flower_sim import run_on_simulation

        return run_on_simulation(bench, local.evaluate, body)
    if config.engine.name == "flower":
        from fedquad.engines.flower_deploy import run_on_deployment

        return run_on_deployment(bench, local.evaluate, body)
    from fedquad.engines.workers import WorkerPoolExecutor, resolve_workers

    workers = resolve_workers(config.engine, bench.fleet.per_round)
    if workers == 0:
        return body(local)
    with WorkerPoolExecutor(local, config, bench.model.config.num_labels, workers) as pool:
        return body(pool)
