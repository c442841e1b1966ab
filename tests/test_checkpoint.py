"""Checkpoint and resume: a run killed mid-round, resumed, ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fedquad
from fedquad.cli import main
from fedquad.config import load_config
from fedquad.errors import FedquadError
from fedquad.report.results import read_metrics
from fedquad.server.capacity import CapacityEstimator, Report
from fedquad.server.checkpoint import Checkpoint, has_checkpoint, load_checkpoint, save_checkpoint
from fedquad.server.clock import VirtualClock

RUN = [
    "method='fedquad'",
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "data.partition='iid'",
    "model.max_length=32",
    "federation.rounds=4",
    "federation.num_devices=8",
    "federation.devices_per_round=3",
    "train.local_steps=2",
    "train.batch_size=8",
    "profile.timed_steps=1",
]

COMPARED = ("sampled", "test_accuracy", "test_loss", "train_loss", "virtual_seconds_total")


def test_checkpoint_round_trip_and_only_the_latest_tensors_kept(tmp_path):
    from fedquad.cost.model import CostProfile
    from fedquad.device_config import DeviceConfig

    profile = CostProfile(
        num_blocks=1, frozen_weight_bytes=1, lora_params=(4,), head_params=1,
        saved_bytes=(10,), saved_bytes_bottom=(10,), quant_ratio={8: 0.3},
        head_saved_bytes=0, f=0.1, g=0.1, o=0.0, c=0.0,
    )  # fmt: skip
    capacity = CapacityEstimator(gamma=0.5)
    capacity.observe(Report(3, DeviceConfig(1), 0.4, 2e6, 15e6), profile)
    for r in (1, 2):
        state = {"a": torch.full((2, 3), float(r)), "b": torch.arange(4.0)}
        save_checkpoint(tmp_path, Checkpoint(r, state, VirtualClock(now=10.0 * r), capacity, 1.5))
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.clock.now == 20.0 and loaded.host_seconds == 1.5
    assert torch.equal(loaded.state["a"], torch.full((2, 3), 2.0))
    assert loaded.capacity.to_dict() == capacity.to_dict()
    assert [p.name for p in tmp_path.glob("state-*")] == ["state-000002.safetensors"]


@pytest.mark.integration
def test_a_run_killed_mid_round_resumes_to_the_same_metrics(tmp_path):
    whole = fedquad.run(load_config(None, [*RUN, f"output_dir={tmp_path / 'whole'}"]))
    out = tmp_path / "killed"
    sets = [x for item in [*RUN, f"output_dir={out}", "run_name='k'"] for x in ("--set", item)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedquad.cli", "run", "--quiet", *sets],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "k" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        # kill as soon as round 2 is recorded: the process is then inside round 3 (or between
        # the record and its checkpoint); either way the resumed run must end the same
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "k" / "checkpoint").round in (1, 2)
    assert main(["run", "--resume", str(out / "k"), "--quiet"]) == 0
    resumed = read_metrics(out / "k")
    assert [m["round"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole.metrics, resumed, strict=True):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["round"], key)
    # resuming a finished run changes nothing
    assert main(["run", "--resume", str(out / "k"), "--quiet"]) == 0
    assert [m["test_accuracy"] for m in read_metrics(out / "k")] == [
        m["test_accuracy"] for m in whole.metrics
    ]


def _check_after_kill(run: Path) -> tuple[int, int]:
    """What a kill may leave: whole result files, a loadable checkpoint, and at most the round in
    flight lost (its metrics line is written just before its checkpoint). Returns the rounds
    recorded and the checkpoint's round (0: none yet)."""
    if not (run / "config.toml").exists():
        return 0, 0
    tomllib.loads((run / "config.toml").read_text())
    for name in ("cost_profile.json", "summary.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    metrics = run / "metrics.jsonl"
    text = metrics.read_text() if metrics.exists() else ""
    assert text == "" or text.endswith("\n"), "a metrics line was cut short"
    rounds = [json.loads(line)["round"] for line in text.splitlines()]
    assert rounds == list(range(1, len(rounds) + 1))
    checkpoint = run / "checkpoint"
    done = load_checkpoint(checkpoint).round if has_checkpoint(checkpoint) else 0
    assert len(rounds) - 1 <= done <= len(rounds), (rounds, done)
    return len(rounds), done


def _killed_and_resumed(
    tmp_path: Path, config: list[str], kills: int, seed: int
) -> tuple[Path, list[tuple[int, int]]]:
    """Run ``config`` with the CLI, SIGKILL it ``kills`` times at seeded random moments (during
    start-up, mid-round, right after a round's record, where its checkpoint is written) and
    resume it after each kill; returns the finished run's directory and, after each kill, the
    rounds recorded and the checkpoint's round."""
    rng = random.Random(seed)
    states: list[tuple[int, int]] = []
    rounds = load_config(None, config).federation.rounds
    out, name = tmp_path / "killed", "k"
    run = out / name
    sets = [
        x for item in [*config, f"output_dir={out}", f"run_name='{name}'"] for x in ("--set", item)
    ]
    log = (tmp_path / "killed.log").open("ab")
    deadline = time.monotonic() + 600
    for kill in range(kills + 1):
        if (run / "fleet.toml").exists():  # resumable (with or without a checkpoint yet)
            argv = ["--resume", str(run)]
        else:  # killed before the run directory was complete: a user starts it again
            shutil.rmtree(run, ignore_errors=True)
            argv = sets
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedquad.cli", "run", "--quiet", *argv],
            stdout=log,
            stderr=log,
        )
        try:
            if kill == kills:
                assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
                break
            done = _check_after_kill(run)[1]
            # the moment: once a later round is recorded (or, one time in four, at once: during
            # start-up), then a random wait (none or a few ms: while that round's checkpoint is
            # written; up to 1.5 s: mid-round)
            early = rng.random() < 0.25 or done == rounds  # done: killed while finishing
            after = done if early else rng.randint(done + 1, rounds)
            wait = rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 1.5)])
            metrics = run / "metrics.jsonl"
            while proc.poll() is None and not (
                metrics.exists() and metrics.read_text().count("\n") >= after
            ):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(wait)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), (tmp_path / "killed.log").read_text()
        if proc.returncode:
            states.append(_check_after_kill(run))
    log.close()
    return run, states


