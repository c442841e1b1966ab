"""`fedquad compare --seeds … --targets … --out` and `fedquad report`: the command-line parsing,
the report from hand-made runs (and its byte-identical rebuild), the refusals to resume a
changed comparison, and one tiny comparison end to end, resumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedquad.cli import main
from fedquad.config import load_config
from fedquad.errors import FedquadError
from fedquad.report.claims import primary_target
from fedquad.report.seeded import (
    PLAN_FILE,
    read_runs,
    report_data,
    stored_seed_commits,
    write_report,
)
from fedquad.report.seeded_tables import shown_rounds
from fedquad.seeded_compare import (
    Entry,
    Plan,
    begun_seed_commits,
    check_resumable,
    load_plan,
    parse_seeds,
    parse_targets,
    plan_json,
    run_config_data,
)

# --------------------------------------------------------------------------- parsing


def test_seeds_and_targets_parse():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3, 7") == [3, 7]
    assert parse_targets("0.78,0.80,0.82") == [0.78, 0.80, 0.82]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0,x"], "--seeds '0,x': 'x' is not a seed"),
        (["--seeds", "0,-1"], "is not a seed"),
        (["--seeds", "1,1"], "repeats a seed"),
        (["--seeds", ""], "is not a seed"),
        (["--targets", "0.8,1.5"], "--targets '0.8,1.5': '1.5' is not a target accuracy"),
        (["--targets", "0,0.8"], "'0' is not a target accuracy"),
        (["--targets", "abc"], "'abc' is not a target accuracy"),
        (["--targets", "0.8,0.8"], "repeats a target"),
        (["--targets", "0.8", "--target", "0.8"], "--target and --targets together"),
    ],
)
def test_seed_and_target_errors_are_one_line(capsys, tmp_path, args, message):
    code = main(["compare", *args, "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()  # nothing started


def test_a_config_with_a_compare_table_is_a_comparison_over_seeds(capsys, tmp_path):
    path = _write(tmp_path / "arm.toml", "[compare]\nseeds = [0]\n")
    code = main(["compare", "--config", str(path)])
    assert code == 2 and "give --targets" in capsys.readouterr().err


def test_seeds_without_targets_ask_for_them(capsys, tmp_path):
    code = main(["compare", "--seeds", "0,1", "--out", str(tmp_path / "c")])
    assert code == 2 and "give --targets" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_entries_from_the_compare_table(tmp_path):
    path = _write(
        tmp_path / "arm.toml",
        """
        federation.rounds = 3
        [compare]
        seeds = [0, 2]
        targets = [0.7]
        [[compare.entry]]
        method = "fedquad"
        [[compare.entry]]
        label = "fedlora-rank4"
        method = "fedlora"
        set = ["lora.rank=4"]
        """,
    )
    plan = load_plan(path, ["federation.rounds=2"])
    assert plan.seeds == [0, 2] and plan.targets == [0.7]
    assert plan.entries == [
        Entry("fedquad", "fedquad"),
        Entry("fedlora-rank4", "fedlora", ("lora.rank=4",)),
    ]
    data = run_config_data(plan, plan.entries[1], 2, tmp_path / "out")
    config = load_config(None, [f"{k}={v!r}" for k, v in data.items() if not isinstance(v, dict)])
    assert config.seed == 2 and config.method == "fedlora"
    assert data["lora"]["rank"] == 4 and data["federation"]["rounds"] == 2
    assert data["output_dir"] == str(tmp_path / "out" / "fedlora-rank4")
    # the command line's seeds replace the file's
    assert load_plan(path, [], seeds=[5]).seeds == [5]


def test_budgets_from_the_compare_table_reach_the_plan_file(tmp_path):
    path = _write(tmp_path / "arm.toml", "[compare]\ntargets = [0.8]\nbudgets = [10, 20.5]\n")
    plan = load_plan(path, [])
    assert plan.budgets == [10.0, 20.5]
    assert plan_json(plan, "abc")["budgets"] == [10.0, 20.5]
    assert load_plan(_write(tmp_path / "b.toml", "[compare]\ntargets = [0.8]\n"), []).budgets == []


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ("[0, 10]", "compare.budgets = \\[0, 10\\] is not allowed"),
        ('["10"]', "use a list of virtual seconds > 0"),
        ("10", "use a list of virtual seconds > 0"),
        ("[10, 10]", "repeats a budget"),
    ],
)
def test_bad_budgets_are_refused(tmp_path, budgets, message):
    path = _write(tmp_path / "arm.toml", f"[compare]\ntargets = [0.8]\nbudgets = {budgets}\n")
    with pytest.raises(FedquadError, match=message):
        load_plan(path, [])


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ('[[compare.entry]]\nmethod = "nope"', "method 'nope'"),
        ('[[compare.entry]]\nmethod = "fedlora"\nlabel = "a/b"', "label 'a/b'"),
        ('[[compare.entry]]\nmethod = "fedlora"\nrank = 4', "unknown key 'rank'"),
        ('[[compare.entry]]\nmethod = "fedlora"\nset = "lora.rank=4"', "list of 'key=value'"),
        ('[[compare.entry]]\nmethod = "fedlora"\n[[compare.entry]]\nmethod = "fedlora"', "twice"),
    ],
)
def test_bad_entries_are_refused(tmp_path, entries, message):
    path = _write(tmp_path / "arm.toml", "[compare]\ntargets = [0.8]\n" + entries + "\n")
    with pytest.raises(FedquadError, match=message):
        load_plan(path, [])


# --------------------------------------------------------------------------- the report


def _record(r: int, accuracy: float, seconds: float, sat_out: int = 0) -> dict[str, Any]:
    return {
        "round": r,
        "sat_out": {str(i): "memory" for i in range(sat_out)},
        "devices": [
            {
                "tier": "small",
                "depth": 1,
                "quantized": 0,
                "memory_bytes": 1 << 20,
                "memory_budget_bytes": 2 << 20,
            }
        ],
        "bytes_up": 1000,
        "bytes_down": 1000,
        "test_accuracy": accuracy,
        "virtual_seconds_total": seconds * r,
        "host_seconds_total": 1.0 * r,
    }


def _fake_comparison(
    out: Path,
    curves: dict[str, dict[int, tuple[list[float], float]]],
    methods: dict[str, str] | None = None,
) -> None:
    """``curves``: label -> seed -> (accuracy per round, seconds per round); the method is
    ``methods[label]`` where given, else the label's part before any ``-``."""
    methods = methods or {}
    plan = Plan(
        [Entry(label, methods.get(label, label.split("-")[0])) for label in curves],
        sorted(next(iter(curves.values()))),
        [0.7, 0.9],
    )
    out.mkdir()
    (out / PLAN_FILE).write_text(json.dumps(plan_json(plan, "abc"), indent=2))
    for label, by_seed in curves.items():
        for seed, (accuracies, seconds) in by_seed.items():
            run = out / label / f"seed-{seed}"
            run.mkdir(parents=True)
            lines = [
                json.dumps(_record(r, a, seconds, sat_out=r % 2))
                for r, a in enumerate(accuracies, 1)
            ]
            (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


CURVES = {
    "fedquad": {0: ([0.6, 0.7, 0.8, 0.9], 1.0), 1: ([0.6, 0.7, 0.8, 0.8], 1.0)},
    "fedlora": {0: ([0.6, 0.7, 0.8, 0.9], 2.0), 1: ([0.5, 0.5, 0.5, 0.5], 2.0)},
    "fedlora-slow": {0: ([0.6, 0.7, 0.8, 0.9], 4.0), 1: ([0.6, 0.7, 0.7, 0.7], 4.0)},
}


def test_report_numbers_and_not_reached(tmp_path):
    _fake_comparison(tmp_path / "c", CURVES)
    data = report_data(read_runs(tmp_path / "c"))
    assert data["schema"] == 1 and data["baselines"] == ["fedlora", "fedlora-slow"]
    low = data["per_target"][0]  # 0.7: trailing means cross at round 3 except fedlora seed 1
    assert low["best_baseline"] == "fedlora-slow"  # reached in both seeds beats one
    fedquad = low["labels"][0]
    assert fedquad["time_to_target_seconds"]["per_seed"] == [3.0, 3.0]
    over = {s["over"]: s for s in fedquad["speedups"]}
    assert over["fedlora"]["per_seed"] == [2.0, None]
    assert (over["fedlora"]["both"], over["fedlora"]["only_this"]) == (1, 1)
    assert over["fedlora"]["geometric_mean"] == pytest.approx(2.0)
    assert over["fedlora"]["interval_95"] is None  # one paired seed: no interval
    # fedlora-slow's seed 1 crosses at round 4 (0.7, 0.7, 0.7), 16 s against 3 s
    assert over["fedlora-slow"]["per_seed"] == [4.0, pytest.approx(16 / 3)]
    assert over["fedlora-slow"]["geometric_mean"] == pytest.approx((4.0 * 16 / 3) ** 0.5)
    assert over["fedlora-slow"]["seeds"] == 2
    assert over["best baseline (fedlora-slow)"] == {
        **over["fedlora-slow"],
        "over": "best baseline (fedlora-slow)",
    }
    assert fedquad["bytes_to_target"]["per_seed"] == [6000.0, 6000.0]
    high = data["per_target"][1]  # 0.9: nobody's trailing mean of 0.8, 0.9 reaches it in time
    assert all(item["time_to_target_seconds"]["reached"] == 0 for item in high["labels"])
    assert high["best_baseline"] is None
    runs = {r["label"]: r for r in data["runs"]}
    assert runs["fedquad"]["final_accuracy"] == [0.9, 0.8]
    assert runs["fedquad"]["device_rounds_sat_out"] == [2, 2]


def test_the_report_splits_a_time_to_target_into_rounds_and_seconds_per_round(tmp_path):
    _fake_comparison(tmp_path / "c", CURVES)
    data = write_report(tmp_path / "c")
    low = {item["label"]: item for item in data["per_target"][0]["labels"]}  # 0.7
    fedquad, fedlora = low["fedquad"]["pace_to_target"], low["fedlora"]["pace_to_target"]
    assert fedquad["per_seed_rounds"] == [3.0, 3.0]
    assert fedquad["per_seed_seconds_per_round"] == [1.0, 1.0]
    assert (fedlora["reached"], fedlora["mean_rounds"], fedlora["mean_seconds_per_round"]) == (
        1,
        3.0,
        2.0,
    )
    assert fedlora["per_seed_rounds"] == [3.0, None]
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| fedlora | 1 of 2 | 3.0 | 2.0 | 3 (2.0) | not reached |" in md
    assert "| fedquad | 2 of 2 | 3.0 | 1.0 | 3 (1.0) | 3 (1.0) |" in md


def test_the_report_sums_up_each_entry_at_the_primary_target(tmp_path):
    assert primary_target([0.82, 0.78, 0.80]) == 0.80
    assert primary_target([0.7, 0.9]) == 0.7
    curves = {**CURVES, "fedlora-slow": {0: CURVES["fedlora-slow"][0], 1: ([0.5] * 4, 4.0)}}
    _fake_comparison(tmp_path / "c", curves)
    write_report(tmp_path / "c")
    md = (tmp_path / "c" / "comparison.md").read_text()
    glance = md[md.index("## Each entry at 0.70") : md.index("## Target 0.7000")]
    assert "| peak MiB, small (2) |" in glance
    # 3 rounds of 1 s in both seeds, 6 kB each; 4 trained and 2 sat out per seed
    assert "| fedquad | 3 | 3.0 × 1.0 | 0.0 | 0.850 | 8 / 4 | 1 |" in glance
    assert "| fedlora | 6 (1 of 2) | 3.0 × 2.0 | 0.0 (1 of 2) | 0.700 | 8 / 4 | 1 |" in glance
    assert "| fedlora-slow | 12 (1 of 2) | 3.0 × 4.0 |" in glance


def test_the_report_pairs_the_entries_under_test_with_each_other(tmp_path):
    _fake_comparison(tmp_path / "one", CURVES)
    write_report(tmp_path / "one")
    assert "between the entries under test" not in (tmp_path / "one" / "comparison.md").read_text()
    # legend crosses 0.7 at round 3 in seed 0 at 0.5 s a round, and never in seed 1
    legend = {0: ([0.6, 0.7, 0.8, 0.9], 0.5), 1: ([0.5] * 4, 0.5)}
    _fake_comparison(tmp_path / "two", {**CURVES, "legend": legend})
    data = write_report(tmp_path / "two")
    low = {item["label"]: item for item in data["per_target"][0]["labels"]}  # 0.7
    assert "speedups_between_entries" not in low["fedlora"]  # baselines: over baselines only
    (fedquad_over,) = low["fedquad"]["speedups_between_entries"]
    (legend_over,) = low["legend"]["speedups_between_entries"]
    assert (fedquad_over["over"], legend_over["over"]) == ("legend", "fedquad")
    assert fedquad_over["per_seed"] == [0.5, None] and legend_over["per_seed"] == [2.0, None]
    assert (legend_over["both"], legend_over["only_other"]) == (1, 1)
    assert [s["over"] for s in low["legend"]["speedups"]] == [
        "fedlora",
        "fedlora-slow",
        "best baseline (fedlora-slow)",
    ]
    md = (tmp_path / "two" / "comparison.md").read_text()
    section = md[md.index("### Speed-up between the entries under test") :]
    assert "| legend | fedquad | 2.00× | — | 1 | 1 / 0 / 1 / 0 | 2.00× | not reached |" in section


def test_the_report_follows_each_claim_as_seeds_were_added(tmp_path):
    _fake_comparison(tmp_path / "two", CURVES)
    assert write_report(tmp_path / "two")["claims_by_seed_count"] is None  # 2 seeds: no stages
    # fedquad is 2x fedlora in seeds 0-2 and 0.5x in seed 3: met at 3 seeds, undecided at 4
    curve = [0.6, 0.7, 0.8, 0.9]
    fedlora = {s: (curve, 2.0) for s in range(3)} | {3: (curve, 0.5)}
    four = {"fedquad": {s: (curve, 1.0) for s in range(4)}, "fedlora": fedlora}
    _fake_comparison(tmp_path / "four", four)
    found = write_report(tmp_path / "four")["claims_by_seed_count"]
    assert found["target_accuracy"] == 0.7 and found["seed_counts"] == [3, 4]
    (row,) = [r for r in found["rows"] if r["claim"] == "FedQuad over fedlora"]
    three, all_four = row["by_seed_count"]["3"], row["by_seed_count"]["4"]
    assert (three["value"], three["interval_95"], three["verdict"]) == (2.0, [2.0, 2.0], "met")
    assert all_four["value"] == pytest.approx(4**0.25) and all_four["verdict"] == "undecided"
    md = (tmp_path / "four" / "comparison.md").read_text()
    section = md[md.index("## Claims at 0.70 as seeds were added") :]
    assert "| claim | clock | 3 seeds | 4 seeds |" in section
    assert "| FedQuad over fedlora | host | 2.00× (2.00–2.00) met | 1.41× (" in section


def test_a_claim_without_threshold_shows_its_figure_and_no_verdict(tmp_path):
    curve = [0.6, 0.7, 0.8, 0.9]
    curves = {
        "fedquad": {s: (curve, 1.0) for s in range(4)},
        "fedlora": {s: (curve, 2.0) for s in range(4)},
        "noquant": {s: (curve, 1.5) for s in range(4)},
    }
    _fake_comparison(tmp_path / "c", curves, {"noquant": "fedquad-noquant"})
    write_report(tmp_path / "c")
    md = (tmp_path / "c" / "comparison.md").read_text()
    claim = "| FedQuad over noquant (what quantization buys) |"
    rows = [line for line in md.splitlines() if line.startswith(claim)]
    assert f"{claim} 0.7000 | 1.50× (1.50–1.50), 4 of 4 seeds | — | — | — |" in rows
    assert f"{claim} host | 1.50× (1.50–1.50) | 1.50× (1.50–1.50) |" in rows


def test_the_report_counts_each_tiers_depths_and_quantized_blocks(tmp_path):
    _fake_comparison(tmp_path / "c", CURVES)
    run = tmp_path / "c" / "fedquad" / "seed-1"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records[:3]:  # three rounds with one more device, at depth 3, 2 quantized
        record["devices"].append({**record["devices"][0], "depth": 3, "quantized": 2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = write_report(tmp_path / "c")
    runs = {r["label"]: r for r in data["runs"]}
    assert runs["fedquad"]["configs_per_tier"] == {"small": {"d1 q0": 8, "d3 q2": 3}}
    assert runs["fedquad"]["device_rounds_quantized"] == [0, 3]
    assert runs["fedlora"]["configs_per_tier"] == {"small": {"d1 q0": 8}}
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| fedquad | 4 / 7 | 2 / 2 | 0 / 3 | 0 / 0 | 0 / 0 |" in md
    assert "| fedquad | d1 q0: 8, d3 q2: 3 |" in md


def test_the_report_shows_how_far_each_label_gets_per_round(tmp_path):
    curves = {**CURVES, "fedlora": {0: CURVES["fedlora"][0], 1: ([0.5, 0.5, 0.5], 2.0)}}
    _fake_comparison(tmp_path / "c", curves)
    run = tmp_path / "c" / "fedquad" / "seed-0"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records[1]["test_accuracy"] = None  # not evaluated in round 2: round 1's value holds
    records[0]["devices"].append({**records[0]["devices"][0], "depth": 5})
    records[0]["bytes_up"] = 5000
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = write_report(tmp_path / "c")
    runs = {r["label"]: r for r in data["runs"]}
    fedquad = runs["fedquad"]
    assert [a["mean"] for a in fedquad["accuracy_by_round"]] == pytest.approx(
        [0.6, 0.65, 0.8, 0.85]
    )
    assert fedquad["trained_depth_mean"] == pytest.approx(13 / 9)  # eight at depth 1, one at 5
    assert fedquad["bytes_up_per_round_mean"] == pytest.approx((5000 + 7 * 1000) / 8)
    # a seed whose run ended early counts in the rounds it has
    assert runs["fedlora"]["accuracy_by_round"][3] == {"mean": 0.9, "seeds": 1}
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| label | depth per device-round | MB up per round | round 1 | round 2 |" in md
    assert "| fedlora | 1.00 | 0.00 | 0.5500 | 0.6000 | 0.6500 | 0.9000 (1) |" in md


def test_a_long_run_shows_ten_evenly_spaced_rounds_ending_at_the_last():
    assert shown_rounds(4) == [1, 2, 3, 4]
    assert shown_rounds(20) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert shown_rounds(15) == [2, 3, 5, 6, 8, 9, 11, 12, 14, 15]


def test_report_rebuilds_byte_identically(tmp_path, capsys):
    _fake_comparison(tmp_path / "c", CURVES)
    write_report(tmp_path / "c")
    first = {n: (tmp_path / "c" / n).read_bytes() for n in ("comparison.md", "comparison.json")}
    (tmp_path / "c" / "comparison.md").unlink()
    (tmp_path / "c" / "accuracy_board.png").write_bytes(b"from runs since replaced")
    assert main(["report", str(tmp_path / "c")]) == 0
    for name, content in first.items():
        assert (tmp_path / "c" / name).read_bytes() == content
    md = first["comparison.md"].decode()
    assert "| fedquad | fedlora | 2.00× |" in md and "not reached" in md
    assert "| 1 / 1 / 0 / 0 |" in md.replace(" | 2.00× | not reached |", " |")
    assert (tmp_path / "c" / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert "Code: seeds 0, 1 at commit abc (each seed's runs at one commit)." in md
    # these runs keep no cost profiles, so no board clock: an old board plot would mislead
    assert not (tmp_path / "c" / "accuracy_board.png").exists()
    assert "accuracy.png rebuilt" in capsys.readouterr().out


def test_a_report_names_each_seeds_commit(tmp_path):
    _fake_comparison(tmp_path / "c", CURVES)
    plan = json.loads((tmp_path / "c" / PLAN_FILE).read_text())
    plan["seed_commits"] = {"0": "0123456789abcdef", "1": None}
    (tmp_path / "c" / PLAN_FILE).write_text(json.dumps(plan))
    data = write_report(tmp_path / "c")
    assert data["seed_commits"] == {"0": "0123456789abcdef", "1": None}
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "Code: seed 0 at commit 0123456789ab; seed 1 at no recorded commit" in md


def _record_host(run: Path, cpu: str, isa: list[str] | None = None) -> None:
    provenance: dict[str, Any] = {"cpu": cpu}
    if isa is not None:
        provenance["cpu_isa"] = isa
    (run / "summary.json").write_text(json.dumps({"provenance": provenance}))


def test_a_report_names_each_seeds_host_and_a_seed_that_spans_hosts(tmp_path):
    out = tmp_path / "c"
    _fake_comparison(out, CURVES)
    write_report(out)
    # runs that recorded no host: nothing to say
    assert "Hosts:" not in (out / "comparison.md").read_text()
    for label in CURVES:
        _record_host(out / label / "seed-0", "AMD EPYC")
        _record_host(out / label / "seed-1", "Intel Xeon", ["avx2", "amx_bf16"])
    data = write_report(out)
    assert data["seed_hosts"] == {"0": ["AMD EPYC"], "1": ["Intel Xeon (avx2, amx_bf16)"]}
    md = (out / "comparison.md").read_text()
    assert "Hosts: seed 0 on AMD EPYC; seed 1 on Intel Xeon (avx2, amx_bf16). " in md
    assert "span hosts" not in md
    _record_host(out / "fedlora" / "seed-0", "Intel Xeon", [])
    data = write_report(out)
    assert data["seed_hosts"]["0"] == ["AMD EPYC", "Intel Xeon (no listed ISA)"]
    md = (out / "comparison.md").read_text()
    assert "seed 0 on AMD EPYC and Intel Xeon (no listed ISA) (**its runs span hosts**)" in md


def test_report_of_an_unfinished_or_foreign_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a comparison directory" in capsys.readouterr().err
    _fake_comparison(tmp_path / "c", CURVES)
    (tmp_path / "c" / "fedlora" / "seed-1" / "metrics.jsonl").unlink()
    assert main(["report", str(tmp_path / "c")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------- refusing to resume


def _started_run(out: Path, plan: Plan, entry: Entry, seed: int, extra: list[str]) -> Path:
    data = run_config_data(plan, entry, seed, out)
    run = out / entry.label / f"seed-{seed}"
    run.mkdir(parents=True)
    overrides = [f"method={data['method']!r}", f"seed={seed}", *extra]
    (run / "config.toml").write_text(load_config(None, overrides).to_toml())
    (run / "cost_profile.json").write_text("{}")
    (run / "fleet.toml").write_text("")
    return run


def test_resume_refuses_a_changed_config_or_commit(tmp_path):
    plan = Plan([Entry("fedlora", "fedlora")], [0], [0.8])
    out = tmp_path / "c"
    _started_run(out, plan, plan.entries[0], 0, [])
    (out / PLAN_FILE).write_text(json.dumps(plan_json(plan, "abc")))
    assert check_resumable(out, plan, "abc") == {("fedlora", 0): "started"}
    with pytest.raises(FedquadError, match="seed 0 was started at commit abc and this is def"):
        check_resumable(out, plan, "def")
    changed = Plan(plan.entries, [0], [0.8], {"federation": {"rounds": 7}})
    with pytest.raises(
        FedquadError, match=r"ran with another config \(federation.rounds differs\)"
    ):
        check_resumable(out, changed, "abc")
    # a finished comparison is kept at any commit: nothing of it would run
    (out / "fedlora" / "seed-0" / "summary.json").write_text("{}")
    assert check_resumable(out, plan, "def") == {("fedlora", 0): "finished"}


def test_a_comparison_grows_by_seeds_at_a_later_commit(tmp_path):
    plan = Plan([Entry("fedlora", "fedlora"), Entry("legend", "legend")], [0], [0.8])
    out = tmp_path / "c"
    for entry in plan.entries:
        (_started_run(out, plan, entry, 0, []) / "summary.json").write_text("{}")
    old = plan_json(plan, "abc")
    del old["seed_commits"]  # as a plan written before seeds had their own commits
    (out / PLAN_FILE).write_text(json.dumps(old))
    assert stored_seed_commits(old) == {0: "abc"}
    grown = Plan(plan.entries, [0, 1, 2], [0.8])
    # seed 0 is done at abc; seeds 1 and 2 have not begun, so they may run at def
    states = check_resumable(out, grown, "def")
    assert states[("legend", 0)] == "finished" and states[("legend", 1)] == "new"
    written = plan_json(grown, "def", begun_seed_commits(out, states))
    assert written["seed_commits"] == {"0": "abc", "1": "def", "2": "def"}
    (out / PLAN_FILE).write_text(json.dumps(written))
    # once seed 1 has begun at def, it must end there: its runs are the pairs
    _started_run(out, grown, plan.entries[0], 1, [])
    assert check_resumable(out, grown, "def")[("fedlora", 1)] == "started"
    with pytest.raises(FedquadError, match="seed 1 was started at commit def and this is ghi"):
        check_resumable(out, grown, "ghi")
    # a seed half done at abc may not be finished by another commit either
    half = Plan([*plan.entries, Entry("fedra", "fedra")], [0], [0.8])
    with pytest.raises(FedquadError, match="seed 0 was started at commit abc"):
        check_resumable(out, half, "def")


def test_compare_command_refuses_a_changed_config(tmp_path, capsys):
    plan = Plan([Entry("fedlora", "fedlora")], [0], [0.8])
    out = tmp_path / "c"
    _started_run(out, plan, plan.entries[0], 0, ["lora.rank=4"])
    code = main(
        [
            "compare",
            "--methods",
            "fedlora",
            "--seeds",
            "0",
            "--targets",
            "0.8",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "ran with another config (lora.rank differs)" in err and err.count("\n") == 1
    )


# --------------------------------------------------------------------------- end to end

TINY = [
    "data.max_train_samples=160",
    "data.max_test_samples=32",
    "model.max_length=32",
    "federation.rounds=2",
    "federation.num_devices=4",
    "federation.devices_per_round=2",
    "federation.eval_every=1",
    "train.local_steps=1",
    "train.batch_size=8",
    "lora.depth=1",
    "profile.timed_steps=1",
]


@pytest.mark.integration
def test_tiny_comparison_end_to_end_and_resumed(tmp_path, capsys):
    config = _write(
        tmp_path / "arm.toml",
        '[[compare.entry]]\nmethod = "fedlora"\n'
        '[[compare.entry]]\nlabel = "fedlora-rank4"\nmethod = "fedlora"\nset = ["lora.rank=4"]\n',
    )
    out = tmp_path / "c"
    args = [
        "compare",
        "--config",
        str(config),
        "--seeds",
        "0,1",
        "--targets",
        "0.3,0.99",
        "--out",
        str(out),
        "--quiet",
        *(x for o in TINY for x in ("--set", o)),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert f"comparison in {out}" in capsys.readouterr().out
    runs = [out / label / f"seed-{s}" for label in ("fedlora", "fedlora-rank4") for s in (0, 1)]
    for run in runs:
        assert (run / "summary.json").is_file() and (run / "checkpoint").is_dir()
    assert "rank = 4" in (runs[2] / "config.toml").read_text()
    report = {n: (out / n).read_bytes() for n in ("comparison.md", "comparison.json")}
    data = json.loads(report["comparison.json"])
    assert [e["label"] for e in data["entries"]] == ["fedlora", "fedlora-rank4"]
    assert data["per_target"][1]["labels"][0]["time_to_target_seconds"]["reached"] == 0
    assert data["board_clock"]["available"]  # the runs keep what re-timing needs
    assert (out / "accuracy_board.png").read_bytes().startswith(b"\x89PNG")
    stamps = {run: (run / "summary.json").stat().st_mtime_ns for run in runs}
    # seed by seed, so that a comparison stopped early still holds paired seeds
    assert sorted(runs, key=stamps.__getitem__) == [runs[0], runs[2], runs[1], runs[3]]

    (runs[1] / "summary.json").unlink()
    assert main(args) == 0
    assert (runs[1] / "summary.json").is_file()
    for run in runs:
        rerun = (run / "summary.json").stat().st_mtime_ns != stamps[run]
        assert rerun == (run == runs[1]), run
    # the resumed run's metrics are those it had: the report does not change
    for name, content in report.items():
        assert (out / name).read_bytes() == content
