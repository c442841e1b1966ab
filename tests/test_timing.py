"""Pinned time terms (docs/methods.md §6): reference keys, lookup, export, runs that use them."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import fedquad
from fedquad.config import QuantConfig, TrainConfig, load_config
from fedquad.cost.profiler import TIMING_VERSION, ProfileSettings, StepTiming, profile_workload
from fedquad.cost.timing import (
    TIMING_DIR_ENV,
    TimingSource,
    check_load,
    find_reference,
    read_timing,
    resolve_timing,
    write_timing,
)
from fedquad.errors import FedquadError
from fedquad.report.results import read_metrics

TINY = [
    "data.max_train_samples=160",
    "data.max_test_samples=32",
    "model.max_length=16",
    "federation.rounds=2",
    "federation.num_devices=4",
    "federation.devices_per_round=2",
    "train.local_steps=2",
    "train.batch_size=4",
    "seed=0",
]
TIMING = StepTiming(f=0.004, g=0.006, o=0.002, c=0.01, timed=((1, 0, 0.04), (6, 0, 0.07)))
HOST_FIELDS = ("host_seconds", "host_seconds_total", "median_step_seconds")


def _fields(**changes):
    base = dict(
        model="minilm",
        task="sequence-classification",
        batch_size=16,
        max_length=64,
        ranks=[8] * 6,
        lora_alpha=16,
        timed_steps=4,
        profiled_bits=[8, 4, 2],
        torch="2.x",
        threads=7,
        processor="x86_64",
        cpus=64,
    )
    return {**base, **changes}


def _key(fields, task="classification", dataset="sst2", precision=None):
    from fedquad.workbench import timing_key

    train = SimpleNamespace() if precision is None else SimpleNamespace(precision=precision)
    config = SimpleNamespace(
        model=SimpleNamespace(task=task), data=SimpleNamespace(name=dataset), train=train
    )
    return timing_key(SimpleNamespace(config=config), fields)


def test_reference_keys_leave_out_the_host_and_timing_free_fields():
    key = _key(_fields())
    assert key == _key(_fields(threads=1, torch="9", cpus=2, ranks=[2] * 6, lora_alpha=4))
    assert key == _key(_fields(timed_steps=1, profiled_bits=[8]))
    assert key != _key(_fields(batch_size=8))
    assert key["precision"] == "fp32" and key["device"] == "cpu" and key["measure_threads"] == 1
    assert key["profile_version"] == TIMING_VERSION
    assert key != _key(_fields(), precision="bf16")
    assert "dataset" not in key  # a classifier's time does not depend on its data
    lm = _key(_fields(task="causal-lm"), task="causal-lm", dataset="alpaca")
    assert lm["dataset"] == "alpaca"
    assert lm != _key(_fields(task="causal-lm"), task="causal-lm", dataset="dolly")


def test_reference_lookup_by_key_and_the_fallback_warns(tmp_path, capsys):
    key = _key(_fields())
    assert resolve_timing("reference", key, tmp_path) is None
    assert "profile.timing" in capsys.readouterr().err
    write_timing(tmp_path / "a.json", TimingSource("reference", TIMING, key, {"load": 0.1}))
    write_timing(
        tmp_path / "b.json", TimingSource("reference", TIMING, _key(_fields(max_length=8)))
    )
    found = resolve_timing("reference", key, tmp_path)
    assert found is not None and found.timing == TIMING and found.origin.endswith("a.json")
    assert found.hash == TimingSource("x", TIMING, key).hash  # provenance is not hashed
    assert resolve_timing("measure", key, tmp_path) is None
    assert capsys.readouterr().err == ""


def test_a_timing_file_must_be_for_the_workload(tmp_path):
    key = _key(_fields())
    path = write_timing(tmp_path / "t.json", TimingSource("reference", TIMING, key))
    assert resolve_timing(str(path), key).timing == TIMING
    with pytest.raises(FedquadError, match="max_length is 64, this run's is 32"):
        resolve_timing(str(path), _key(_fields(max_length=32)))
    with pytest.raises(FedquadError, match="does not exist"):
        resolve_timing(str(tmp_path / "none.json"), key)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(FedquadError, match="is not a timing file"):
        read_timing(tmp_path / "bad.json")


def test_export_refuses_a_busy_machine_unless_forced():
    with pytest.raises(FedquadError, match="idle machine"):
        check_load(0.9, force=False)
    check_load(0.9, force=True)
    check_load(1.2, force=False, own=1.0)  # the measurement's own thread
    with pytest.raises(FedquadError, match="profile.timing = ' ' is not allowed"):
        load_config(None, ["profile.timing=' '"])


def test_saved_bytes_do_not_depend_on_the_thread_count(minilm_lora):
    """The bytes part of a profile is counted by the trainer's hooks: exact on any host."""
    from helpers import make_batch

    model, parts, structure = minilm_lora
    train, batch = TrainConfig(local_steps=1, batch_size=4), make_batch(4, 16)
    threads = torch.get_num_threads()
    profiles = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            profiles.append(
                profile_workload(
                    model, parts, structure, batch, train, QuantConfig(), ProfileSettings(), TIMING
                )
            )
    finally:
        torch.set_num_threads(threads)
    assert profiles[0] == profiles[1]
    assert profiles[0].saved_bytes[0] > 0 and profiles[0].f == TIMING.f


