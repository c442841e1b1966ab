"""benchmarks/reproduce.py: the committed arm configs, the refusals (an option this version lacks,
SST-2 missing), and one tiny arm end to end into a results directory that rebuilds alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fedquad.cli import main as fedquad_main
from fedquad.seeded_compare import load_plan

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_cwd(monkeypatch):
    monkeypatch.chdir(Path.cwd())  # the script moves to the repository root: come back after


def test_arm_configs_follow_the_protocol(reproduce, tmp_path):
    plans = {arm: load_plan(reproduce.ROOT / path, []) for arm, path in reproduce.ARMS.items()}
    assert [len(plans[a].seeds) for a in "PQS"] == [5, 5, 3]
    for plan in plans.values():
        assert plan.targets == [0.78, 0.80, 0.82]
        assert plan.base["data"]["name"] == "sst2"
        assert plan.base["federation"]["rounds"] == 30
    assert [e.label for e in plans["Q"].entries] == [
        "fedquad",
        "fedquad-noquant",
        "legend",
        "joint",
        "fedlora-checkpoint",
        "fedlora-sit-out",
    ]
    assert {e.method for e in plans["P"].entries} == {
        "fedquad",
        "legend",
        "joint",
        "fedlora",
        "hetlora",
        "fedra",
    }
    # no arm needs anything this version lacks (P and Q: planner.infeasible)
    for arm, plan in plans.items():
        reproduce.check_arm(arm, plan, tmp_path)


def test_an_arm_this_version_cannot_run_is_refused(reproduce, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FEDQUAD_SST2_DIR", raising=False)
    assert reproduce.main(["--arm", "Q", "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    if "planner.infeasible" not in err:  # the option exists: then it stops at SST-2
        assert "SST-2 data not found" in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_missing_sst2_stops_the_arm(reproduce, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FEDQUAD_SST2_DIR", raising=False)
    args = ["--arm", "S", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    assert reproduce.main(args) == 2
    assert "SST-2 data not found" in capsys.readouterr().err
    assert reproduce.main([*args, "--sst2-dir", str(tmp_path)]) == 2
    assert "does not contain train.tsv" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


TINY_ARM = """
data.name = "fine-foods"
data.max_train_samples = 160
data.max_test_samples = 32
model.max_length = 32
federation.rounds = 2
federation.num_devices = 4
federation.devices_per_round = 2
federation.eval_every = 1
train.local_steps = 1
train.batch_size = 8
lora.depth = 1
profile.timed_steps = 1

[compare]
seeds = [0]
targets = [0.3]

[[compare.entry]]
method = "fedlora"
"""


@pytest.mark.integration
def test_tiny_arm_end_to_end(reproduce, capsys, monkeypatch, tmp_path):
    arm = tmp_path / "T.toml"
    arm.write_text(TINY_ARM)
    monkeypatch.setitem(reproduce.ARMS, "S", arm)
    monkeypatch.setattr(reproduce, "_find_sst2_dir", lambda: tmp_path)
    work, results = tmp_path / "w", tmp_path / "r"
    args = ["--arm", "S", "--work", str(work), "--out", str(results), "--quiet"]
    assert reproduce.main(args) == 0, capsys.readouterr().err
    run = results / "fedlora" / "seed-0"
    assert sorted(p.name for p in run.iterdir()) == sorted(reproduce.KEPT_FILES)
    assert (work / "fedlora" / "seed-0" / "checkpoint").is_dir()  # kept in the work directory
    built = (results / "comparison.md").read_bytes()
    assert json.loads((results / "comparison.json").read_text())["seeds"] == [0]
    (results / "comparison.md").unlink()
    assert fedquad_main(["report", str(results)]) == 0
    assert (results / "comparison.md").read_bytes() == built
