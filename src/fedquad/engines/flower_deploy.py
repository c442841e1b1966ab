"""The flower executor: the same rounds on Flower's Deployment Engine.

A SuperLink and one SuperNode per device run as separate processes, on one host or many
(:mod:`fedquad.deploy` starts them). A run goes:

1. ``fedquad run`` (``engine = "flower"``) writes a Flower app whose ``pyproject.toml`` names
   this module's ClientApp and carries the experiment's config, and submits it with
   ``flwr run`` to the SuperLink at ``flower.superlink``.
2. The SuperLink runs with ``--isolation process``, so it starts no ServerApp process of its
   own: the ``fedquad run`` process takes the run's ServerApp task over the SuperLink's Runtime
   API and is its ServerApp. The round loop, the server's evaluation and the results directory
   stay where they are with the other engines, and only
   :class:`~fedquad.engines.flower_grid.GridExecutor` moves the messages.
3. Each SuperNode (``--node-config partition-id=N``) starts a ClientApp process per message. It
   builds the experiment's workload, trains its device with the client code of the local
   executor, and adds what the node itself measured (``node``: wall-clock, CPU time, peak
   resident memory of the process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import tomli_w
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedquad.config import ExperimentConfig, FlowerConfig, from_dict
from fedquad.deploy import flower_env, flower_executable, warn_insecure, write_connection
from fedquad.engines.flower_app import (
    FlowerNotices,
    answer,
    query_content,
    reply_content,
    train_reply,
    workload,
)
from fedquad.engines.flower_grid import GridExecutor
from fedquad.errors import FedquadError
from fedquad.models.lora import State
from fedquad.server.messages import Executor, TrainReply
from fedquad.workbench import Workbench

if TYPE_CHECKING:
    from flwr.superlink.grid import HttpGrid

T = TypeVar("T")

CONFIG_KEY = "fedquad-config"
"""The run config key carrying the experiment's config (TOML text) to the ClientApps."""
SUBMIT_TIMEOUT = 120.0
"""Seconds ``flwr run`` may take to hand the app to the SuperLink."""
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
"""The Runtime API call a SuperLink with a ServerApp secret admits only when signed with it."""
ACQUIRE_TIMEOUT = 60.0
"""Seconds to wait for the SuperLink to hand out the submitted run's ServerApp task."""
NOT_SERVED = (
    "fedquad's ServerApp runs in the `fedquad run` process: start the SuperLink with "
    "--isolation process (fedquad deploy superlink does)"
)

# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class SuperLink:
    """Where the SuperLink is and how its certificate is verified."""

    address: str
    insecure: bool
    ca_path: Path | None
    """The CA certificate file; None: the system's trusted CAs (or no TLS)."""
    secret: bytes | None = None
    """The SuperLink's ServerApp secret, if it has one."""

    @property
    def ca(self) -> bytes | None:
        return None if self.ca_path is None else self.ca_path.read_bytes()


def superlink_of(settings: FlowerConfig) -> SuperLink:
    secret = None
    if settings.secret_file is not None:
        secret = _read(settings.secret_file, "flower.secret_file", "serverapp.secret")
    if settings.insecure:
        warn_insecure("fedquad run talks to the SuperLink")
        return SuperLink(settings.superlink, insecure=True, ca_path=None, secret=secret)
    ca = settings.root_certificates
    if ca is not None:
        _read(
            ca, "flower.root_certificates", "the CA certificate that signed the SuperLink's, ca.crt"
        )
    ca_path = None if ca is None else Path(ca)
    return SuperLink(settings.superlink, insecure=False, ca_path=ca_path, secret=secret)


