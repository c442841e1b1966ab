"""The flower executor: a SuperLink and SuperNodes as separate processes on loopback, with TLS
and node authentication, running the same rounds as the local executor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is first imported

import psutil
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from safetensors.torch import load_file

import fedquad
from fedquad.cli import main
from fedquad.config import FlowerConfig, load_config
from fedquad.cost.model import CostProfile, download_bytes, upload_bytes
from fedquad.deploy import (
    CA_CERT,
    SECRET,
    SERVER_CERT,
    make_certificates,
    make_node_key,
    superlink_command,
    supernode_command,
)
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.loopback import FlowerProcesses, Loopback, free_port, start_superlink
from fedquad.report.results import read_metrics
from helpers import TINY_HETEROGENEOUS

TINY = [  # 3 devices of the default fleet, all sampled
    "method='fedquad'",
    *TINY_HETEROGENEOUS,
    "federation.num_devices=3",
    "federation.devices_per_round=3",
]
REFUSED_WITHIN = 60.0
"""Seconds a refused SuperNode may take to give up (measured: about 5)."""


@pytest.fixture
def processes(tmp_path):
    started = FlowerProcesses(tmp_path / "flower")
    yield started
    assert not started.stop()
    assert not started.survivors()


def start_supernode(
    processes: FlowerProcesses,
    name: str,
    device: int,
    address: str,
    ca: Path,
    key: Path,
    sign: bool = True,
) -> subprocess.Popen[bytes]:
    argv = supernode_command(
        device, address, root_certificates=ca, key=key, runtime_port=free_port()
    )
    if not sign:  # no key given: the SuperNode signs with a key of its own making
        at = argv.index("--auth-supernode-private-key")
        del argv[at : at + 2]
    return processes.start(name, [*argv, "--max-retries", "1"])


def register(address: str, ca: Path, keys: list[Path]) -> None:
    status = main(
        ["deploy", "register", *map(str, keys), "--superlink", address]
        + ["--root-certificates", str(ca)]
    )
    assert status == 0


def wait_exit(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(seconds)
    return None


# --------------------------------------------------------------------------- pieces (fast)


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path):
    paths = make_certificates(tmp_path, ["127.0.0.1", "localhost", "link.example.org"])
    ca = x509.load_pem_x509_certificate(paths[CA_CERT].read_bytes())
    server = x509.load_pem_x509_certificate(paths[SERVER_CERT].read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private in ("ca.key", "server.key", "serverapp.secret"):
        assert oct(paths[private].stat().st_mode & 0o777) == "0o600"


def test_node_keys_are_nist_ec_keys_in_openssh_format(tmp_path):
    private, public = make_node_key(tmp_path / "keys" / "supernode-0.key")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()) == key.public_key()


def test_flower_settings_are_checked_with_one_line_errors():
    config = load_config(None, ["engine='flower'"])
    assert config.flower == FlowerConfig()
    for bad in [
        "flower.superlink='127.0.0.1'",
        "flower.superlink='127.0.0.1:99999'",
        "flower.nodes_timeout=0",
        "flower.reply_timeout=-1",
    ]:
        with pytest.raises(FedquadError, match=r"^flower\.") as err:
            load_config(None, ["engine='flower'", bad])
        assert "\n" not in str(err.value)
    with pytest.raises(FedquadError, match="turns TLS off"):
        load_config(None, ["flower.insecure=true", "flower.root_certificates='ca.crt'"])


def test_tls_and_node_authentication_are_on_unless_insecure(tmp_path):
    certs = tmp_path / "certs"
    make_certificates(certs)
    key, _ = make_node_key(certs / "supernode-1.key")
    link = superlink_command(certs, "127.0.0.1:9000")
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert flag in link
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    assert link[link.index("--isolation") + 1] == "process"  # fedquad run is the ServerApp
    assert link[link.index("--superexec-auth-secret-file") + 1] == str(certs / SECRET)
    node = supernode_command(1, "127.0.0.1:9000", root_certificates=certs / CA_CERT, key=key)
    assert node[node.index("--node-config") + 1] == "partition-id=1"
    assert "--auth-supernode-private-key" in node and "--insecure" not in node

    insecure = superlink_command(None, "127.0.0.1:9000", insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    with pytest.raises(FedquadError, match="--certs DIR"):
        superlink_command(None)
    with pytest.raises(FedquadError, match="--key FILE"):
        supernode_command(1, root_certificates=certs / CA_CERT, key=None)


def test_insecure_says_so(tmp_path, capsys):
    assert main(["deploy", "superlink", "--insecure", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "without TLS" in err and "--insecure" in err

    from fedquad.engines.flower_deploy import superlink_of

    superlink_of(FlowerConfig(insecure=True))
    assert "warning: fedquad run talks to the SuperLink without TLS" in capsys.readouterr().err
    with pytest.raises(FedquadError, match="cannot be read"):
        superlink_of(FlowerConfig(root_certificates=str(tmp_path / "none.crt")))


def test_deploy_certs_command_writes_the_ca_server_and_node_keys(tmp_path, capsys):
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "2"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        ["ca.crt", "ca.key", "server.pem", "server.key", "serverapp.secret"]
        + [f"supernode-{i}.key{ext}" for i in range(2) for ext in ("", ".pub")]
    )
    assert main(["deploy", "certs", str(tmp_path), "--host", "no/such host"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


class FakeGrid:
    """A Grid whose nodes 10, 11, 12 are devices 0, 1, 2; ``silent`` devices never reply, the
    SuperLink says ``lost`` ones are unavailable (no heartbeat)."""

    def __init__(self, silent: set[int], lost: frozenset[int] = frozenset()) -> None:
        self.silent = silent
        self.lost = lost

    def get_node_ids(self) -> list[int]:
        return [10, 11, 12]

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import ConfigRecord, Error, Message, RecordDict
        from flwr.common.constant import ErrorCode

        from fedquad.engines.flower_app import instruction_from, reply_content
        from fedquad.server.messages import TrainReply

        for n, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{n}"  # as a Grid does when it sends
            device = message.metadata.dst_node_id - 10
            if message.metadata.message_type == "query":
                info = {"device_id": device, "num_samples": 5 + device}
                content = RecordDict({"device": ConfigRecord(info)})
            elif device in self.silent:
                continue
            elif device in self.lost:  # the SuperLink's reply: from itself (node 0), not the node
                error = Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable - no heartbeat")
                yield Message(error, reply_to=message)
                continue
            else:  # trains the first row of everything it got
                ins = instruction_from(message.content)
                trained = {name: t[:1] for name, t in ins.tensors.items()}
                content = reply_content(TrainReply(device, trained, 5 + device))
            reply = Message(content, reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
            yield reply


def test_grid_executor_counts_bytes_and_leaves_out_who_does_not_reply(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedquad.engines.flower_grid import GridExecutor
    from fedquad.server.messages import TrainInstruction

    for key in ("_task_id", "_run_id", "_node_id"):  # what a served run sets
        monkeypatch.setattr(TaskIdentity, key, 1)
    executor = GridExecutor(FakeGrid(silent={1}), 3, lambda state: {}, reply_timeout=0.5)
    assert executor.nodes == {0: 10, 1: 11, 2: 12} and executor.device_samples() == [5, 6, 7]
    tensors = {"lora_A": torch.zeros(4, 3), "head.bias": torch.zeros(2, dtype=torch.float16)}
    config = DeviceConfig(depth=1)
    instructions = [TrainInstruction(d, 1, config, tensors, seed=d) for d in (2, 1, 0)]
    replies = executor.train(instructions)
    assert [r.device_id for r in replies] == [2, 1, 0]
    for reply in (replies[0], replies[2]):
        assert reply.error is None
        assert reply.measurements["sent_bytes"] == 4 * 3 * 4 + 2 * 2
        assert reply.measurements["received_bytes"] == 3 * 4 + 1 * 2
    assert replies[1].error == "no reply within flower.reply_timeout = 0.5 s"


def test_grid_executor_drops_a_device_whose_node_is_lost_and_goes_on(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedquad.engines.flower_grid import GridExecutor
    from fedquad.server.messages import TrainInstruction

    for key in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)
    executor = GridExecutor(FakeGrid(silent=set(), lost=frozenset({0})), 3, lambda state: {})
    tensors = {"lora_A": torch.zeros(4, 3)}
    instructions = [TrainInstruction(d, 1, DeviceConfig(depth=1), tensors, seed=d) for d in (2, 0)]
    replies = executor.train(instructions)
    assert [r.device_id for r in replies] == [2, 0]
    assert replies[0].error is None and replies[1].tensors == {}
    assert replies[1].error == "node lost mid-round: Error: Node Unavailable - no heartbeat"


def test_deploy_loopback_runs_a_tls_federation_until_stopped_and_leaves_nothing(tmp_path):
    root = tmp_path / "loopback"
    command = [sys.executable, "-m", "fedquad.cli", "deploy", "loopback", "--nodes", "2"]
    server = subprocess.Popen(
        [*command, "--dir", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline().decode() for _ in range(3)]
        assert "2 SuperNodes" in lines[0], lines
        assert "engine=flower" in lines[1] and f"{root}/certs/ca.crt" in lines[1], lines
        started = FlowerProcesses(root / "flower").survivors()
        names = {" ".join(p.cmdline()) for p in started}
        assert sum("flower-superlink" in n and "--enable-supernode-auth" in n for n in names) == 1
        assert sum("flower-supernode" in n and "--root-certificates" in n for n in names) == 2
        time.sleep(3)  # the SuperNodes connect: a refused one would exit within seconds
        assert all(p.is_running() for p in started)
    finally:
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server, 60) == 0
    assert not FlowerProcesses(root / "flower").survivors()


def test_unauthenticated_supernodes_are_refused(tmp_path, processes):
    """Only a SuperNode whose key was registered gets in: one with an unknown key, one with
    none, and one trusting another CA (a SuperLink it cannot verify) are refused."""
    certs, other = tmp_path / "certs", tmp_path / "other-ca"
    make_certificates(certs)
    make_certificates(other)
    keys = [make_node_key(certs / f"supernode-{i}.key")[0] for i in range(3)]
    address = start_superlink(processes, certs)
    register(address, certs / CA_CERT, [keys[0].with_name(keys[0].name + ".pub")])

    admitted = start_supernode(processes, "admitted", 0, address, certs / CA_CERT, keys[0])
    refused = {
        "unknown-key": start_supernode(
            processes, "unknown-key", 1, address, certs / CA_CERT, keys[1]
        ),
        "no-key": start_supernode(
            processes, "no-key", 2, address, certs / CA_CERT, keys[2], sign=False
        ),
        "other-ca": start_supernode(processes, "other-ca", 0, address, other / CA_CERT, keys[0]),
    }
    for name, process in refused.items():
        assert wait_exit(process, REFUSED_WITHIN) not in (None, 0), processes.log(name)
        assert "could not establish a connection to the SuperLink" in processes.log(name)
    assert "Failed to activate SuperNode" in processes.log("unknown-key")
    assert "All SuperNodes must be registered" in processes.log("no-key")
    assert "CERTIFICATE_VERIFY_FAILED" in processes.log("other-ca")
    assert admitted.poll() is None  # still connected
    link_log = processes.log("superlink")
    assert link_log.count("[Fleet.ActivateNode] Activated") == 1

    # only a holder of the SuperLink's ServerApp secret may serve a run (and so drive the nodes)
    from fedquad.engines.flower_deploy import SuperLink, _acquire

    for secret in (None, b"a guess"):
        with pytest.raises(FedquadError, match="flower.secret_file"):
            _acquire(SuperLink(address, insecure=False, ca_path=certs / CA_CERT, secret=secret), 1)


# --------------------------------------------------------------------------- a whole run (slow)

TOLERANCE = 1e-6
"""Measured: the deployment gives the local executor's curves and adapter bit for bit (the same
seeds, data and client code); the tolerance only absorbs float reassociation on other hosts."""


def _device_config(d: dict) -> DeviceConfig:
    blocks = tuple(d["blocks"]) if "blocks" in d else None
    return DeviceConfig(d["depth"], d["quantized"], d["bits"], rank=d.get("rank"), blocks=blocks)


@pytest.mark.integration
@pytest.mark.slow
def test_two_rounds_on_a_deployment_with_tls_and_node_auth(tmp_path, processes):
    certs = tmp_path / "certs"
    assert main(["deploy", "certs", str(certs), "--nodes", "3"]) == 0
    ca = certs / CA_CERT
    address = start_superlink(processes, certs)
    register(address, ca, [certs / f"supernode-{d}.key.pub" for d in range(3)])
    nodes = [
        start_supernode(processes, f"node-{d}", d, address, ca, certs / f"supernode-{d}.key")
        for d in range(3)
    ]

    run = [*TINY, f"output_dir={tmp_path / 'runs'}"]
    flower = [*Loopback(address, certs, processes).run_settings(), "flower.nodes_timeout=120"]
    deployed = fedquad.run(load_config(None, [*run, *flower, "run_name=flower"]))
    assert all(node.poll() is None for node in nodes)
    local = fedquad.run(load_config(None, [*run, "run_name=local"]))

    metrics = read_metrics(deployed.run_dir)
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(len(m["devices"]) == 3 and not m["dropped"] for m in metrics)
    configs = {_device_config(d) for m in metrics for d in m["devices"]}
    assert len(configs) > 1  # the fleet's tiers get different configs

    # the aggregated adapter and the curves are the local executor's
    ours, theirs = (
        load_file(r.run_dir / "adapter" / "adapter_model.safetensors") for r in (deployed, local)
    )
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=0, atol=TOLERANCE), name
    for m, n in zip(metrics, local.metrics, strict=True):
        assert m["test_loss"] == pytest.approx(n["test_loss"], rel=0, abs=TOLERANCE)
        assert [d["loss"] for d in m["devices"]] == pytest.approx(
            [d["loss"] for d in n["devices"]], rel=0, abs=TOLERANCE
        )

    # each node measured itself, in its own process; the bytes are the cost model's
    profile = CostProfile.from_dict(
        json.loads((deployed.run_dir / "cost_profile.json").read_text())
    )
    for m in metrics:
        pids = set()
        for d in m["devices"]:
            node = d["node"]
            pids.add(node["pid"])
            assert node["host"] == socket.gethostname()
            assert node["peak_rss_bytes"] > 100 * 2**20  # a process holding the model
            assert node["train_seconds"] > 0 and node["setup_seconds"] >= 0
            assert node["cpu_seconds"] > 0 and d["host_seconds"] > 0
            config = _device_config(d)
            assert d["sent_bytes"] == d["bytes_down"] == download_bytes(profile, config)
            assert d["received_bytes"] == d["bytes_up"] == upload_bytes(profile, config)
        assert len(pids) == 3 and os.getpid() not in pids


@pytest.mark.slow
def test_a_supernode_killed_mid_run_is_dropped_and_the_rounds_go_on(tmp_path, processes):
    """SIGKILL one SuperNode process as round 2 starts: without a reply timeout the SuperLink
    reports the node unavailable once it misses its heartbeats (within about a minute), its
    device is left out with that reason, and the other two finish every round."""
    certs = tmp_path / "certs"
    assert main(["deploy", "certs", str(certs), "--nodes", "3"]) == 0
    ca = certs / CA_CERT
    address = start_superlink(processes, certs)
    register(address, ca, [certs / f"supernode-{d}.key.pub" for d in range(3)])
    nodes = [
        start_supernode(processes, f"node-{d}", d, address, ca, certs / f"supernode-{d}.key")
        for d in range(3)
    ]
    out = tmp_path / "runs"
    config = [
        *TINY,
        "federation.rounds=3",
        f"output_dir={out}",
        "run_name=killed",
        *Loopback(address, certs, processes).run_settings(),
        "flower.nodes_timeout=120",
    ]
    sets = [x for item in config for x in ("--set", item)]
    server = processes.start(
        "server", [sys.executable, "-m", "fedquad.cli", "run", "--quiet", *sets]
    )
    metrics = out / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert server.poll() is None, processes.log("server")
        assert time.monotonic() < deadline, processes.log("server")
        time.sleep(0.05)
    killed = nodes[2]
    os.kill(killed.pid, signal.SIGKILL)  # the node process only, as a crash would
    killed.wait()
    started = time.monotonic()
    assert wait_exit(server, 180) == 0, processes.log("server")
    waited = time.monotonic() - started

    records = read_metrics(out / "killed")
    assert [m["round"] for m in records] == [1, 2, 3]
    assert {d["device"] for d in records[0]["devices"]} == {0, 1, 2}
    for m in records[1:]:
        aggregated = {d["device"] for d in m["devices"]}
        assert {0, 1} <= aggregated, m["dropped"]
        if 2 not in aggregated:  # round 2 may have been answered before the kill
            assert m["dropped"]["2"].startswith("node lost mid-round: Error: Node Unavailable")
    assert "2" in records[2]["dropped"]
    assert all(node.poll() is None for node in nodes[:2])
    # what the killed node had started (its ClientApp) is orphaned: stopping its process group
    # ends it, as the fixture does for every process the test started
    home = str(processes.root / "node-2")
    orphans = [p for p in processes.survivors() if p.environ().get("FLWR_HOME") == home]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(killed.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(orphans, timeout=10)
    assert not alive
    print(
        f"rounds 2-3 took {waited:.0f} s after the kill; dropped: "
        f"{[m['dropped'] for m in records]}; orphans of the killed node: {len(orphans)}"
    )
