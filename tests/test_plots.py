"""Plots a reader understands alone: coinciding curves told apart, tier lines broken where a tier
did not train and sat-out tiers marked, titles naming dataset, model, fleet and seeds, the
majority-class line. The series are checked as data, the figures by their artists after
rendering with Agg (no pixel comparisons)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from fedquad.config import ExperimentConfig
from fedquad.cost.fleet import FleetSpec, Tier, fleet_to_toml
from fedquad.report import plots
from fedquad.report.plot_series import (
    curves_coincide,
    device_tiers,
    identical_groups,
    tier_series,
)
from fedquad.report.run_info import (
    RunInfo,
    describe,
    label_shares,
    majority_line,
    read_run_info,
    seeds_text,
)
from fedquad.report.seeded import PLAN_FILE, PLAN_SCHEMA, read_runs, write_report

MIB = 1 << 20
BUDGETS = {"small": 100 * MIB, "medium": 300 * MIB, "large": 500 * MIB}
FLEET = (("small", 2), ("medium", 2), ("large", 1))
"""Device ids 0-1 small, 2-3 medium, 4 large."""
SHARES = {"positive": 0.6, "negative": 0.4}


def device(i: int, tier: str, depth: int, quantized: int = 0) -> dict[str, Any]:
    return {
        "device": i,
        "tier": tier,
        "depth": depth,
        "quantized": quantized,
        "memory_bytes": 50 * MIB,
        "memory_budget_bytes": BUDGETS[tier],
    }


def record(
    r: int, seconds: float, accuracy: float | None, devices: list[dict[str, Any]], sat_out=()
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "round": r,
        "virtual_seconds_total": r * seconds,
        "host_seconds_total": r * 2.0,
        "bytes_up": 250 * len(devices),
        "bytes_down": 750 * len(devices),
        "devices": devices,
        "sat_out": {str(i): "no feasible configuration" for i in sat_out},
    }
    if accuracy is not None:
        out["test_accuracy"] = accuracy
    return out


def tiered_run(seconds: float = 10.0, accuracies=(0.55, 0.62, 0.7)) -> list[dict[str, Any]]:
    """Round 1 every tier trains; round 2 small sits out and large is not sampled; round 3
    medium is not sampled."""
    first = [device(0, "small", 1), device(2, "medium", 3, 1), device(4, "large", 6)]
    second = [device(2, "medium", 3, 1), device(3, "medium", 5, 1)]
    third = [device(1, "small", 2), device(4, "large", 6)]
    return [
        record(1, seconds, accuracies[0], first),
        record(2, seconds, accuracies[1], second, sat_out=[0]),
        record(3, seconds, accuracies[2], third),
    ]


INFO = RunInfo(
    dataset="fine-foods",
    model="minilm",
    fleet="default",
    devices=5,
    per_round=3,
    seed=0,
    tiers=FLEET,
    label_shares=SHARES,
)


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def lines_by_label(fig: Figure, axes: int = 0) -> dict[str, Any]:
    return {line.get_label(): line for line in fig.axes[axes].get_lines()}


# --------------------------------------------------------------------------- the series


def test_identical_groups_are_found_within_a_tiny_tolerance():
    curves = {
        "fedquad": ([1.0, 2.0], [0.5, 0.7]),
        "fedlora": ([1.0, 2.0], [0.5, 0.6]),
        "hetlora": ([1.0, 2.0], [0.5, 0.6 + 1e-12]),
        "flexlora": ([1.0, 2.0], [0.5, 0.6 + 1e-6]),  # close, but visibly another run
        "fedra": ([1.0, 2.0, 3.0], [0.5, 0.6, 0.6]),  # one evaluation more
        "legend": ([1.0, 2.0], [0.5, 0.7]),
    }
    assert identical_groups(curves) == [["fedquad", "legend"], ["fedlora", "hetlora"]]
    # the same accuracies at other virtual times are another curve
    assert identical_groups({"a": ([1.0, 2.0], [0.5, 0.6]), "b": ([1.5, 2.0], [0.5, 0.6])}) == []
    assert curves_coincide(([math.nan, 1.0],), ([math.nan, 1.0],))
    assert not curves_coincide(([math.nan],), ([0.0],))


def test_tier_series_break_where_a_tier_did_not_train_and_mark_sat_out_rounds():
    metrics = tiered_run()
    tier_of = device_tiers(metrics, FLEET)
    assert tier_of == {0: "small", 1: "small", 2: "medium", 3: "medium", 4: "large"}
    series = tier_series(metrics, ["small", "medium", "large"], tier_of)
    small, medium, large = series["small"], series["medium"], series["large"]
    assert small.rounds == (1, 2, 3)
    assert small.mean_depth[0] == 1 and math.isnan(small.mean_depth[1])
    assert small.mean_depth[2] == 2
    assert small.sat_out_rounds == (2,)
    assert medium.mean_depth[:2] == (3, 4) and math.isnan(medium.mean_depth[2])
    assert medium.mean_quantized[:2] == (1, 1) and math.isnan(medium.mean_quantized[2])
    assert medium.sat_out_rounds == ()
    assert math.isnan(large.mean_depth[1]) and large.sat_out_rounds == ()
    # without the fleet, a device's tier comes from its own records; unknown ones are left out
    from_records = device_tiers(metrics)
    assert from_records == tier_of
    metrics[1]["sat_out"] = {"9": "no feasible configuration"}
    assert tier_series(metrics, ["small"], from_records)["small"].sat_out_rounds == ()


# --------------------------------------------------------------------------- titles and majority


def test_title_names_dataset_model_fleet_and_seeds():
    assert describe([INFO]) == (
        "dataset fine-foods · model minilm · fleet default (5 devices, 3 per round) · seed 0"
    )
    other = RunInfo(dataset="sst2", model="minilm", fleet="default", seed=1)
    assert describe([INFO, other], seeds=[0, 1, 2, 3, 4]) == (
        "dataset fine-foods / sst2 · model minilm · fleet default (5 devices, 3 per round) · "
        "seeds 0–4"
    )
    assert seeds_text([4, 0, 2]) == "seeds 0, 2, 4"
    assert seeds_text([0, 1, 2, 5]) == "seeds 0–2, 5"
    assert describe([RunInfo()]) == ""


def test_majority_line_from_the_test_label_shares():
    assert label_shares(["neg", "pos", "pos", "pos"]) == {"pos": 0.75, "neg": 0.25}
    assert list(label_shares(["b", "a"])) == ["a", "b"]  # ties by name
    same = majority_line([INFO, INFO])
    assert same is not None and same.accuracy == pytest.approx(0.6)
    assert same.label == "majority class 0.600 (always 'positive')"
    other = RunInfo(label_shares={"positive": 0.64, "negative": 0.36})
    mixed = majority_line([INFO, other])
    assert mixed is not None and mixed.accuracy == pytest.approx(0.62)
    assert "0.600–0.640 over runs" in mixed.label
    assert majority_line([RunInfo()]) is None


def test_run_info_is_read_from_a_run_directory(tmp_path):
    config = ExperimentConfig(seed=3)
    (tmp_path / "config.toml").write_text(config.to_toml())
    fleet = FleetSpec(
        tiers=(Tier("small", 3, 2.0, memory=0.5), Tier("large", 1, 1.0, memory=1.0)), per_round=2
    )
    (tmp_path / "fleet.toml").write_text(fleet_to_toml(fleet))
    (tmp_path / "summary.json").write_text(json.dumps({"test_label_shares": SHARES}))
    info = read_run_info(tmp_path)
    assert (info.dataset, info.model, info.fleet) == (
        config.data.name,
        config.model.name,
        config.fleet.name,
    )
    assert (info.seed, info.devices, info.per_round) == (3, 4, 2)
    assert info.tiers == (("small", 3), ("large", 1))
    assert info.label_shares == SHARES
    (tmp_path / "summary.json").write_text("{not json")
    assert read_run_info(tmp_path).label_shares is None
    assert read_run_info(tmp_path / "missing") == RunInfo()


def test_held_out_labels_name_classes_and_recast_answers():
    import torch

    from fedquad.train.generate import PromptTestSet
    from fedquad.workbench import held_out_labels

    classes = {"labels": torch.tensor([1, 0, 1])}
    assert held_out_labels(classes, ["negative", "positive"]) == [
        "positive",
        "negative",
        "positive",
    ]
    prompts = PromptTestSet({}, None, ["q1", "q2"], ["Yes.", "no"], answers=["Yes.", "no"])
    assert held_out_labels(prompts, []) == ["yes", "no"]
    assert held_out_labels(PromptTestSet({}, None, ["q"], ["free text"]), []) is None


# --------------------------------------------------------------------------- the figures


def test_identical_curves_are_drawn_distinct_with_a_note(tmp_path):
    runs = {"fedquad": tiered_run(5.0, (0.6, 0.7, 0.8)), "fedlora": tiered_run()}
    runs["hetlora"] = copy.deepcopy(runs["fedlora"])
    info = {m: INFO for m in runs}
    fig = plots.figure_accuracy(runs, 0.72, info)
    plots.save(fig, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    lines = lines_by_label(fig)
    fedlora, hetlora = lines["fedlora"], lines["hetlora"]
    assert list(fedlora.get_ydata()) == list(hetlora.get_ydata())  # they do coincide
    assert fedlora.get_linestyle() != hetlora.get_linestyle()
    assert fedlora.get_marker() != hetlora.get_marker()
    assert lines["fedquad"].get_linestyle() == "-"
    texts = legend_texts(fig.axes[0].get_legend())
    assert "fedlora = hetlora: identical curves" in texts
    assert not any(t.startswith("fedquad =") for t in texts)
    majority = lines["majority class 0.600 (always 'positive')"]
    assert list(majority.get_ydata()) == [0.6, 0.6]
    title = fig.axes[0].get_title()
    for part in ("dataset fine-foods", "model minilm", "fleet default (5 devices", "seed 0"):
        assert part in title
    bytes_fig = plots.figure_bytes(runs, info)
    plots.save(bytes_fig, tmp_path / "bytes.png")
    b = lines_by_label(bytes_fig)
    assert b["fedlora"].get_linestyle() != b["hetlora"].get_linestyle()
    # fedquad's rounds are shorter but move as many bytes: another curve
    assert "fedlora = hetlora: identical curves" in legend_texts(bytes_fig.axes[0].get_legend())
    assert "seed 0" in bytes_fig.axes[0].get_title()


def test_tier_plot_has_gaps_and_sat_out_marks(tmp_path):
    runs = {"fedquad": tiered_run(), "fedlora": tiered_run()}
    fig = plots.figure_tier_choices(runs, {m: INFO for m in runs})
    plots.save(fig, tmp_path / "tier_choices.png")
    lines = fig.axes[0].get_lines()
    small_depth = lines[0]  # tiers smallest budget first, depth before q
    assert list(small_depth.get_xdata()) == [1, 2, 3]
    assert math.isnan(small_depth.get_ydata()[1])
    (sat_out,) = [line for line in lines if line.get_marker() == plots.SAT_OUT_MARKER]
    assert list(sat_out.get_xdata()) == [2] and list(sat_out.get_ydata()) == [0]
    assert sat_out.get_color() == small_depth.get_color()
    texts = legend_texts(fig.legends[0])
    assert "sat out (at 0)" in texts
    assert "gap: the tier did not train that round" in texts
    title = fig.get_suptitle()
    assert "dataset fine-foods" in title and "fleet default" in title and "seed 0" in title
    memory = plots.figure_memory(runs, {m: INFO for m in runs})
    assert "model minilm" in memory.axes[0].get_title()


def test_run_plot_title_and_majority_line(tmp_path):
    fig = plots.figure_run(tiered_run(), "fedlora", INFO)
    plots.save(fig, tmp_path / "accuracy.png")
    assert fig.get_suptitle().startswith("fedlora: test accuracy\ndataset fine-foods")
    for axes in (0, 1):
        assert any(label.startswith("majority class") for label in lines_by_label(fig, axes))
    # without a run directory's info, no line and a plain title
    bare = plots.figure_run(tiered_run(), "fedlora")
    assert bare.get_suptitle() == "fedlora: test accuracy"
    assert not any(label.startswith("majority") for label in lines_by_label(bare))


# --------------------------------------------------------------------------- over seeds


def _seeded_comparison(out: Path) -> None:
    """fedlora and hetlora run alike seed by seed; fedquad faster; every run with its files."""
    seeds, labels = [0, 1], ["fedquad", "fedlora", "hetlora"]
    out.mkdir()
    plan = {
        "schema": PLAN_SCHEMA,
        "commit": "abc",
        "seeds": seeds,
        "targets": [0.65],
        "entries": [{"label": m, "method": m, "set": []} for m in labels],
    }
    (out / PLAN_FILE).write_text(json.dumps(plan))
    fleet = FleetSpec(tiers=tuple(Tier(name, n, 1.0, memory=1.0) for name, n in FLEET), per_round=3)
    for label in labels:
        for seed in seeds:
            run = out / label / f"seed-{seed}"
            run.mkdir(parents=True)
            seconds = 5.0 if label == "fedquad" else 10.0 + seed
            metrics = tiered_run(seconds, (0.55, 0.62 + seed / 100, 0.7))
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            config = ExperimentConfig(method=label, seed=seed)
            (run / "config.toml").write_text(config.to_toml())
            (run / "fleet.toml").write_text(fleet_to_toml(fleet))
            shares = {"positive": 0.6 + seed / 50, "negative": 0.4 - seed / 50}
            (run / "summary.json").write_text(json.dumps({"test_label_shares": shares}))


def test_seed_band_plot_explains_itself_and_rebuilds_byte_identically(tmp_path):
    out = tmp_path / "c"
    _seeded_comparison(out)
    write_report(out)
    first = (out / "accuracy.png").read_bytes()
    write_report(out)
    assert (out / "accuracy.png").read_bytes() == first
    infos = [read_run_info(p) for p in sorted(out.glob("*/seed-*"))]
    fig = plots.figure_seed_bands(read_runs(out).metrics, [0.65], infos)
    lines = lines_by_label(fig)
    fedlora, hetlora = lines["fedlora (2 seeds)"], lines["hetlora (2 seeds)"]
    assert fedlora.get_linestyle() != hetlora.get_linestyle()
    assert lines["fedquad (2 seeds)"].get_linestyle() == "-"
    texts = legend_texts(fig.axes[0].get_legend())
    assert "fedlora = hetlora: identical curves" in texts and "target 0.650" in texts
    (majority,) = [line for label, line in lines.items() if label.startswith("majority class")]
    assert majority.get_ydata()[0] == pytest.approx(0.61)
    assert "0.600–0.620 over runs" in majority.get_label()
    title = fig.axes[0].get_title()
    config = ExperimentConfig()
    for part in (
        f"dataset {config.data.name}",
        f"model {config.model.name}",
        "fleet default (5 devices, 3 per round)",
        "seeds 0, 1",
    ):
        assert part in title
    assert fig.axes[0].get_xlabel() == "virtual time (s)"
    board = plots.figure_seed_bands(read_runs(out).metrics, [0.65], infos, clock="board")
    assert board.axes[0].get_xlabel() == "board virtual time (s)"
    assert board.axes[0].get_title().startswith("Test accuracy against board virtual time")
