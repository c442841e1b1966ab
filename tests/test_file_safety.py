"""Key material is never overwritten (refused, or moved aside with --force), private keys are
0600 from the moment they exist, and every file a run writes has one mode."""

from __future__ import annotations

import os
import stat

import pytest

from fedquad.cli import main
from fedquad.deploy import CA_CERT, CA_KEY, make_certificates, make_node_key
from fedquad.errors import FedquadError
from fedquad.report.results import RunWriter, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_twice_is_refused_with_one_line_and_nothing_changes(tmp_path, capsys):
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "2"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_force_moves_the_old_ca_and_keys_aside_never_deleting_them(tmp_path):
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "1"]) == 0
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "1", "--force"]) == 0
    (aside,) = tmp_path.glob("replaced-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == old
    assert (tmp_path / CA_KEY).read_bytes() != old[CA_KEY]  # a new CA in place
    assert mode(aside / CA_KEY) == 0o600
    # a second --force keeps both earlier generations
    assert main(["deploy", "certs", str(tmp_path), "--nodes", "1", "--force"]) == 0
    assert len(list(tmp_path.glob("replaced-*"))) == 2


def test_node_key_refuses_an_existing_key_unless_forced(tmp_path, capsys):
    key = tmp_path / "node.key"
    assert main(["deploy", "node-key", str(key)]) == 0
    first = key.read_bytes()
    assert main(["deploy", "node-key", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert key.read_bytes() == first
    assert main(["deploy", "node-key", str(key), "--force"]) == 0
    (aside,) = tmp_path.glob("replaced-*")
    assert (aside / "node.key").read_bytes() == first
    assert (aside / "node.key.pub").is_file()
    with pytest.raises(FedquadError, match="already exists"):
        make_node_key(key)


def test_private_keys_are_0600_at_creation_whatever_the_umask(tmp_path):
    old = os.umask(0)  # with a chmod after writing, a key would exist 0666 for a moment
    try:
        paths = make_certificates(tmp_path / "certs")
        private, public = make_node_key(tmp_path / "node.key")
    finally:
        os.umask(old)
    for path in (paths[CA_KEY], private):
        assert mode(path) == 0o600
    assert mode(paths[CA_CERT]) == mode(public) == 0o666


def test_loopback_material_is_throwaway(tmp_path):
    make_certificates(tmp_path, existing="discard")
    first = (tmp_path / CA_KEY).read_bytes()
    make_certificates(tmp_path, existing="discard")
    assert (tmp_path / CA_KEY).read_bytes() != first
    assert not list(tmp_path.glob("replaced-*"))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_a_run_writes_has_one_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        writer = RunWriter(tmp_path)
        writer.write_config("seed = 0\n")
        writer.write_json("summary.json", {})
        writer.append_metrics({"round": 1})
        atomic_write_text(tmp_path / "fleet.toml", "")
        (tmp_path / "plain.txt").write_text("")  # what open() gives
    finally:
        os.umask(old)
    modes = {p.name: mode(p) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
