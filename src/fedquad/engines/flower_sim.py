"""The flower-sim executor: the same rounds on Flower's Simulation Engine (Ray backend).

``run_rounds`` stays the round logic: it runs inside a ServerApp whose executor,
:class:`~fedquad.engines.flower_grid.GridExecutor`, sends each device's instruction as a Flower
message to the virtual SuperNode of that device and turns the replies back into
:class:`TrainReply`. Each SuperNode's ClientApp (:mod:`fedquad.engines.flower_app`) builds the
same workload from the experiment's config and trains with the client code the local executor
uses. The global model is evaluated on the server, as with the local executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import psutil
from flwr.app import ConfigRecordValues, Context
from flwr.serverapp import Grid, ServerApp

from fedquad.engines.flower_app import FlowerNotices, make_client_app
from fedquad.engines.flower_grid import GridExecutor
from fedquad.errors import FedquadError
from fedquad.extras import require
from fedquad.models.lora import State
from fedquad.server.messages import Executor
from fedquad.workbench import Workbench

T = TypeVar("T")

MAX_CPUS = 2
"""Ray's CPUs on a local machine: one ClientApp actor per CPU."""
REAP_TIMEOUT = 10.0
"""Seconds Ray's processes get to exit after the run before they are killed."""


def backend_config() -> dict[str, dict[str, ConfigRecordValues]]:
    """One CPU per ClientApp; Ray's own CPUs capped on a local machine, not on a cluster."""
    init_args: dict[str, ConfigRecordValues] = {}
    if not os.environ.get("RAY_ADDRESS"):
        init_args["num_cpus"] = min(MAX_CPUS, os.cpu_count() or 1)
    return {"init_args": init_args, "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


def _reap(processes: list[psutil.Process]) -> None:
    """Wait for the processes to exit; kill those still running after ``REAP_TIMEOUT``."""
    _, alive = psutil.wait_procs(processes, timeout=REAP_TIMEOUT)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=REAP_TIMEOUT)


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    drop = FlowerNotices()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")
            yield
    finally:
        logger.removeFilter(drop)


def run_on_simulation(
    bench: Workbench,
    evaluator: Callable[[State], dict[str, float]],
    body: Callable[[Executor], T],
) -> T:
    """Run ``body`` (the round loop) in a ServerApp on Flower's Simulation Engine.

    One virtual SuperNode per device of the fleet. When the run ends Ray is shut down and every
    process it started here has exited.
    """
    require("ray", "engine = 'flower-sim'")
    from flwr.simulation import run_simulation

    # `flwr run` would otherwise reinstall the app's dependencies (a CUDA torch)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    num_devices = bench.fleet.num_devices
    results: list[T] = []
    started: list[psutil.Process] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, _context: Context) -> None:
        try:
            results.append(body(GridExecutor(grid, num_devices, evaluator)))
        finally:
            # Ray's processes, while they are still our descendants: once Ray's head stops,
            # its actors are orphaned and may outlive the run by seconds
            started.extend(psutil.Process().children(recursive=True))

    try:
        with _quiet_flower():
            run_simulation(
                server_app=server,
                client_app=make_client_app(bench.config.to_toml()),
                num_supernodes=num_devices,
                backend_config=backend_config(),
            )
    finally:
        _reap(started)
    if not results:
        raise FedquadError("the Flower simulation stopped before its rounds finished")
    return results[0]
