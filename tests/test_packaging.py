"""Packaging: the wheel carries the presets and package data; exact pins live only in
constraints.txt; optional parts fail with a one-line error naming their extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from fedquad.config import PRESETS_DIR, config_path, load_config, preset_names
from fedquad.errors import FedquadError
from fedquad.extras import check_extras, require

ROOT = Path(__file__).parents[1]


def test_the_wheel_carries_the_presets_and_package_data(tmp_path):
    # built from a copy, so the checkout gets no build/ or egg-info
    project = tmp_path / "project"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fedquad-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    presets = sorted(n for n in names if n.startswith("fedquad/presets/"))
    assert presets == [f"fedquad/presets/{p}.toml" for p in preset_names()]
    assert {"fedquad/presets/quickstart.toml", "fedquad/py.typed"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("LICENSE") for n in names)


def test_a_preset_name_resolves_to_the_packaged_file():
    assert config_path("quickstart") == PRESETS_DIR / "quickstart.toml"
    assert load_config("quickstart").method == "fedquad"
    assert load_config("smollm2-foods").model.name == "smollm2-135m"
    with pytest.raises(
        FedquadError, match=r"built-in presets: .*quickstart.*did you mean 'quickstart'"
    ):
        load_config("quickstrat")


def test_exact_pins_only_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    assert not [r for r in requirements if "==" in r]
    assert "torch>=2.4" in project["dependencies"]
    assert not [r for r in project["dependencies"] if r.startswith(("ray", "tensorboard"))]
    assert not [r for r in project["dependencies"] if "[simulation]" in r]
    flwr = next(r for r in project["dependencies"] if r.startswith("flwr>"))
    assert flwr == "flwr>=1.41,<1.42"  # the deployment engine imports Flower internals
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    assert "'.[dev,all]'" in (ROOT / "Makefile").read_text()


def test_a_missing_extra_is_named_in_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("ray", "tensorboard") else real(name, *a),
    )
    with pytest.raises(
        FedquadError, match=r"^engine = 'flower-sim' needs ray, .*fedquad\[flower\]"
    ):
        check_extras(load_config(None, ["engine='flower-sim'"]))
    with pytest.raises(
        FedquadError, match=r"^tensorboard = true needs tensorboard, .*fedquad\[tensorboard\]"
    ):
        check_extras(load_config(None, ["tensorboard=true"]))
    check_extras(load_config(None, []))  # the local engine needs neither
    with pytest.raises(FedquadError, match="pip install 'fedquad\\[flower\\]'"):
        require("ray", "x")


def test_version_is_the_package_version(capsys):
    import fedquad
    from fedquad.cli import main

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert fedquad.__version__ == project["version"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fedquad {project['version']}\n"
