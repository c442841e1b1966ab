"""A whole Flower deployment on this machine: a SuperLink and one SuperNode per device as
separate processes on loopback, with TLS and node authentication as on a real fleet.

For trying the deployment path end to end (``fedquad deploy loopback``), for benchmarks that
run the default experiment on it, and for tests. Every process is started in its own session
and stopped by pid with its group (a SuperNode's SuperExec and ClientApp processes), orphans
found by their ``FLWR_HOME``. Torch-free, like :mod:`fedquad.deploy`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fedquad.deploy import (
    CA_CERT,
    SECRET,
    flower_env,
    make_certificates,
    make_node_key,
    node_key_path,
    register_command,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedquad.errors import FedquadError

STARTUP_SECONDS = 60.0
"""How long the SuperLink may take to accept connections (measured: 3–10 s, longer under load)."""
STOP_SECONDS = 10.0
"""Grace after SIGTERM before SIGKILL."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FlowerProcesses:
    """Flower processes, each in its own session with its own ``FLWR_HOME`` under ``root`` and
    its output in ``root/<name>.log``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []
        root.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv,
                env=flower_env(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group: the SuperNode's SuperExec and ClientApps
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> list[int]:
        """SIGTERM each started process's group, SIGKILL what is left after a grace period and
        any orphan still running under ``root``; the pids that could not be stopped."""
        for process in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        left = self.survivors()
        for orphan in left:
            with contextlib.suppress(psutil.Error):
                orphan.kill()
        _, alive = psutil.wait_procs(left, timeout=STOP_SECONDS)
        return [p.pid for p in alive]

    def survivors(self) -> list[psutil.Process]:
        """Processes running with a ``FLWR_HOME`` under ``root`` (orphans too)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                home = process.environ().get("FLWR_HOME", "")
                if home.startswith(str(self.root)) and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found


def start_superlink(processes: FlowerProcesses, certs: Path) -> str:
    """A SuperLink with TLS and node authentication; its address once it accepts connections."""
    address = f"127.0.0.1:{free_port()}"
    link = processes.start("superlink", superlink_command(certs, address))
    deadline = time.monotonic() + STARTUP_SECONDS
    while "Application startup complete" not in processes.log("superlink"):
        if link.poll() is not None or time.monotonic() > deadline:
            raise FedquadError(
                "the SuperLink did not start: " + processes.log("superlink")[-500:].strip()
            )
        time.sleep(0.2)
    return address


def start_supernode(
    processes: FlowerProcesses, device: int, address: str, ca: Path, key: Path
) -> subprocess.Popen[bytes]:
    """Device ``device``'s SuperNode, signing its requests with ``key``."""
    argv = supernode_command(
        device, address, root_certificates=ca, key=key, runtime_port=free_port()
    )
    return processes.start(f"node-{device}", argv)


def register(address: str, ca: Path, public_keys: list[Path], flwr_home: Path) -> None:
    """Allow SuperNodes by their public keys, as ``fedquad deploy register`` does."""
    write_connection(flwr_home, address, ca, insecure=False)
    for key in public_keys:
        done = subprocess.run(
            register_command(key), env=flower_env(flwr_home), capture_output=True, check=False
        )
        if done.returncode != 0:
            raise FedquadError(
                f"registering {key} failed: {done.stderr.decode(errors='replace').strip()}"
            )


@dataclass
class Loopback:
    """A running loopback deployment: what ``fedquad run`` needs to use it."""

    address: str
    certs: Path
    processes: FlowerProcesses
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run_settings(self) -> list[str]:
        """``--set`` overrides that point a run at this deployment."""
        return [
            "engine=flower",
            f"flower.superlink={self.address}",
            f"flower.root_certificates={self.certs / CA_CERT}",
            f"flower.secret_file={self.certs / SECRET}",
        ]


@contextlib.contextmanager
def loopback(root: Path, num_devices: int) -> Iterator[Loopback]:
    """Certificates, a SuperLink, registered keys and ``num_devices`` SuperNodes under
    ``root``; every process stopped on exit, orphans included."""
    if num_devices < 1:
        raise FedquadError(f"{num_devices} devices: a deployment needs at least 1")
    certs = root / "certs"
    # throwaway material of this loopback only: made afresh each time
    make_certificates(certs, ["127.0.0.1", "localhost"], existing="discard")
    keys = [make_node_key(node_key_path(certs, d), "discard") for d in range(num_devices)]
    processes = FlowerProcesses(root / "flower")
    try:
        address = start_superlink(processes, certs)
        register(address, certs / CA_CERT, [public for _, public in keys], root / "register")
        nodes = [
            start_supernode(processes, d, address, certs / CA_CERT, private)
            for d, (private, _) in enumerate(keys)
        ]
        yield Loopback(address, certs, processes, nodes)
    finally:
        left = processes.stop()
        if left:
            raise FedquadError(f"Flower processes {left} did not stop: kill them by hand")
