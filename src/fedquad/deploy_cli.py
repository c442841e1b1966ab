"""The ``fedquad deploy`` command: certificates and keys, the Flower processes of a real
federation (:mod:`fedquad.deploy`), and a whole one on this machine (:mod:`fedquad.loopback`).

Torch-free, so that it starts quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fedquad.deploy import (
    CA_CERT,
    CERT_FILES,
    DEFAULT_HOSTS,
    DEFAULT_SUPERLINK,
    INSECURE_WHAT,
    RUNTIME_PORT,
    SECRET,
    SERVER_CERT,
    Existing,
    clear_material,
    ensure_directory,
    flower_env,
    make_certificates,
    make_node_key,
    node_key_path,
    public_key_path,
    register_command,
    superlink_command,
    supernode_command,
    warn_insecure,
    write_connection,
)
from fedquad.errors import FedquadError
from fedquad.loopback import loopback


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``fedquad deploy`` command and its subcommands."""
    deploy = sub.add_parser(
        "deploy", help="certificates, keys and the Flower processes of a real federation"
    )
    cmds = deploy.add_subparsers(dest="deploy_command", required=True)
    certs = cmds.add_parser("certs", help="a private CA and the SuperLink's TLS certificate")
    certs.add_argument("dir", type=Path, help="where to write ca.crt, ca.key, server.pem, ...")
    certs.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="HOST",
        help="IP address or name the SuperLink is reached at (repeatable; "
        "default 127.0.0.1 and localhost)",
    )
    certs.add_argument(
        "--nodes", type=int, default=0, help="also make N SuperNode keys supernode-<id>.key"
    )
    key = cmds.add_parser("node-key", help="a SuperNode's key pair (FILE and FILE.pub)")
    key.add_argument("file", type=Path)
    for parser in (certs, key):
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace existing files, moving them into replaced-<timestamp>/ (never deleted)",
        )
    link = cmds.add_parser("superlink", help="start the SuperLink (TLS, node authentication)")
    link.add_argument("--certs", type=Path, default=Path("certs"), help="default: ./certs")
    link.add_argument("--address", default=DEFAULT_SUPERLINK, help="host:port to listen on")
    link.add_argument("--database", help="state file (default: in memory)")
    register = cmds.add_parser("register", help="allow SuperNodes by their public keys")
    register.add_argument("public_keys", type=Path, nargs="+", metavar="KEY.pub")
    node = cmds.add_parser("supernode", help="start the SuperNode of one device")
    node.add_argument("--device", type=int, required=True, help="the device id it is")
    node.add_argument("--key", type=Path, help="its private key (fedquad deploy node-key)")
    node.add_argument("--runtime-port", type=int, help=f"local port (default {RUNTIME_PORT}+N)")
    local = cmds.add_parser(
        "loopback", help="a SuperLink and N SuperNodes on this machine (TLS, auth) until Ctrl-C"
    )
    local.add_argument("--nodes", type=int, required=True, help="how many devices")
    local.add_argument(
        "--dir", type=Path, default=Path("loopback"), help="certificates, Flower homes and logs"
    )
    for parser in (register, node):
        parser.add_argument("--superlink", default=DEFAULT_SUPERLINK, help="its host:port")
        parser.add_argument(
            "--root-certificates", type=Path, help="CA certificate (ca.crt) to verify it"
        )
    for parser in (link, register, node):
        parser.add_argument(
            "--insecure", action="store_true", help="no TLS and no node authentication"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="print the command instead of running it"
        )


def main(args: argparse.Namespace) -> int:
    """Run a ``fedquad deploy`` subcommand."""
    command = args.deploy_command
    if command == "certs":
        existing: Existing = "move" if args.force else "refuse"
        return _certs(args.dir, args.hosts or list(DEFAULT_HOSTS), args.nodes, existing)
    if command == "loopback":
        return _loopback(args.dir, args.nodes)
    if command == "node-key":
        private, public = make_node_key(args.file, "move" if args.force else "refuse")
        print(f"private key {private} (stays on the device), public key {public} (to register)")
        return 0
    if args.insecure:
        warn_insecure(INSECURE_WHAT[command])
    if command == "superlink":
        argv = superlink_command(
            args.certs, args.address, insecure=args.insecure, database=args.database
        )
        return _run(argv, flower_env(), args.dry_run, replace=True)
    if command == "supernode":
        argv = supernode_command(
            args.device,
            args.superlink,
            root_certificates=args.root_certificates,
            key=args.key,
            insecure=args.insecure,
            runtime_port=args.runtime_port,
        )
        return _run(argv, flower_env(node_home(args.device)), args.dry_run, replace=True)
    return _register(args)


def node_home(device: int) -> Path:
    """A SuperNode's own Flower home: SuperNodes sharing a host do not share installed apps
    (Flower installs an app on its first message, without a lock)."""
    base = os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    return Path(base) / f"supernode-{device}"


def _certs(directory: Path, hosts: list[str], nodes: int, existing: Existing) -> int:
    if nodes < 0:
        raise FedquadError(f"--nodes {nodes}: use a number >= 0")
    # every file checked (or moved into one replaced-<timestamp>/) before any is written
    keys = [node_key_path(directory, d) for d in range(nodes)]
    material = [directory / name for name in CERT_FILES]
    clear_material(material + keys + [public_key_path(k) for k in keys], existing)
    paths = make_certificates(directory, hosts)
    for key in keys:
        make_node_key(key)
    print(f"CA certificate {paths[CA_CERT]} (give it to every device and to fedquad run)")
    print(f"SuperLink certificate {paths[SERVER_CERT]} for {', '.join(hosts)}")
    print(f"ServerApp secret {paths[SECRET]} (for the SuperLink and fedquad run only)")
    if nodes:
        print(f"SuperNode keys {node_key_path(directory, 0)} ... (register the .pub files)")
    return 0


def _loopback(directory: Path, nodes: int) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with loopback(ensure_directory(directory), nodes) as running:
        sets = " ".join(f"--set {shlex.quote(s)}" for s in running.run_settings())
        print(f"SuperLink at {running.address}, {nodes} SuperNodes; logs in {directory}/flower")
        print(f"run on it: fedquad run --config FILE --set federation.num_devices={nodes} {sets}")
        print("Ctrl-C stops every process", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                if any(node.poll() is not None for node in running.nodes):
                    raise FedquadError(f"a SuperNode exited: see {directory}/flower/node-*.log")
    return 0


def _register(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fedquad-flwr-") as home:
        write_connection(Path(home), args.superlink, args.root_certificates, args.insecure)
        for key in args.public_keys:
            status = _run(register_command(key), flower_env(Path(home)), args.dry_run)
            if status != 0:
                return status
    return 0


def _run(argv: list[str], env: dict[str, str], dry_run: bool, replace: bool = False) -> int:
    """Run a Flower command; ``replace``: in place of this process, so that its pid, signals
    and exit code are the Flower process's own."""
    home = env.get("FLWR_HOME")
    shown = ""
    if home is not None and home != os.environ.get("FLWR_HOME"):
        shown = f"FLWR_HOME={shlex.quote(home)} "
    print(shown + shlex.join(argv), file=sys.stderr)
    if dry_run:
        return 0
    sys.stderr.flush()
    sys.stdout.flush()
    if replace and hasattr(os, "execve"):
        os.execve(argv[0], argv, env)
    return subprocess.run(argv, env=env, check=False).returncode
