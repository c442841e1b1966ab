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