def test_export_writes_a_timing_file_a_run_then_uses(tmp_path):
    from fedquad.workbench import build_workbench, export_timing, timing_key, workload_profile

    config = load_config(None, [*TINY, "fleet.name='uniform'", f"output_dir='{tmp_path}'"])
    bench = build_workbench(config)
    path = tmp_path / "ref" / "tiny.json"
    source = export_timing(config, path, force=True, repeats=1)
    stored = json.loads(path.read_text())
    assert stored["key"] == timing_key(bench)
    assert {"load_before", "load_after", "cpu", "torch", "threads"} <= set(stored["provenance"])
    assert {d for d, _, _ in source.timing.timed} == {1, 3, 6}
    assert find_reference(timing_key(bench), path.parent).timing == source.timing
    result = workload_profile(dataclasses.replace(bench, config=_with_timing(config, str(path))))
    assert (result.profile.f, result.profile.g, result.profile.c) == (
        source.timing.f,
        source.timing.g,
        source.timing.c,
    )
    assert result.timing.kind == "file" and result.timing.hash == source.hash


def test_a_fit_over_one_depth_is_not_exported(tmp_path, monkeypatch):
    import fedquad.workbench

    one_depth = StepTiming(0.0, 0.0, 0.001, 0.05, ((1, 0, 0.05), (1, 1, 0.051)))
    monkeypatch.setattr(fedquad.workbench, "measure_reference", lambda *_: one_depth)
    bench = SimpleNamespace(
        config=SimpleNamespace(train=None, quant=None),
        model=None,
        parts=None,
        structure=SimpleNamespace(depth=1),
        device_data=[{"labels": [0]}],
    )
    monkeypatch.setattr(fedquad.workbench, "build_workbench", lambda _: bench)
    with pytest.raises(FedquadError, match="lora.depth = 1 times one depth only"):
        fedquad.workbench.export_timing(bench.config, tmp_path / "t.json", force=True)
    assert not (tmp_path / "t.json").exists()


def _with_timing(config, option):
    return dataclasses.replace(config, profile=dataclasses.replace(config.profile, timing=option))


def _busy_cpus():
    """One busy loop per core, until killed."""
    loop = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]


def _metrics_without_host_fields(run_dir):
    out = []
    for record in read_metrics(run_dir):
        record = {k: v for k, v in record.items() if k not in HOST_FIELDS}
        record["devices"] = [
            {k: v for k, v in d.items() if k not in HOST_FIELDS} for d in record["devices"]
        ]
        out.append(json.dumps(record, sort_keys=True))
    return out