def _read(path: str, key: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FedquadError(
            f"{key} = {path!r} cannot be read ({exc.strerror}): give {what} "
            "(made by fedquad deploy certs)"
        ) from None


def node_config(bench: Workbench) -> ExperimentConfig:
    """The experiment's config as the SuperNodes get it. A node needs the fleet only for its
    size (the data are partitioned over the fleet's devices), so the fleet is sent as a
    built-in one of that size: a server's fleet file need not exist on the devices."""
    data = bench.config.to_dict()
    data["fleet"]["name"] = "uniform"
    data["federation"]["num_devices"] = bench.fleet.num_devices
    data["federation"]["devices_per_round"] = bench.fleet.per_round
    return from_dict(data)


def write_app(directory: Path, config: ExperimentConfig) -> Path:
    """A Flower app directory for one experiment: this module's apps and the config."""
    project = {
        "project": {
            "name": "fedquad-experiment",
            "version": "0.1.0",
            "description": "A fedquad experiment on Flower's Deployment Engine",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedquad",
                    "components": {
                        "serverapp": f"{__name__}:server_app",
                        "clientapp": f"{__name__}:client_app",
                    },
                    "config": {CONFIG_KEY: config.to_toml()},
                }
            }
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(tomli_w.dumps(project))
    return directory


def submit_run(app: Path, link: SuperLink, flwr_home: Path) -> int:
    """Submit the app with ``flwr run``; the run's id."""
    write_connection(flwr_home, link.address, link.ca_path, link.insecure)
    command = [flower_executable("flwr"), "run", str(app), "fedquad", "--format", "json"]
    try:
        done = subprocess.run(
            command,
            env=flower_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FedquadError(
            f"flwr run did not reach the SuperLink at {link.address} in {SUBMIT_TIMEOUT:.0f} s"
        ) from None
    try:
        result = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        result = {}
    if done.returncode != 0 or not result.get("success"):
        reason = _last_line(str(result.get("error-message") or done.stderr or done.stdout))
        raise FedquadError(f"the SuperLink at {link.address} did not start the run: {reason}")
    return int(result["run-id"])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


@contextlib.contextmanager
def served_run(link: SuperLink, run_id: int) -> Iterator[Grid]:
    """Be the ServerApp of run ``run_id``: a Grid on it while the body runs, the task's status
    (completed or failed) reported to the SuperLink after."""
    # Flower's process-isolation protocol (flwr 1.41): what `flwr-serverapp` does around a
    # ServerApp, without loading one from the app
    from flwr.common.constant import SubStatus
    from flwr.common.serde import run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.task_identity import TaskIdentity

    grid = _acquire(link, run_id)
    client = grid._runtime_client
    inputs = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = inputs.task_id
    TaskIdentity.run_id = inputs.run.run_id
    TaskIdentity.node_id = inputs.context.node_id
    grid.set_run(run_from_proto(inputs.run))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    status, details = SubStatus.FAILED, "the fedquad server stopped before its rounds finished"
    try:
        yield grid
        status, details = SubStatus.COMPLETED, ""
    finally:
        if heartbeat.is_running:
            heartbeat.stop()
        with contextlib.suppress(Exception):  # the SuperLink may be gone already
            client.PushTaskOutput(
                PushTaskOutputRequest(context=inputs.context, sub_status=status, details=details)
            )
        grid.close()


def _acquire(link: SuperLink, run_id: int) -> HttpGrid:
    """A Grid with the token of run ``run_id``'s ServerApp task. A pending task of another run
    is one nobody will serve (a run interrupted before it was taken): it is ended as failed."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.superlink.grid import HttpGrid

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-serverapp")]
    if link.secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=link.secret, protected_methods={ACQUIRE_METHOD}
            )
        )
    client = RuntimeHttpClient.from_server_address(
        server_address=link.address,
        insecure=link.insecure,
        root_certificates=link.ca,
        interceptors=interceptors,
    )
    deadline = time.monotonic() + ACQUIRE_TIMEOUT
    try:
        while time.monotonic() < deadline:
            request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
            try:
                task = client.AcquireTask(request)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 401:
                    raise FedquadError(
                        "the SuperLink did not let this process serve the run: set "
                        "flower.secret_file to the serverapp.secret it was started with"
                    ) from None
                raise
            if task.HasField("task") and task.token:
                grid = HttpGrid(
                    runtime_api_address=link.address,
                    insecure=link.insecure,
                    root_certificates=link.ca,
                    token=task.token,
                )
                if task.task.run_id == run_id:
                    return grid
                _end_foreign(grid, task.task.run_id)
            else:
                time.sleep(0.2)
    finally:
        client.close()
    raise FedquadError(
        f"the SuperLink did not hand out run {run_id} in {ACQUIRE_TIMEOUT:.0f} s: start it with "
        "--isolation process (fedquad deploy superlink does)"
    )


def _end_foreign(grid: HttpGrid, run_id: int) -> None:
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest

    logging.getLogger(__name__).warning("ending run %d: it was left without a server", run_id)
    with contextlib.suppress(Exception):
        grid._runtime_client.PullTaskInput(PullTaskInputRequest())
        grid._runtime_client.PushTaskOutput(
            PushTaskOutputRequest(
                sub_status=SubStatus.FAILED,
                details="left pending: no fedquad server was waiting for it",
            )
        )
    grid.close()


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    # Flower logs every message it pulls; fedquad prints its own progress
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    drop = FlowerNotices()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        logger.setLevel(level)


def run_on_deployment(
    bench: Workbench,
    evaluator: Callable[[State], dict[str, float]],
    body: Callable[[Executor], T],
) -> T:
    """Run ``body`` (the round loop) as the ServerApp of a run on the SuperLink of the config's
    ``flower`` section, with one SuperNode per device of the fleet."""
    settings = bench.config.flower
    link = superlink_of(settings)
    with tempfile.TemporaryDirectory(prefix="fedquad-app-") as tmp:
        app = write_app(Path(tmp) / "app", node_config(bench))
        run_id = submit_run(app, link, Path(tmp) / "flwr-home")
    try:
        with _quiet_flower(), served_run(link, run_id) as grid:
            executor = GridExecutor(
                grid,
                bench.fleet.num_devices,
                evaluator,
                nodes_timeout=settings.nodes_timeout,
                reply_timeout=settings.reply_timeout,
            )
            return body(executor)
    except httpx.HTTPError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedquadError(f"the SuperLink at {link.address}: {reason}") from None


server_app = ServerApp()


@server_app.main()
def _not_served(_grid: Grid, _context: Context) -> None:
    raise FedquadError(NOT_SERVED)


# --------------------------------------------------------------------------- client side


def _config_toml(context: Context) -> str:
    text = context.run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text:
        raise FedquadError(f"the run has no {CONFIG_KEY}: start it with fedquad run")
    return text


def peak_rss_bytes() -> int:
    """The largest resident memory this process has had."""
    try:
        import resource
    except ImportError:  # not on Unix: the current size
        import psutil

        return int(psutil.Process().memory_info().rss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, else KiB


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def measured_train(content: RecordDict, context: Context) -> TrainReply:
    """Train on a ``train`` message and add what this node measured: the seconds to build the
    workload in this process and to train, the process's CPU time and peak resident memory."""
    config_toml = _config_toml(context)
    start = time.perf_counter()
    workload(config_toml)
    built = time.perf_counter()
    reply = train_reply(config_toml, content, context)
    reply.measurements["node"] = {
        "setup_seconds": built - start,
        "train_seconds": time.perf_counter() - built,
        "cpu_seconds": _cpu_seconds(),
        "peak_rss_bytes": peak_rss_bytes(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    return reply


client_app = ClientApp()


@client_app.query()
def _query(message: Message, context: Context) -> Message:
    return answer(message, lambda: query_content(_config_toml(context), context))


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    return answer(message, lambda: reply_content(measured_train(message.content, context)))
