"""The command line: bad input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedquad.cli import main

FAST = ["--quiet", "--set", "federation.rounds=1", "--set", "data.max_train_samples=100"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.name=no-such-model-xyz"], "no-such-model-xyz"),
        (["data.name=no-such-dataset-xyz"], "no-such-dataset-xyz"),
        (["lora.depth=9"], "lora.depth = 9"),
        (["federation.rounds=0"], "federation.rounds = 0"),
        (["train.batch_size=0"], "train.batch_size = 0"),
    ],
)
def test_bad_values(capsys, tmp_path, overrides, fragment):
    sets = [x for o in overrides for x in ("--set", o)]
    code, _, err = run_cli(capsys, "run", *FAST, "--set", f"output_dir={tmp_path}", *sets)
    assert_one_line_error(code, err, fragment)


def test_missing_columns(capsys, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("body,stars\n" + "".join(f"text {i},{i % 2}\n" for i in range(20)))
    code, _, err = run_cli(
        capsys, "run", *FAST, "--set", f"data.name={csv}", "--set", "data.text_column=review"
    )
    assert_one_line_error(code, err, "review")


def test_unreadable_config(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 2")
    code, _, err = run_cli(capsys, "run", "--config", str(bad))
    assert_one_line_error(code, err, "bad.toml")
    code, _, err = run_cli(capsys, "run", "--config", str(tmp_path / "absent.toml"))
    assert_one_line_error(code, err, "absent.toml")


def test_config_command_prints_resolved_toml(capsys):
    code, out, _ = run_cli(capsys, "config", "--set", "federation.rounds=7")
    assert code == 0
    assert "rounds = 7" in out


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedquad.cli", "run", "--set", "federation.rounds=-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: federation.rounds = -1 is not allowed: use a whole number >= 1"
    )


WORKLOAD = [
    *("--set", "data.max_train_samples=100"),
    *("--set", "data.partition=iid"),
    *("--set", "model.max_length=32"),
    *("--set", "train.batch_size=4"),
    *("--set", "profile.timed_steps=1"),
]
SMALL_WORKLOAD = [
    *WORKLOAD,
    *("--set", "federation.num_devices=8"),
    *("--set", "federation.devices_per_round=2"),
]


@pytest.mark.integration
def test_profile_command_measures_once_then_reads_the_cache(capsys):
    code, out, _ = run_cli(capsys, "profile", *SMALL_WORKLOAD)
    assert code == 0
    assert "M(L, 0)" in out and "per block" in out and "measured now" in out
    code, again, _ = run_cli(capsys, "profile", *SMALL_WORKLOAD)
    assert code == 0 and "from the cache" in again


@pytest.mark.integration
def test_fleet_show_gives_each_tier_its_largest_feasible_depth(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "fleet", "show", *SMALL_WORKLOAD)
    assert code == 0
    assert "8 devices, 2 per round" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert {"small", "medium", "large"} <= set(rows)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        'per_round = 1\n[[tier]]\nname = "tiny"\ncount = 8\nslowdown = 3.0\nmemory_mib = 1.0\n'
    )
    code, out, _ = run_cli(capsys, "fleet", "show", *WORKLOAD, "--fleet", str(fleet))
    assert code == 0
    tiny = next(line for line in out.splitlines() if "tiny" in line)
    assert tiny.count("none") == 2  # 1 MiB holds no depth, quantized or not


@pytest.mark.parametrize(
    ("fleet", "tiers"),
    [
        ("papers", ["small", "medium", "large"]),
        ("decorrelated", ["small-lowmem", "small-highmem", "large-highmem"]),
    ],
)
def test_fleet_show_prints_the_built_in_fleets(capsys, fleet, tiers):
    code, out, _ = run_cli(capsys, "fleet", "show", *WORKLOAD, "--fleet", fleet)
    assert code == 0 and "80 devices, 10 per round" in out
    rows = {line.split("│")[1].strip() for line in out.splitlines() if "│" in line}
    assert set(tiers) <= rows


def test_fleet_show_rejects_a_fleet_that_is_no_file(capsys):
    code, _, err = run_cli(capsys, "fleet", "show", "--fleet", "no-such-fleet")
    assert_one_line_error(code, err, "no-such-fleet")


@pytest.mark.integration
def test_a_sequence_longer_than_the_model_allows_is_refused(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "run", *FAST, "--set", "model.max_length=1000", "--set", f"output_dir={tmp_path}"
    )
    assert_one_line_error(code, err, "model.max_length = 1000")
    assert not any(tmp_path.iterdir())  # nothing written for a run that could not start