def test_the_same_run_under_load_gives_the_same_metrics(tmp_path, monkeypatch):
    """docs/methods.md §6: with pinned time terms the clock, the plans and the bytes — and on
    this host the accuracy and loss too — do not move when the CPU is busy."""
    from fedquad.workbench import build_workbench, timing_key

    config = load_config(None, [*TINY, f"output_dir='{tmp_path}'"])
    reference = tmp_path / "timing"
    key = timing_key(build_workbench(config))
    write_timing(reference / "tiny.json", TimingSource("reference", TIMING, key))
    monkeypatch.setenv(TIMING_DIR_ENV, str(reference))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        idle = fedquad.run(dataclasses.replace(config, run_name="idle"))
        busy = _busy_cpus()
        try:
            loaded = fedquad.run(dataclasses.replace(config, run_name="busy"))
        finally:
            for process in busy:
                process.kill()
                process.wait()
    finally:
        torch.set_num_threads(threads)
    lines = _metrics_without_host_fields(idle.run_dir)
    assert len(lines) == 2 and lines == _metrics_without_host_fields(loaded.run_dir)
    # the run kept the timing it used, and says so
    copied = read_timing(idle.run_dir / "timing.json")
    assert copied.timing == TIMING and copied.key == key
    recorded = idle.summary["provenance"]["timing"]
    assert recorded["source"] == "reference" and recorded["hash"] == copied.hash
    assert idle.summary["provenance"]["device"] == "cpu"  # train.device = "auto", resolved


def test_resume_uses_the_runs_own_timing_copy(tmp_path):
    import shutil

    from fedquad.api import TIMING_FILE, resume

    config = load_config(None, [*TINY, f"output_dir='{tmp_path}'", "profile.timing='measure'"])
    first = fedquad.run(config)
    copy = read_timing(first.run_dir / TIMING_FILE)
    assert json.loads((first.run_dir / TIMING_FILE).read_text())["source"] == "measure"
    assert copy.key["measure_threads"] == torch.get_num_threads()
    slower = dataclasses.replace(copy, timing=dataclasses.replace(copy.timing, c=copy.timing.c + 1))
    write_timing(first.run_dir / TIMING_FILE, slower)
    shutil.rmtree(first.run_dir / "checkpoint")  # as if killed before its first checkpoint
    again = resume(first.run_dir)
    assert again.summary["virtual_seconds"] > first.summary["virtual_seconds"]
    assert again.summary["provenance"]["timing"] == {
        "source": "recorded",
        "file": str(first.run_dir / TIMING_FILE),
        "hash": slower.hash,
    }


def test_provenance_names_code_libraries_host_and_timing(tmp_path):
    from fedquad.report.provenance import git_commit, provenance

    timing = {"source": "reference", "file": "x.json", "hash": "abc"}
    record = provenance(threads=1, precision="bf16", timing=timing)
    for name in ("fedquad", "torch", "transformers", "peft", "flwr", "cpu", "git_commit"):
        assert name in record, name
    assert record["torch"] == torch.__version__ and record["transformers"]
    assert (record["threads"], record["device"], record["precision"]) == (1, "cpu", "bf16")
    assert record["timing"] == timing
    commit = git_commit()  # the tests run from a checkout
    assert commit is not None and len(commit) == 40
    assert git_commit(tmp_path) is None


def test_profile_export_command_refuses_a_loaded_machine_and_writes_with_force(
    tmp_path, monkeypatch, capsys
):
    import fedquad.workbench
    from fedquad.cli import main

    monkeypatch.setattr(fedquad.workbench, "load_average", lambda: 4.0)
    sets = [x for o in [*TINY, "fleet.name='uniform'"] for x in ("--set", o)]
    path = tmp_path / "t.json"
    assert main(["profile", "--export", str(path), *sets]) == 2
    assert "load average 4.00 is above 0.30" in capsys.readouterr().err and not path.exists()
    assert main(["profile", "--export", str(path), "--force", "--repeats", "1", *sets]) == 0
    stored = read_timing(path)
    assert stored.provenance["forced"] and stored.provenance["load_before"] == 4.0
    assert str(path) in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("quickstart", []),
        ("quickstart", ["train.precision='bf16'"]),
        pytest.param("smollm2-foods", [], marks=pytest.mark.slow),
    ],
)
def test_every_preset_finds_its_shipped_reference_timing(preset, overrides):
    from fedquad.cost.timing import find_reference
    from fedquad.workbench import build_workbench, timing_key

    small = ["data.max_train_samples=200", "data.max_test_samples=8"]
    bench = build_workbench(load_config(preset, [*overrides, *small]))
    found = find_reference(timing_key(bench))
    assert found is not None and found.kind == "reference", f"{preset} {overrides}"


def test_the_reference_test_covers_every_preset():
    from fedquad.config import PRESETS_DIR

    shipped = {p.stem for p in PRESETS_DIR.glob("*.toml")}
    assert shipped == {"quickstart", "smollm2-foods"}, "add the new preset to the test above"
