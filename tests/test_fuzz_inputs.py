"""Malformed configs, fleet files and datasets: always one clean error line and exit code 2."""

from __future__ import annotations

import random

import pytest

from fedquad.cli import main

VALID_CONFIG = """method = "fedquad"
seed = 0
[model]
name = "minilm"
max_length = 32
[data]
name = "fine-foods"
partition = "iid"
[federation]
rounds = 1
num_devices = 4
devices_per_round = 2
[fleet]
name = "default"
kappa = 0.1
"""

VALID_FLEET = """per_round = 2
[[tier]]
name = "small"
count = 4
slowdown = 2.0
memory = 0.5
uplink_mbps = [1.0, 3.0]
"""


def mutations(text: str, seed: int, count: int) -> list[str]:
    """Random damage: cut, duplicate, delete or replace characters, swap values for junk."""
    rng = random.Random(seed)
    junk = ['"', "[", "]", "=", "-1", "0", "1e309", "nan", '"x"', "[[", "true", "\x00", "é", "{"]
    out = []
    for _ in range(count):
        s = text
        for _ in range(rng.randint(1, 3)):
            if not s:
                break
            i = rng.randrange(len(s))
            op = rng.randrange(4)
            if op == 0:
                s = s[:i]
            elif op == 1:
                s = s[:i] + rng.choice(junk) + s[i:]
            elif op == 2:
                s = s[:i] + s[i + rng.randint(1, 8) :]
            else:
                line_start = s.rfind("\n", 0, i) + 1
                eq = s.find("=", line_start)
                end = s.find("\n", line_start)
                if 0 <= eq < (end if end >= 0 else len(s)):
                    s = s[: eq + 1] + " " + rng.choice(junk) + s[end if end >= 0 else len(s) :]
        out.append(s)
    return out


def exits_cleanly(capsys, argv: list[str]) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    if code == 0:
        return  # the damage happened to leave a valid file
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("seed", range(4))
def test_damaged_configs_give_one_line_errors(tmp_path, capsys, seed):
    for i, text in enumerate(mutations(VALID_CONFIG, seed, 15)):
        path = tmp_path / f"c{i}.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        exits_cleanly(capsys, ["config", "--config", str(path)])


@pytest.mark.parametrize("seed", range(3))
def test_damaged_fleet_files_give_one_line_errors(tmp_path, capsys, seed):
    config = tmp_path / "c.toml"
    for i, text in enumerate(mutations(VALID_FLEET, seed, 12)):
        fleet = tmp_path / f"f{i}.toml"
        fleet.write_text(text)
        config.write_text(VALID_CONFIG.replace('name = "default"', f'name = "{fleet}"'))
        exits_cleanly(capsys, ["config", "--config", str(config)])
        from fedquad.config import load_config
        from fedquad.errors import FedquadError
        from fedquad.workbench import resolve_fleet

        try:
            resolve_fleet(load_config(config))
        except FedquadError as exc:
            assert "\n" not in str(exc)


CSV = "text,label\n" + "".join(
    f"review number {i} is {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(40)
)


@pytest.mark.parametrize("seed", range(3))
def test_damaged_csv_datasets_give_one_line_errors_or_load(tmp_path, capsys, seed):
    from fedquad.data import load_text_classification
    from fedquad.errors import FedquadError

    for i, text in enumerate(mutations(CSV, seed, 10)):
        path = tmp_path / f"d{i}.csv"
        path.write_text(text)
        try:
            load_text_classification(str(path), seed=0)
        except FedquadError as exc:
            assert "\n" not in str(exc), exc


def test_a_dataset_with_one_class_is_refused(tmp_path, capsys):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"text {i},1\n" for i in range(30)))
    code = main(["run", "--quiet", "--set", f"data.name={str(path)!r}"])
    err = capsys.readouterr().err
    assert code == 2 and "class" in err and len(err.strip().splitlines()) == 1
