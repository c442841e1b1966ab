"""What the command line prints: ``--format json`` (one object with ``"schema": 1``, nothing else on
stdout) carrying what the tables show, tables printed whole when piped, the progress bar's virtual
time and ETA, "did you mean" for misspelt names, offline hub lookups that fail at once, and bad
input reported before torch is imported."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import datasets
import huggingface_hub.constants
import pytest
from rich.console import Console
from test_cli import SMALL_WORKLOAD, assert_one_line_error, run_cli
from test_compare import run_metrics

from fedquad import hub
from fedquad.config import load_config
from fedquad.cost.fleet import MIB
from fedquad.cost.model import CostProfile, full_footprint
from fedquad.data import load_prompt_data, load_text_classification
from fedquad.errors import FedquadError
from fedquad.report import tables
from fedquad.report.output import JSON_SCHEMA, json_text, stdout_console
from fedquad.report.progress import RoundProgress
from fedquad.server.capacity import CapacityEstimator
from fedquad.server.configure import RoundPlan, RoundPlanner, settings_for
from fedquad.workbench import resolve_fleet

BLOCKS = 30
PROFILE = CostProfile(
    num_blocks=BLOCKS,
    frozen_weight_bytes=50_000,
    lora_params=(1024,) * BLOCKS,
    head_params=128,
    saved_bytes=(3000,) * BLOCKS,
    saved_bytes_bottom=(2500,) * BLOCKS,
    quant_ratio={8: 0.25},
    head_saved_bytes=500,
    f=0.01,
    g=0.02,
    o=0.005,
    c=0.1,
    lora_ranks=(8,) * BLOCKS,
)


def planned(method: str, fleet: str) -> tuple[RoundPlan, Any]:
    config = load_config(
        None,
        [
            f"method='{method}'",
            f"fleet.name='{fleet}'",
            "federation.num_devices=20",
            "federation.devices_per_round=10",
        ],
    )
    spec = resolve_fleet(config)
    planner = RoundPlanner(settings_for(config), spec, PROFILE, BLOCKS, [100] * spec.num_devices)
    return planner.plan(1, CapacityEstimator()), planner.ctx


def rendered(renderable: Any, width: int = 400) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(renderable)
    return out.getvalue()


def table_rows(text: str) -> dict[str, list[str]]:
    """The cells of each body row of a printed table, by its first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


# --------------------------------------------------------------------------- JSON and tables


def test_plan_json_carries_what_the_table_shows():
    plan, ctx = planned("fedquad", "default")
    data = tables.plan_data(plan, ctx, "fedquad", 1)
    text = rendered(tables.plan_table(plan, ctx, "fedquad", 1))
    rows = table_rows(text)
    assert [row["device"] for row in data["devices"]] == plan.sampled
    assert sorted(rows) == sorted(str(d) for d in plan.sampled)
    assert data["training"] == len(plan.plan.configs) > 0
    for row in data["devices"]:
        cells = rows[str(row["device"])]
        assert cells[1] == row["tier"] == plan.estimates[row["device"]].tier
        assert row["budget_bytes"] == plan.estimates[row["device"]].memory_budget_bytes
        if "sat_out" in row:
            assert cells[7] == "sits out: " + row["sat_out"]
            continue
        config = plan.plan.configs[row["device"]]
        assert row["config"] == config.as_dict()
        assert cells[2] == str(config.depth) and len(row["ranks"]) == config.depth
        assert cells[4] == ",".join(str(r) for r in row["ranks"])
        assert row["memory_bytes"] == ctx.cost(config).memory
        assert cells[5] == f"{row['memory_bytes'] / MIB:.1f}"
        assert cells[7] == f"{row['compute_seconds']:.1f}"
    assert f"round {data['round_seconds']:.1f} s" in text
    parsed = json.loads(json_text("plan", data))
    assert list(parsed)[:2] == ["schema", "command"]
    assert parsed["schema"] == JSON_SCHEMA == 1 and parsed["command"] == "plan"
    assert parsed["devices"] == data["devices"]


def test_fleet_json_carries_what_the_table_shows():
    spec = resolve_fleet(load_config(None, ["fleet.name='default-jetson'"]))
    args = (spec, PROFILE, 0.1, 8, BLOCKS, 8)
    data = tables.fleet_data(*args)
    rows = table_rows(rendered(tables.fleet_table(*args)))
    assert [t["name"] for t in data["tiers"]] == [t.name for t in spec.tiers] == list(rows)
    assert (data["devices"], data["per_round"]) == (spec.num_devices, spec.per_round)
    assert data["full_footprint_bytes"] == full_footprint(PROFILE, 8)
    for tier, row in zip(spec.tiers, data["tiers"], strict=True):
        cells = rows[tier.name]
        assert row["count"] == tier.count and cells[1] == str(tier.count)
        assert row["budget_bytes"] == tier.budget_bytes(data["full_footprint_bytes"])
        assert cells[4] == f"{row['budget_bytes'] / MIB:.1f}"
        assert tier.composition is not None
        assert row["composition"]["forward"] == tier.composition.forward
        shown = [
            "none" if d is None else str(d) for d in (row["max_depth"], row["max_depth_quantized"])
        ]
        assert cells[-2:] == shown


