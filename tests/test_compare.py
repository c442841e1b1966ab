"""`fedquad compare`: time to target, speed-ups and the table from hand-made metrics; the plots;
one small comparison end to end through the command line."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from fedquad.cli import main
from fedquad.compare import parse_methods
from fedquad.errors import FedquadError
from fedquad.report.compare import (
    NOT_REACHED,
    Reached,
    Target,
    best_baseline,
    choose_target,
    comparison_json,
    comparison_rows,
    default_target,
    markdown_table,
    ordered_tiers,
    peak_memory_per_tier,
    speedup,
    table_cells,
    tier_choices,
    time_to_target,
)
from fedquad.report.plots import write_comparison_plots, write_run_plots
from helpers import TINY_HETEROGENEOUS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIB = 1 << 20
BUDGETS = {"small": 100 * MIB, "medium": 300 * MIB, "large": 500 * MIB}


def device(tier: str, depth: int, quantized: int = 0, memory_mib: float = 50) -> dict[str, Any]:
    return {
        "tier": tier,
        "depth": depth,
        "quantized": quantized,
        "memory_bytes": int(memory_mib * MIB),
        "memory_budget_bytes": BUDGETS[tier],
    }


def run_metrics(
    accuracies: list[float | None],
    round_seconds: float,
    bytes_per_round: int = 1000,
    devices: list[dict[str, Any]] | None = None,
    sat_out: int = 0,
) -> list[dict[str, Any]]:
    """Rounds of equal virtual length; ``None`` marks a round without evaluation."""
    devices = devices or [device("small", 1), device("large", 4, memory_mib=200)]
    out = []
    for i, acc in enumerate(accuracies, start=1):
        record: dict[str, Any] = {
            "round": i,
            "virtual_seconds_total": i * round_seconds,
            "host_seconds_total": i * 2.0,
            "bytes_up": bytes_per_round // 4,
            "bytes_down": bytes_per_round - bytes_per_round // 4,
            "devices": devices,
            "sat_out": {str(100 + k): "no feasible configuration" for k in range(sat_out)},
        }
        if acc is not None:
            record["test_accuracy"] = acc
        out.append(record)
    return out


# --------------------------------------------------------------------------- pure computations


def test_time_to_target_is_exact_at_the_crossing_round():
    metrics = run_metrics([0.5, 0.7, 0.8, 0.79], round_seconds=10.0, bytes_per_round=1000)
    assert time_to_target(metrics, 0.7) == Reached(
        round=2, virtual_seconds=20.0, host_seconds=4.0, bytes=2000
    )
    assert time_to_target(metrics, 0.75).round == 3
    assert time_to_target(metrics, 0.5).virtual_seconds == 10.0


def test_time_to_target_skips_rounds_without_evaluation_and_reports_not_reached():
    metrics = run_metrics([0.5, None, 0.9], round_seconds=5.0)
    reached = time_to_target(metrics, 0.8)
    assert reached is not None and reached.round == 3 and reached.bytes == 3000
    assert time_to_target(metrics, 0.95) is None


def test_speedup_is_baseline_time_over_method_time():
    assert speedup(100.0, 250.0) == pytest.approx(2.5)
    assert speedup(250.0, 100.0) == pytest.approx(0.4)
    assert speedup(None, 100.0) is None
    assert speedup(100.0, None) is None


def test_default_target_is_95_percent_of_the_best_final_accuracy():
    assert default_target([0.8, None, 0.9]) == pytest.approx(0.855)
    assert default_target([None]) is None
    # the final accuracy counts, not the best over the rounds
    runs = {"fedquad": run_metrics([0.95, 0.8], 1.0), "fedlora": run_metrics([0.7, 0.85], 1.0)}
    target = choose_target(runs, None)
    assert target is not None
    assert target.accuracy == pytest.approx(0.95 * 0.85)
    assert "fedlora" in target.source
    assert choose_target(runs, 0.6, "--target") == Target(0.6, "--target")


def test_rows_speedups_over_each_baseline_and_the_best_one():
    runs = {
        "fedquad": run_metrics([0.6, 0.8, 0.9], round_seconds=10.0),  # 0.8 at 20 s
        "fedlora": run_metrics([0.5, 0.7, 0.8, 0.9], round_seconds=20.0),  # 0.8 at 60 s
        "fedra": run_metrics([0.5, 0.8, 0.9], round_seconds=20.0),  # 0.8 at 40 s
        "hetlora": run_metrics([0.5, 0.6, 0.7], round_seconds=1.0),  # never
    }
    rows = {r.method: r for r in comparison_rows(runs, Target(0.8, "given"))}
    fq = rows["fedquad"]
    assert list(fq.speedups) == ["fedlora", "fedra", "hetlora"]
    assert fq.speedups["fedlora"] == pytest.approx(3.0)
    assert fq.speedups["fedra"] == pytest.approx(2.0)
    assert fq.speedups["hetlora"] is None
    assert best_baseline({m: r.reached for m, r in rows.items()}) == "fedra"
    assert fq.speedup_over_best_baseline == pytest.approx(2.0)
    assert rows["fedlora"].speedups["fedlora"] == pytest.approx(1.0)
    het = rows["hetlora"]
    assert het.reached is None
    assert het.speedup_over_best_baseline is None
    assert all(v is None for v in het.speedups.values())


def test_table_says_not_reached_and_never_a_number():
    runs = {
        "legend": run_metrics([0.6, 0.7], round_seconds=10.0),
        "fedlora": run_metrics([0.6, 0.9], round_seconds=10.0),
    }
    target = choose_target(runs, None)
    rows = comparison_rows(runs, target)
    header, body = table_cells(rows)
    legend = dict(zip(header, body[0], strict=True))
    assert legend["time to target (s)"] == NOT_REACHED
    assert legend["MB to target"] == NOT_REACHED
    assert legend["vs fedlora"] == "—"
    assert legend["vs best baseline"] == "—"
    fedlora = dict(zip(header, body[1], strict=True))
    assert fedlora["time to target (s)"] == "20.0"
    assert fedlora["vs fedlora"] == "1.00×"
    md = markdown_table(rows, target)
    assert "| legend | not reached |" in md and "Best baseline: fedlora" in md
    data = comparison_json(rows, target)
    first = data["methods"][0]
    assert first["method"] == "legend" and first["reached"] is False
    assert first["time_to_target_seconds"] is None and first["bytes_to_target"] is None
    assert data["best_baseline"] == "fedlora"
    json.dumps(data)  # serializable


def test_peak_memory_per_tier_sat_out_and_tier_order():
    devices = [
        device("large", 4, memory_mib=400),
        device("small", 1, quantized=1, memory_mib=60),
        device("small", 2, quantized=2, memory_mib=80),
    ]
    metrics = run_metrics([0.5, 0.6], 1.0, devices=devices, sat_out=3)
    assert peak_memory_per_tier(metrics) == {"large": 400 * MIB, "small": 80 * MIB}
    assert ordered_tiers([{"large": 5, "small": 1}, {"medium": 3}]) == ["small", "medium", "large"]
    (row,) = comparison_rows({"fedquad": metrics}, Target(0.55, "given"))
    assert row.device_rounds_sat_out == 6 and row.device_rounds == 6
    header, body = table_cells([row])
    assert header[-4:-2] == ["peak MiB small", "peak MiB large"]
    assert body[0][-4:] == ["80.0", "400.0", "6 / 12", "4.0"]
    choices = tier_choices(metrics)
    assert [(c.round, c.mean_depth, c.mean_quantized) for c in choices["small"]] == [
        (1, 1.5, 1.5),
        (2, 1.5, 1.5),
    ]


def test_unknown_method_is_a_one_line_error_before_anything_runs(capsys, tmp_path):
    assert parse_methods(" fedquad, fedlora,fedquad ") == ["fedquad", "fedlora"]
    with pytest.raises(FedquadError, match="'fedlora2'"):
        parse_methods("fedquad,fedlora2")
    out = tmp_path / "out"
    code = main(["compare", "--methods", "fedquad,nope", "--set", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: unknown method 'nope' in --methods: use some of "
        "fedquad, legend, joint, fedlora, hetlora, flexlora, fedra, fedquad-noquant"
    ]
    assert not out.exists()
    code = main(["compare", "--methods", "fedquad", "--target", "1.5"])
    assert code == 2 and "1.5" in capsys.readouterr().err


# --------------------------------------------------------------------------- plots


def _is_png(path) -> bool:
    return path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_are_written_as_png(tmp_path):
    devices = [device("small", 1, 1), device("medium", 3, 2, 150), device("large", 6, 0, 420)]
    runs = {
        "fedquad": run_metrics([0.6, None, 0.8], 10.0, devices=devices),
        "fedlora": run_metrics([0.5, 0.7, 0.75], 20.0, devices=devices[1:], sat_out=1),
        "legend": run_metrics([0.55, 0.65, 0.7], 15.0),
    }
    paths = write_comparison_plots(runs, 0.72, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["accuracy.png", "bytes.png", "memory.png", "tier_choices.png"]
    assert all(_is_png(p) for p in paths)
    (single,) = write_run_plots(tmp_path, runs["fedquad"], "fedquad")
    assert single.name == "accuracy.png" and _is_png(single)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


# --------------------------------------------------------------------------- end to end

TINY = [*TINY_HETEROGENEOUS, "federation.num_devices=8", "federation.devices_per_round=4"]


@pytest.mark.integration
def test_compare_command_end_to_end(capsys, tmp_path):
    sets = [x for o in [*TINY, f"output_dir={tmp_path}"] for x in ("--set", o)]
    code = main(["compare", "--methods", "fedquad,fedlora", "--quiet", *sets])
    out, err = capsys.readouterr()
    assert code == 0, err
    (comparison,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert f"comparison in {comparison}" in out
    for method in ("fedquad", "fedlora"):
        run_dir = comparison / method
        assert (run_dir / "metrics.jsonl").exists() and (run_dir / "summary.json").exists()
        assert _is_png(run_dir / "accuracy.png")
        assert method in out
    md = (comparison / "comparison.md").read_text()
    assert "| fedquad |" in md and "| fedlora |" in md
    data = json.loads((comparison / "comparison.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["fedquad", "fedlora"]
    assert data["baselines"] == ["fedlora"]
    finals = [m["final_accuracy"] for m in data["methods"]]
    assert data["target_accuracy"] == pytest.approx(0.95 * max(finals))
    # the best method reaches 95% of its own final accuracy by its last round
    assert any(m["reached"] for m in data["methods"])
    for name in ("accuracy.png", "bytes.png", "tier_choices.png", "memory.png"):
        assert _is_png(comparison / name)
    # what produced it, and one clock for both methods
    runs = data["provenance"]["runs"]
    assert set(runs) == {"fedquad", "fedlora"} and runs["fedquad"]["torch"] == torch.__version__
    assert runs["fedquad"]["timing"]["hash"] == runs["fedlora"]["timing"]["hash"]
    assert data["provenance"]["report"]["fedquad"] == runs["fedquad"]["fedquad"]
