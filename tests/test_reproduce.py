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
        assert (
            plan.base["federation"]["rounds"] == 20
        )  # cut from 30 by the protocol's host-budget rule
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


def test_seeds_escalate_an_arm_and_never_drop_its_own(reproduce, capsys, tmp_path):
    assert reproduce.escalated_seeds("P", [0, 1, 2, 3, 4], "0-9") == list(range(10))
    assert reproduce.escalated_seeds("P", [0, 1, 2], "7,0,1,2") == [0, 1, 2, 7]
    args = ["--arm", "P", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    assert reproduce.main([*args, "--seeds", "5-9"]) == 2
    err = capsys.readouterr().err
    assert "--seeds '5-9' leaves out arm P's seed 0" in err and "e.g. --seeds 0-9" in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert reproduce.main([*args, "--seeds", "0,x"]) == 2
    assert "'x' is not a seed" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def test_missing_sst2_stops_the_arm(reproduce, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FEDQUAD_SST2_DIR", raising=False)
    args = ["--arm", "S", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    assert reproduce.main(args) == 2
    assert "SST-2 data not found" in capsys.readouterr().err
    assert reproduce.main([*args, "--sst2-dir", str(tmp_path)]) == 2
    assert "does not contain train.tsv" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def _arm_copy(reproduce, tmp_path, monkeypatch, arm="S"):
    """A copy of a committed arm config in place of the original, without its budgets."""
    text = (reproduce.ROOT / reproduce.ARMS[arm]).read_text()
    lines = [line for line in text.splitlines(keepends=True) if "budget" not in line]
    path = tmp_path / f"{arm}.toml"
    path.write_text("".join(lines))
    monkeypatch.setitem(reproduce.ARMS, arm, path)
    return path


def test_an_arm_without_budgets_is_refused_before_any_run(reproduce, capsys, monkeypatch, tmp_path):
    _arm_copy(reproduce, tmp_path, monkeypatch)
    monkeypatch.setattr(reproduce, "_find_sst2_dir", lambda: tmp_path)
    args = ["--arm", "S", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    assert reproduce.main(args) == 2
    err = capsys.readouterr().err
    assert "arm S has no budgets" in err and "--dry-run --write-budgets" in err
    assert err.count("\n") == 1 and not (tmp_path / "w").exists()
    assert reproduce.main([*args, "--write-budgets"]) == 2
    assert "give both" in capsys.readouterr().err


def test_the_dry_run_writes_the_budgets_once_before_any_run(
    reproduce, capsys, monkeypatch, tmp_path
):
    path = _arm_copy(reproduce, tmp_path, monkeypatch)
    monkeypatch.setattr(reproduce, "_find_sst2_dir", lambda: tmp_path)
    planned = {}

    def fake_planned_times(plan, work):  # no model: each label's rounds take its index + 1 s
        for i, entry in enumerate(plan.entries):
            planned[entry.label] = {s: [float(i + 1 + s)] * 30 for s in plan.seeds}
        return planned

    monkeypatch.setattr(reproduce, "planned_times", fake_planned_times)
    work, results = tmp_path / "w", tmp_path / "r"
    args = ["--arm", "S", "--work", str(work), "--out", str(results), "--dry-run"]
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert "budgets: 10, 20, 30 virtual s" in out  # the shortest run: 30 rounds of 1 s
    assert "budgets" not in path.read_text()  # printed only
    assert reproduce.main([*args, "--write-budgets"]) == 0
    assert load_plan(path, []).budgets == [10.0, 20.0, 30.0]
    assert "# Virtual seconds of accuracy at a budget" in path.read_text()
    assert reproduce.main([*args, "--write-budgets"]) == 2  # fixed once
    assert "already has budgets" in capsys.readouterr().err
    # an arm that has started cannot fix them any more
    path.write_text("".join(x for x in path.read_text().splitlines(True) if "budget" not in x))
    work.mkdir()
    (work / "plan.json").write_text("{}")
    assert reproduce.main([*args, "--write-budgets"]) == 2
    assert "has started" in capsys.readouterr().err


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
    # the budgets first, from the dry run on the real workload
    assert reproduce.main([*args, "--dry-run", "--write-budgets"]) == 0, capsys.readouterr().err
    plan = load_plan(arm, [])
    planned = reproduce.planned_times(plan, work)["fedlora"][0]
    assert len(plan.budgets) == 3 and plan.budgets[-1] <= sum(planned)
    assert not (work / "fedlora").exists()  # nothing trained
    assert reproduce.main(args) == 0, capsys.readouterr().err
    run = results / "fedlora" / "seed-0"
    # FedLoRA's plans do not depend on training: the dry run is its clock, round for round
    recorded = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["virtual_seconds"] for m in recorded] == planned
    assert sorted(p.name for p in run.iterdir()) == sorted(reproduce.KEPT_FILES)
    assert (work / "fedlora" / "seed-0" / "checkpoint").is_dir()  # kept in the work directory
    built = (results / "comparison.md").read_bytes()
    assert json.loads((results / "comparison.json").read_text())["seeds"] == [0]
    (results / "comparison.md").unlink()
    assert fedquad_main(["report", str(results)]) == 0
    assert (results / "comparison.md").read_bytes() == built
    # a fresh clone's empty work directory continues from the results: nothing runs again
    capsys.readouterr()
    assert reproduce.main([*args[:2], "--work", str(tmp_path / "w2"), *args[4:]]) == 0
    assert "fedlora seed 0 kept from" in capsys.readouterr().out
    assert not (tmp_path / "w2" / "fedlora" / "seed-0" / "checkpoint").exists()
    assert (results / "comparison.md").read_bytes() == built
    # escalated by a seed at a later commit: seed 0 stays as it ran, seed 1 runs at the new one
    began = json.loads((results / "plan.json").read_text())["seed_commits"]["0"]
    seed_0 = (run / "metrics.jsonl").read_text()
    monkeypatch.setattr("fedquad.seeded_compare.code_commit", lambda: "later")
    assert reproduce.main([*args, "--seeds", "0,1"]) == 0, capsys.readouterr().err
    plan_now = json.loads((results / "plan.json").read_text())
    assert plan_now["seeds"] == [0, 1]
    assert plan_now["seed_commits"] == {"0": began, "1": "later"}
    assert json.loads((results / "comparison.json").read_text())["seeds"] == [0, 1]
    assert (run / "metrics.jsonl").read_text() == seed_0  # kept, not run again
    assert (results / "fedlora" / "seed-1" / "summary.json").is_file()


@pytest.mark.slow
def test_the_memory_measurement_feeds_the_claim(reproduce, capsys, monkeypatch, tmp_path):
    arm = tmp_path / "T.toml"
    arm.write_text(TINY_ARM)
    monkeypatch.setitem(reproduce.ARMS, "S", arm)
    results = tmp_path / "r"
    assert reproduce.main(["--arm", "S", "--out", str(results), "--measure-memory"]) == 0
    data = json.loads((results / "memory_measured.json").read_text())
    unquantized, quantized = data["configs"]
    assert (unquantized["quantized"], quantized["quantized"]) == (0, quantized["depth"])
    assert quantized["saved_bytes"] < unquantized["saved_bytes"]
    for config in (unquantized, quantized):
        assert config["peak_bytes"] > config["peak_above_baseline_bytes"] > 0
    assert "memory measured into" in capsys.readouterr().out