def test_profile_json_terms_are_the_tables_terms():
    terms = tables.profile_terms(PROFILE)
    _, table = tables.profile_tables(PROFILE, {b: 8 for b in range(BLOCKS)})
    rows = table_rows(rendered(table))
    assert rows["M(L, 0): full-depth footprint (MiB)"][1] == (
        f"{terms['full_footprint_bytes'] / MIB:.1f}"
    )
    assert sorted(terms["host_step_seconds"], key=int) == ["1", "15", "30"]
    for depth, seconds in terms["host_step_seconds"].items():
        assert rows[f"host step at depth {depth} (s)"][1] == f"{seconds:.3f}"


@pytest.mark.integration
def test_json_commands_print_one_object_on_stdout(capsys):
    outputs = {}
    for command in (["plan"], ["fleet", "show"], ["profile"]):
        code, out, err = run_cli(capsys, *command, *SMALL_WORKLOAD, "--format", "json")
        assert code == 0, err
        outputs[command[0]] = data = json.loads(out)  # the whole of stdout is one object
        assert data["schema"] == 1 and data["command"] == " ".join(command)
    plan = outputs["plan"]
    assert plan["sampled"] == len(plan["devices"]) == 2
    for row in plan["devices"]:
        assert ("config" in row) != ("sat_out" in row)
        if "config" in row:
            assert len(row["ranks"]) == row["config"]["depth"] <= 6
    fleet = outputs["fleet"]
    assert (fleet["devices"], fleet["per_round"]) == (8, 2)
    assert {"small", "medium", "large"} <= {t["name"] for t in fleet["tiers"]}
    profile = outputs["profile"]
    assert profile["profile"]["num_blocks"] == 6 and profile["measured_now"] is False
    assert profile["terms"]["full_footprint_bytes"] == fleet["full_footprint_bytes"]


def test_compare_json_is_its_comparison_json_and_directory(capsys, tmp_path, monkeypatch):
    import fedquad.compare

    def fake_compare(config, methods, **_kwargs):  # canned runs instead of training
        out, dirs = tmp_path / "comparison", {}
        for method, seconds in zip(methods, (10.0, 20.0), strict=True):
            dirs[method] = out / method
            dirs[method].mkdir(parents=True)
            lines = [json.dumps(r) + "\n" for r in run_metrics([0.6, 0.8], seconds)]
            (dirs[method] / "metrics.jsonl").write_text("".join(lines))
        return fedquad.compare.report(out, dirs, 0.75)

    monkeypatch.setattr(fedquad.compare, "compare", fake_compare)
    code, out, err = run_cli(capsys, "compare", "--methods", "fedquad,fedlora", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["schema"], data["command"]) == (1, "compare")
    assert data["dir"] == str(tmp_path / "comparison")
    on_disk = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    assert {k: v for k, v in data.items() if k not in ("schema", "command", "dir")} == on_disk
    assert [m["method"] for m in data["methods"]] == ["fedquad", "fedlora"]
    assert [m["time_to_target_seconds"] for m in data["methods"]] == [20.0, 40.0]


def test_a_piped_table_is_printed_whole(capsys):
    plan, ctx = planned("fedlora", "uniform")  # every device trains all 30 blocks
    data = tables.plan_data(plan, ctx, "fedlora", 1)
    table = tables.plan_table(plan, ctx, "fedlora", 1)
    stdout_console().print(table)  # stdout is captured: not a terminal
    text = capsys.readouterr().out
    rows = table_rows(text)
    assert len(rows) == len(data["devices"]) == 10
    for row in data["devices"]:
        assert rows[str(row["device"])][4] == ",".join(["8"] * BLOCKS)
    assert max(len(line) for line in text.splitlines()) > 80
    # what rich does on its own off a terminal: 80 columns, the ranks cut
    assert ",".join(["8"] * BLOCKS) not in rendered(table, width=80)


# --------------------------------------------------------------------------- progress


