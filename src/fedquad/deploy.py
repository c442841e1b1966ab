"""Standing up a Flower deployment for fedquad: certificates, SuperNode keys and the commands
that start a SuperLink and one SuperNode per device with the right flags.

The SuperLink serves TLS with a certificate signed by a private CA, admits only SuperNodes whose
public keys were registered with it (``--enable-supernode-auth``), and runs with ``--isolation
process``: ``fedquad run`` is the ServerApp of each run (see :mod:`fedquad.engines.flower_deploy`).
Each SuperNode is one device of the fleet (``--node-config partition-id=N``) and signs its
requests with its private key. ``--insecure`` turns TLS, and with it node authentication, off.

Torch-free: the ``fedquad deploy`` commands (:mod:`fedquad.deploy_cli`) start quickly.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fedquad.errors import FedquadError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SECRET = "serverapp.secret"
"""Shared by the SuperLink and ``fedquad run``: only its holders may take a run's ServerApp task
(``--superexec-auth-secret-file``), so nobody else reaching the SuperLink can drive the
SuperNodes."""
CERT_FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, SECRET)
"""What ``fedquad deploy certs`` writes."""
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_SUPERLINK = "127.0.0.1:8000"
"""Flower's default: the SuperLink's Control, Fleet and Runtime APIs share one HTTPS port."""
RUNTIME_PORT = 9094
"""Flower's default port of a SuperNode's local Runtime API; device N uses ``RUNTIME_PORT + N``
so that several SuperNodes can share a host."""
DEVICE_KEY = "partition-id"
"""The node config key naming the device a SuperNode is."""
CONNECTION = "fedquad"
"""The name of the SuperLink connection fedquad writes for the ``flwr`` command."""
CERT_DAYS = 365

Existing = Literal["refuse", "move", "discard"]
"""What to do with key material already on disk: ``refuse`` (a one-line error), ``move`` (into
``replaced-<timestamp>/`` beside it: ``--force``), ``discard`` (throwaway material, the loopback's
own)."""
REPLACED = "replaced-"

INSECURE_WARNING = (
    "warning: {what} without TLS: model updates, configs and node identities travel in clear "
    "text, and SuperNode authentication (which needs TLS) is off; use this only on a network "
    "you trust"
)
INSECURE_WHAT = {
    "superlink": "the SuperLink runs",
    "supernode": "the SuperNode connects",
    "register": "registration connects",
}


def warn_insecure(what: str) -> None:
    print(INSECURE_WARNING.format(what=what), file=sys.stderr)


# --------------------------------------------------------------------------- certificates


def make_certificates(
    out: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = CERT_DAYS,
    existing: Existing = "refuse",
) -> dict[str, Path]:
    """A private CA and a SuperLink certificate it signs, valid for ``hosts`` (IP addresses or
    DNS names): ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` in ``out``, and the
    SuperLink's ServerApp secret ``serverapp.secret``. Files already there are handled as
    ``existing`` says: every enrolled device trusts the old CA, so it is never silently lost."""
    # cryptography ships with flwr (its SuperNode needs it): no openssl binary required
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise FedquadError("give at least one --host the SuperLink is reached at")
    paths = {name: out / name for name in CERT_FILES}
    clear_material(list(paths.values()), existing)
    names = [_subject_alt_name(h) for h in hosts]
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def subject(name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject("fedquad federation CA"))
        .issuer_name(subject("fedquad federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(subject(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ensure_directory(out)
    _write(paths[CA_CERT], _cert_pem(ca))
    _write(paths[CA_KEY], _key_pem(ca_key), private=True)
    _write(paths[SERVER_CERT], _cert_pem(server))
    _write(paths[SERVER_KEY], _key_pem(key), private=True)
    _write(paths[SECRET], secrets.token_hex(32).encode(), private=True)
    return paths


def make_node_key(path: Path, existing: Existing = "refuse") -> tuple[Path, Path]:
    """A SuperNode's key pair: ``path`` (private, OpenSSH) and ``path.pub`` (to register); a
    pair already there is handled as ``existing`` says."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())  # Flower accepts NIST curves only
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_path = public_key_path(path)
    clear_material([path, public_path], existing)
    ensure_directory(path.parent)
    _write(path, private, private=True)
    _write(public_path, public + b"\n")
    return path, public_path


def node_key_path(directory: Path, device: int) -> Path:
    return directory / f"supernode-{device}.key"


def public_key_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def _subject_alt_name(host: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() or c in "/:" for c in host):
            raise FedquadError(
                f"--host {host!r} is neither an IP address nor a host name"
            ) from None
        return x509.DNSName(host)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def ensure_directory(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedquadError(f"directory '{path}' cannot be created: {exc.strerror}") from None
    return path


def clear_material(paths: list[Path], existing: Existing) -> None:
    """Make way for new key material at ``paths`` (see :data:`Existing`)."""
    found = [p for p in paths if p.exists() or p.is_symlink()]
    if not found:
        return
    if existing == "refuse":
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise FedquadError(
            f"'{found[0]}'{more} already exists: devices may depend on it; --force moves the "
            f"old files into {found[0].parent / REPLACED}<timestamp>/ and writes new ones"
        )
    if existing == "discard":
        for path in found:
            path.unlink()
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside = ensure_directory(found[0].parent / f"{REPLACED}{stamp}")
    for path in found:
        # a rename within the directory: the old material is kept whole, never deleted
        path.rename(aside / path.name)
    print(f"moved the old {', '.join(p.name for p in found)} into {aside}", file=sys.stderr)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Create ``path`` (never overwrite it); a private key is 0600 from the moment it exists,
    anything else gets 0666 masked by the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o600 if private else 0o666)
    except FileExistsError:
        raise FedquadError(f"'{path}' already exists: it is not overwritten") from None
    except OSError as exc:
        raise FedquadError(f"'{path}' cannot be written: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------- commands


def flower_executable(name: str) -> str:
    """A Flower command of this environment (beside this interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FedquadError(f"'{name}' is not installed: install flwr in this environment")
    return found


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process: this environment's commands first on PATH (a
    SuperNode starts ``flwr-clientapp`` by name) and runtime dependency installation off (it
    would install the app's dependencies, a CUDA torch among them, into a fresh environment)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedquadError(f"address {address!r}: write it as host:port, e.g. {DEFAULT_SUPERLINK}")
    return host, int(port)


def superlink_command(
    certs: Path | None,
    address: str = DEFAULT_SUPERLINK,
    *,
    insecure: bool = False,
    database: str | None = None,
) -> list[str]:
    """``flower-superlink`` serving TLS with ``certs`` and admitting registered SuperNodes only
    (or, ``insecure``, neither), with fedquad as the ServerApp process of every run: the holders
    of ``certs/serverapp.secret`` when there is one."""
    host, port = split_address(address)
    command = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    command += ["--isolation", "process", "--disable-runtime-dependency-installation"]
    if database is not None:
        command += ["--database", database]
    if insecure:
        return [*command, "--insecure"]
    if certs is None:
        raise FedquadError(
            "the SuperLink needs --certs DIR (fedquad deploy certs DIR), or --insecure"
        )
    files = [_existing(certs / name, "fedquad deploy certs") for name in (CA_CERT, SERVER_CERT)]
    key = _existing(certs / SERVER_KEY, "fedquad deploy certs")
    command += ["--ssl-ca-certfile", files[0], "--ssl-certfile", files[1], "--ssl-keyfile", key]
    if (certs / SECRET).is_file():
        command += ["--superexec-auth-secret-file", str((certs / SECRET).resolve())]
    return [*command, "--enable-supernode-auth"]


def supernode_command(
    device: int,
    superlink: str = DEFAULT_SUPERLINK,
    *,
    root_certificates: Path | None,
    key: Path | None,
    insecure: bool = False,
    runtime_port: int | None = None,
) -> list[str]:
    """``flower-supernode`` for one device: the device id in its node config, TLS verified with
    ``root_certificates`` and requests signed with ``key`` (or, ``insecure``, neither)."""
    if device < 0:
        raise FedquadError(f"--device {device}: use a device id >= 0")
    split_address(superlink)
    port = RUNTIME_PORT + device if runtime_port is None else runtime_port
    command = [flower_executable("flower-supernode"), "--superlink", superlink]
    command += ["--node-config", f"{DEVICE_KEY}={device}", "--port", str(port)]
    if insecure:
        return [*command, "--insecure"]
    if root_certificates is not None:
        command += ["--root-certificates", _existing(root_certificates, "fedquad deploy certs")]
    if key is None:
        raise FedquadError(
            "the SuperNode needs --key FILE (fedquad deploy node-key FILE, its .pub registered "
            "with the SuperLink), or --insecure"
        )
    return [*command, "--auth-supernode-private-key", _existing(key, "fedquad deploy node-key")]


def write_connection(
    flwr_home: Path, superlink: str, root_certificates: Path | None, insecure: bool
) -> None:
    """A Flower config in ``flwr_home`` whose default connection is the SuperLink at
    ``superlink``: the ``flwr`` command reads it (the user's own Flower config stays as is)."""
    import tomli_w

    split_address(superlink)
    connection: dict[str, object] = {"address": superlink}
    if insecure:
        connection["insecure"] = True
    elif root_certificates is not None:
        connection["root-certificates"] = _existing(root_certificates, "fedquad deploy certs")
    text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    _write(ensure_directory(flwr_home) / "config.toml", text.encode())


def register_command(public_key: Path) -> list[str]:
    """``flwr supernode register`` of one SuperNode's public key (the connection of
    :func:`write_connection`)."""
    key = _existing(public_key, "fedquad deploy node-key")
    return [flower_executable("flwr"), "supernode", "register", key, CONNECTION]


def _existing(path: Path, made_by: str) -> str:
    if not path.is_file():
        raise FedquadError(f"'{path}' does not exist: make it with {made_by}")
    return str(path.resolve())