def _assert_same_run(run: Path, whole: list[dict], rounds: int) -> None:
    resumed = read_metrics(run)
    assert [m["round"] for m in resumed] == list(range(1, rounds + 1))
    for a, b in zip(whole, resumed, strict=True):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["round"], key)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == rounds
    assert summary["final_accuracy"] == whole[-1]["test_accuracy"]
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(torch.isfinite(t).all() for t in adapter.values())


@pytest.mark.slow  # fast check of the same guarantee: test_a_run_killed_mid_round_resumes_…
@pytest.mark.integration
def test_killed_at_random_moments_and_resumed_each_time_it_ends_the_same(tmp_path):
    whole = fedquad.run(load_config(None, [*RUN, f"output_dir={tmp_path / 'whole'}"]))
    run, states = _killed_and_resumed(tmp_path, RUN, kills=3, seed=1)
    print("after each kill (rounds recorded, checkpoint round):", states)
    assert any(done > 0 for _, done in states)  # at least one resume from a checkpoint
    _assert_same_run(run, whole.metrics, 4)


@pytest.mark.integration
@pytest.mark.slow
def test_killed_many_times_over_a_longer_run_it_ends_the_same(tmp_path):
    config = [*RUN, "federation.rounds=8"]
    whole = fedquad.run(load_config(None, [*config, f"output_dir={tmp_path / 'whole'}"]))
    run, states = _killed_and_resumed(tmp_path, config, kills=10, seed=2)
    print("after each kill (rounds recorded, checkpoint round):", states)
    assert any(done > 0 for _, done in states)
    _assert_same_run(run, whole.metrics, 8)


def test_a_torn_last_metrics_line_is_ignored_and_resume_drops_it(tmp_path):
    """A line cut short by a kill (no newline after it) does not stop the run being read."""
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2, "samp')
    assert read_metrics(tmp_path) == [{"round": 1}]
    from fedquad.report.results import RunWriter

    writer = RunWriter(tmp_path)
    writer.keep_metrics(lambda r: r["round"] <= 1)
    writer.append_metrics({"round": 2})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 1}\n{"round": 2}\n'
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
    with pytest.raises(FedquadError, match="line 2 is not a JSON record"):
        read_metrics(tmp_path)


def test_resume_needs_a_run_with_a_checkpoint(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text("")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint") and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra", [["--config", "x.toml"], ["--set", "seed=1"]])
def test_resume_refuses_config_changes(tmp_path, capsys, extra):
    assert main(["run", "--resume", str(tmp_path), *extra]) == 2
    assert "--resume takes no --config" in capsys.readouterr().err