def test_progress_shows_the_virtual_time_and_an_eta(capsys):
    now = [100.0]
    bar = RoundProgress(5, clock=lambda: now[0])

    def shown() -> str:
        return rendered(bar.progress.make_tasks_table(bar.progress.tasks), width=200)

    assert "virtual 0 s" in shown() and "ETA -:--:--" in shown()
    now[0] += 20
    bar.update(
        {"round": 1, "test_accuracy": 0.7, "host_seconds": 20.0, "virtual_seconds_total": 1234.4}
    )
    line = shown()
    assert "1/5" in line and "virtual 1234 s" in line and "ETA 0:01:20" in line  # 4 left × 20 s
    now[0] += 40
    bar.update({"round": 2, "host_seconds": 40.0, "virtual_seconds_total": 2500.0})
    assert "ETA 0:01:30" in shown()  # 3 left × the mean 30 s
    err = capsys.readouterr().err
    assert "accuracy 0.7000" in err and "virtual 1234s" in err and "virtual 2500s" in err


def test_a_resumed_runs_eta_counts_only_the_rounds_run_now():
    now = [0.0]
    bar = RoundProgress(10, enabled=False, clock=lambda: now[0])
    bar.skip(6)
    now[0] += 15
    bar.update({"round": 7, "host_seconds": 15.0, "virtual_seconds_total": 700.0})
    line = rendered(bar.progress.make_tasks_table(bar.progress.tasks), width=200)
    assert "7/10" in line and "ETA 0:00:45" in line and "virtual 700 s" in line


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plan", "--set", "method='fedqaud'"], "(did you mean 'fedquad'?)"),
        (["compare", "--methods", "fedquad,fedlroa"], "(did you mean 'fedlora'?)"),
        (["fleet", "show", "--fleet", "defualt"], "fleet TOML file; did you mean 'default'?"),
        (["run", "--set", "data.name='fine-food.csv'"], "not found; did you mean 'fine-foods'?"),
    ],
)
def test_a_misspelt_name_gets_the_closest_one(capsys, argv, fragment):
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, fragment)


def test_an_unknown_dataset_offline_fails_with_the_closest_name(capsys, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 before the hub libraries are imported
    code, _, err = run_cli(
        capsys,
        "run",
        "--quiet",
        "--set",
        "data.name='fine-food'",
        "--set",
        f"output_dir={tmp_path}",
    )
    assert_one_line_error(
        code, err, "dataset 'fine-food' is not a built-in name (fine-foods, sst2)"
    )
    assert "HF_HUB_OFFLINE is set" in err and err.strip().endswith("did you mean 'fine-foods'?")
    with pytest.raises(FedquadError, match=r"did you mean 'sst2'\?$"):
        load_text_classification("sst-2")


def test_an_unreachable_hub_is_asked_through_its_caches_only(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    modes = []
    real = datasets.load_dataset

    def spy(name, *args, **kwargs):
        modes.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    with pytest.raises(FedquadError) as info:
        load_prompt_data("chatterbox")
    message = str(info.value)
    assert modes == [(True, True)]  # offline for the call: the caches, no retries
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == (
        False,
        False,
    )
    assert (
        "\n" not in message and "dataset 'chatterbox' is not a built-in prompt dataset" in message
    )
    assert "huggingface.co is unreachable" in message
    assert message.endswith("; did you mean 'chatterbot'?")


# --------------------------------------------------------------------------- before the imports

HEAVY = ("torch", "transformers", "datasets", "peft")
CHECK_IMPORTS = f"""
import json, sys
from fedquad.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]), flush=True)
"""
EARLY = [
    (["run", "--set", "federation.rounds=0"], "federation.rounds = 0"),
    (["run", "--set", "fleet.name='defualt'"], "did you mean 'default'?"),
    (["run", "--set", "data.name=missing.csv"], "data file 'missing.csv' not found"),
    (["run", "--resume", "no-such-run"], "'no-such-run' is not a run directory"),
    (["plan", "--round", "0"], "--round 0 is not allowed"),
    (["plan", "--set", "method='fedqaud'"], "did you mean 'fedquad'?"),
    (["compare", "--methods", "fedquad,fedlroa"], "did you mean 'fedlora'?"),
    (["compare", "--target", "1.5"], "target accuracy 1.5"),
    (["fleet", "show", "--fleet", "defualt"], "did you mean 'default'?"),
    (["profile", "--set", "lora.rank=0"], "lora.rank = 0"),
    (["profile", "--export", "t.json", "--repeats", "0"], "--repeats 0 is not allowed"),
]


def test_bad_input_is_reported_before_torch_is_imported(tmp_path):
    argvs = json.dumps([argv for argv, _ in EARLY])
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_IMPORTS, argvs], capture_output=True, text=True, cwd=tmp_path
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = proc.stderr.strip().splitlines()
    assert len(results) == len(errors) == len(EARLY), proc.stderr
    for (argv, fragment), (code, heavy), error in zip(EARLY, results, errors, strict=True):
        assert (code, heavy) == (2, []), argv
        assert error.startswith("error: ") and fragment in error, (argv, error)
