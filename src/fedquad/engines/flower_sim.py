"""The flower-sim executor: the same rounds on Flower's Simulation Engine (Ray backend).

``run_rounds`` stays the round logic: it runs inside a ServerApp whose executor,
:class:`FlowerSimExecutor`, sends each device's instruction as a Flower message to the virtual
SuperNode of that device and turns the replies back into :class:`TrainReply`. Each SuperNode's
ClientApp (:mod:`fedquad.engines.flower_app`) builds the same workload from the experiment's
config and trains with the client code the local executor uses. The global model is evaluated
on the server, as with the local executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import psutil
from flwr.app import ConfigRecordValues, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedquad.engines.flower_app import (
    FlowerNotices,
    config_int,
    instruction_content,
    make_client_app,
    reply_from,
)
from fedquad.errors import FedquadError
from fedquad.models.lora import State
from fedquad.server.messages import Executor, TrainInstruction, TrainReply
from fedquad.workbench import Workbench

T = TypeVar("T")

MAX_CPUS = 2
"""Ray's CPUs on a local machine: one ClientApp actor per CPU."""
NODES_TIMEOUT = 60.0
"""Seconds to wait for the simulation's SuperNodes to register."""
REAP_TIMEOUT = 10.0
"""Seconds Ray's processes get to exit after the run before they are killed."""


class FlowerSimExecutor:
    """Executor over a Flower Grid: one message per device, addressed by device id."""

    def __init__(
        self, grid: Grid, num_devices: int, evaluator: Callable[[State], dict[str, float]]
    ) -> None:
        self.grid = grid
        self.evaluator = evaluator
        self.nodes: dict[int, int] = {}
        """Device id → node id."""
        self.nodes, self.samples = self._discover(num_devices)

    def _discover(self, num_devices: int) -> tuple[dict[int, int], list[int]]:
        """Ask every node which device it is and how many samples it holds."""
        node_ids = _wait_for_nodes(self.grid, num_devices)
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids
        ]
        nodes: dict[int, int] = {}
        samples = [0] * num_devices
        for reply in self._exchange(queries):
            device = reply.content.config_records["device"]
            d = config_int(device, "device_id")
            nodes[d] = reply.metadata.src_node_id
            samples[d] = config_int(device, "num_samples")
        if sorted(nodes) != list(range(num_devices)):
            raise FedquadError(
                f"the simulation's nodes are devices {sorted(nodes)}: "
                f"expected one node per device 0 to {num_devices - 1}"
            )
        return nodes, samples

    def device_samples(self) -> list[int]:
        return list(self.samples)

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        messages = [
            Message(
                instruction_content(ins),
                dst_node_id=self.nodes[ins.device_id],
                message_type=MessageType.TRAIN,
                group_id=str(ins.round),
            )
            for ins in instructions
        ]
        replies = [reply_from(message.content) for message in self._exchange(messages)]
        by_device = {reply.device_id: reply for reply in replies}
        # the instructions' order: aggregation sums in it, whichever node answered first
        return [by_device[ins.device_id] for ins in instructions]

    def evaluate(self, state: State) -> dict[str, float]:
        return self.evaluator(state)

    def _exchange(self, messages: list[Message]) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages))
        for reply in replies:
            if reply.has_error():
                raise FedquadError(f"{self._name(reply)}: {_last_line(reply.error.reason)}")
        if len(replies) != len(messages):
            raise FedquadError(f"{len(replies)} of {len(messages)} nodes replied")
        return replies

    def _name(self, reply: Message) -> str:
        node = reply.metadata.src_node_id
        devices = [d for d, n in self.nodes.items() if n == node]
        return f"device {devices[0]}" if devices else f"node {node}"


def _last_line(reason: str | None) -> str:
    # a user error's reason is its one line; a crash's ends with the exception's message
    lines = (reason or "no reason given").strip().splitlines()
    return lines[-1].strip() if lines else "no reason given"


def _wait_for_nodes(grid: Grid, count: int) -> list[int]:
    # the ServerApp starts while the simulation is still registering its SuperNodes
    deadline = time.monotonic() + NODES_TIMEOUT
    while len(node_ids := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FedquadError(
                f"{len(node_ids)} of {count} simulated nodes registered in {NODES_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)
    return node_ids


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
            results.append(body(FlowerSimExecutor(grid, num_devices, evaluator)))
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
