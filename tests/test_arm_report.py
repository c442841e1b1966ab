"""The arm write-ups' tables (docs/methods.md §8) from runs of the real round loop on a hand-made
cost profile and a three-tier fleet, fed canned replies by a fake executor (no model loads):
the board clock's re-timing, the planning-only dry run behind the budgets, accuracy at a
budget, bytes to target against each baseline, the per-run tables and the memory claim."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fedquad.cli import main
from fedquad.config import FaultConfig, FederationConfig, load_config
from fedquad.cost.fleet import FleetSpec, Tier, fleet_to_toml, with_composition
from fedquad.cost.model import CostProfile, memory_bytes, saved_bytes
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.report.budgets import choose_budgets, planned_round_seconds, round_down
from fedquad.report.memory_claim import MEASURED_FILE, memory_claim
from fedquad.report.retime import BOARD, RunCost, exact_on_board, retime
from fedquad.report.seeded import PLAN_FILE, read_runs, report_data, write_report
from fedquad.report.stats import trailing_mean_crossing
from fedquad.seeded_compare import Entry, Plan, plan_json
from fedquad.server.configure import RoundSettings, assigned_names
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.server.rounds import run_rounds

RANK, WIDTH, BLOCKS, STEPS = 2, 3, 4, 2
PROFILE = CostProfile(
    num_blocks=BLOCKS,
    frozen_weight_bytes=10_000,
    lora_params=(2 * RANK * WIDTH,) * BLOCKS,
    head_params=2 * WIDTH,
    saved_bytes=(3000,) * BLOCKS,
    saved_bytes_bottom=(2500,) * BLOCKS,
    quant_ratio={8: 0.25},
    head_saved_bytes=500,
    f=0.01,
    g=0.2,
    o=0.05,
    c=0.1,
    lora_ranks=(RANK,) * BLOCKS,
)
# small: no depth unquantized; medium: three blocks; large: every config
FLEET = FleetSpec(
    tiers=(
        Tier("small", 3, 2.5, memory=0.6),
        Tier("medium", 3, 1.6, memory=1.0),
        Tier("large", 3, 1.0, memory=2.0),
    ),
    per_round=6,
)
ALL = dataclasses.replace(FLEET, per_round=FLEET.num_devices)
"""Every device sampled in every round: the canned faults below always happen."""
COST = RunCost(PROFILE, FLEET, STEPS)


def global_state() -> dict[str, torch.Tensor]:
    state = {}
    for b in range(BLOCKS):
        state[f"blocks.{b}.lora_A.weight"] = torch.zeros(RANK, WIDTH)
        state[f"blocks.{b}.lora_B.weight"] = torch.zeros(WIDTH, RANK)
    state["head.weight"] = torch.zeros(2, WIDTH)
    return state


def trained(ins: TrainInstruction, **measured: Any) -> TrainReply:
    names = assigned_names(ins.tensors, ins.config, BLOCKS)
    tensors = {n: ins.tensors[n] + 1.0 for n in sorted(names)}
    measured = {"loss": 1.0, "step_seconds": [0.5] * STEPS, "median_step_seconds": 0.5, **measured}
    return TrainReply(ins.device_id, tensors, 10 * (ins.device_id + 1), measured)


def straggling_and_retrying(ins: TrainInstruction) -> TrainReply:
    """Device 6 straggles twice as slow in round 2; device 7 runs out of memory in round 1 and
    trains the fallback, where the method has one (both of the large tier)."""
    if ins.device_id == 6 and ins.round == 2:
        return trained(ins, delay_factor=2.0)
    if ins.device_id == 7 and ins.round == 1 and ins.fallback is not None:
        retry = {"failed_config": ins.config.as_dict(), "used_config": ins.fallback.as_dict()}
        return trained(dataclasses.replace(ins, config=ins.fallback), oom_retry=retry)
    return trained(ins)


class FakeExecutor:
    def __init__(
        self,
        respond: Callable[[TrainInstruction], TrainReply] = trained,
        accuracies: Sequence[float] = (),
    ) -> None:
        self.respond, self.accuracies, self.evaluations = respond, list(accuracies), 0

    def device_samples(self) -> list[int]:
        return [10 * (d + 1) for d in range(FLEET.num_devices)]

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        return [self.respond(ins) for ins in instructions]

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.evaluations += 1
        accuracy = self.accuracies[self.evaluations - 1] if self.accuracies else 0.5
        return {"accuracy": accuracy, "loss": 1.0 - accuracy}


def settings(method: str, rounds: int = 3, seed: int = 0, **federation: Any) -> RoundSettings:
    fed = FederationConfig(rounds=rounds, checkpoint_every=0, **federation)
    faults = FaultConfig()
    return RoundSettings(
        method=method, federation=fed, seed=seed, local_steps=STEPS, base_rank=RANK, faults=faults
    )


def run(method: str, spec: FleetSpec = FLEET, executor: FakeExecutor | None = None, **kw: Any):
    executor = executor or FakeExecutor()
    return run_rounds(
        settings(method, **kw), spec, PROFILE, BLOCKS, executor, global_state()
    ).metrics


# --------------------------------------------------------------------------- the board clock


@pytest.mark.parametrize("method", ["fedlora", "fedquad", "fedra", "fedquad-noquant"])
def test_retiming_with_the_host_mix_gives_back_every_recorded_time(method):
    executor = FakeExecutor(straggling_and_retrying)
    metrics = run(method, spec=ALL, executor=executor, deadline_slack=10.0)
    devices = [d for m in metrics for d in m["devices"]]
    # FedLoRA's full depth fits the large tier only, unquantized depths the medium one too
    tiers = {"fedlora": 1, "fedquad": 3}.get(method, 2)
    assert len({d["tier"] for d in devices}) == tiers
    if method == "fedquad":  # the retry and the delay are in the records being re-timed
        assert any("oom_retry" in d for d in devices)
    retimed = retime(metrics, COST, None)
    assert retimed.metrics == metrics  # every compute, wait, round and total, to the bit
    assert retimed.scaled_rounds == ()


@pytest.mark.parametrize("method", ["fedra", "fedlora"])
def test_the_board_retiming_of_a_time_free_plan_is_the_run_on_board_tiers(method):
    assert exact_on_board(method)
    host = run(method, rounds=4)
    board = run(method, spec=with_composition(FLEET, BOARD), rounds=4)
    retimed = retime(host, COST, BOARD).metrics
    for r, b in zip(retimed, board, strict=True):
        assert [d["depth"] for d in r["devices"]] == [d["depth"] for d in b["devices"]]
        assert r["virtual_seconds_total"] == pytest.approx(b["virtual_seconds_total"], rel=1e-12)
        for x, y in zip(r["devices"], b["devices"], strict=True):
            assert x["compute_seconds"] == pytest.approx(y["compute_seconds"], rel=1e-12)
    moved = [r["virtual_seconds"] != pytest.approx(h["virtual_seconds"]) for r, h in zip(
        retimed, host, strict=True
    )]  # fmt: skip
    # FedRA's partial spans time differently on the board; FedLoRA's full depth never does
    assert any(moved) == (method == "fedra")


def test_adaptive_methods_are_labelled_planned_on_the_host_clock():
    assert [exact_on_board(m) for m in ("fedquad", "legend", "joint", "fedquad-noquant")] == [
        False
    ] * 4
    assert all(exact_on_board(m) for m in ("fedlora", "hetlora", "flexlora", "fedra"))


def test_a_round_that_timed_devices_its_records_lack_is_scaled_and_counted():
    def late(ins: TrainInstruction) -> TrainReply:
        return trained(ins, delay_factor=50.0) if ins.device_id == 6 else trained(ins)

    metrics = run("fedlora", spec=ALL, executor=FakeExecutor(late), rounds=2)
    # late in round 1; in round 2 the server plans with its reported slowness and waits
    assert metrics[0]["dropped"]["6"].startswith("missed the deadline")
    assert metrics[1]["dropped"] == {} and 6 in {d["device"] for d in metrics[1]["devices"]}
    retimed = retime(metrics, COST, None)
    assert retimed.scaled_rounds == (1,)
    assert retimed.metrics == metrics  # scaled by exactly 1 on the recorded composition


def test_a_tier_missing_from_the_fleet_is_a_one_line_error():
    metrics = run("fedlora", rounds=1)
    other = RunCost(PROFILE, FleetSpec(tiers=(Tier("x", 9, 1.0, memory=1.0),), per_round=9), STEPS)
    with pytest.raises(FedquadError, match=r"has tier '\w+', which the run's fleet.toml lacks"):
        retime(metrics, other, BOARD)


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("method", ["fedlora", "fedquad", "fedra", "fedquad-noquant"])
def test_the_dry_run_plans_the_round_times_a_run_records(method):
    samples = FakeExecutor().device_samples()
    for seed in (0, 1):
        recorded = [m["virtual_seconds"] for m in run(method, rounds=5, seed=seed)]
        planned = planned_round_seconds(
            settings(method, rounds=5, seed=seed), FLEET, PROFILE, BLOCKS, samples
        )
        assert planned == recorded


def test_budgets_are_fractions_of_the_shortest_planned_run_rounded_down():
    planned = {"a": {0: [10.0, 20.0, 30.0], 1: [100.0]}, "b": {0: [5.0, 5.0, 5.0], 1: [7.0]}}
    assert choose_budgets(planned) == [2.33, 4.66, 7.0]
    assert choose_budgets(planned, fractions=(0.5, 1.0)) == [3.5, 7.0]
    assert round_down(123.456) == 123.0 and round_down(0.0123456) == 0.0123
    assert round_down(99999.0) == 99900.0 and round_down(200.0) == 200.0
    assert choose_budgets({"a": {0: [10.0] * 30}}) == [100.0, 200.0, 300.0]
    with pytest.raises(FedquadError, match="no planned runs"):
        choose_budgets({})
    with pytest.raises(FedquadError, match="takes 0.0 virtual seconds"):
        choose_budgets({"a": {0: [0.0]}})


# --------------------------------------------------------------------------- the memory claim


def test_the_memory_claim_prices_full_depth_on_the_profile_and_sits_beside_the_measured():
    def at(q: int, peak: int, above: int) -> dict:
        return {"depth": BLOCKS, "quantized": q, "bits": 8, "peak_bytes": peak,
                "peak_above_baseline_bytes": above}  # fmt: skip

    measured = {"measured_by": "a test", "configs": [at(0, 400, 200), at(BLOCKS, 300, 80)]}
    claim = memory_claim(PROFILE, "fp32", measured)
    high, low = claim["configs"]
    assert (high["quantized"], low["quantized"], low["depth"]) == (0, BLOCKS, BLOCKS)
    # saved: the bottom block, three others and the head; quantized blocks at 0.25 of that
    blocks = 2500 + 3 * 3000
    assert high["saved_bytes"] == blocks + 500 and low["saved_bytes"] == blocks // 4 + 500
    assert claim["saved_ratio"] == pytest.approx((blocks / 4 + 500) / (blocks + 500))
    assert high["total_bytes"] - low["total_bytes"] == high["saved_bytes"] - low["saved_bytes"]
    assert claim["total_ratio"] == low["total_bytes"] / high["total_bytes"] > claim["saved_ratio"]
    assert (claim["measured_peak_ratio"], claim["measured_above_baseline_ratio"]) == (0.75, 0.4)
    none = memory_claim(PROFILE, "fp32")
    assert none["measured_peak_ratio"] is None and none["configs"][1]["measured_peak_bytes"] is None


# --------------------------------------------------------------------------- the report

ACCURACIES = {
    ("fedquad", 0): [0.6, 0.75, 0.8, 0.85, 0.85],
    ("fedquad", 1): [0.6, 0.7, 0.8, 0.8, 0.9],
    ("fedlora", 0): [0.6, 0.7, 0.75, 0.8, 0.85],
    ("fedlora", 1): [0.5, 0.6, 0.7, 0.75, 0.8],
}


def write_comparison(out: Path, budgets: Sequence[float] = ()) -> dict[tuple[str, int], list]:
    """fedquad and fedlora over seeds 0 and 1, five rounds each, as a comparison directory
    holds them; two of fedlora's device records carry the new flags."""
    entries = [Entry("fedquad", "fedquad"), Entry("fedlora", "fedlora")]
    plan = Plan(entries, [0, 1], [0.75, 0.8], {}, list(budgets))
    out.mkdir()
    (out / PLAN_FILE).write_text(json.dumps(plan_json(plan, "abc"), indent=2))
    written = {}
    for (label, seed), accuracies in ACCURACIES.items():
        metrics = run(label, rounds=5, seed=seed, executor=FakeExecutor(accuracies=accuracies))
        if label == "fedlora" and seed == 1:
            metrics[0]["devices"][0]["over_budget"] = True
            metrics[1]["devices"][0]["checkpointed"] = 2
        run_dir = out / label / f"seed-{seed}"
        run_dir.mkdir(parents=True)
        lines = [json.dumps(m) for m in metrics]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run_dir / "cost_profile.json").write_text(json.dumps(PROFILE.to_dict()))
        (run_dir / "fleet.toml").write_text(fleet_to_toml(FLEET))
        config = load_config(
            None, [f"method={label!r}", f"seed={seed}", f"train.local_steps={STEPS}"]
        )
        (run_dir / "config.toml").write_text(config.to_toml())
        written[(label, seed)] = metrics
    return written


def test_the_report_of_an_arm(tmp_path):
    written = write_comparison(tmp_path / "c")
    # every run has evaluated by the first budget, and none has ended by the second
    budgets = [max(m[r]["virtual_seconds_total"] for m in written.values()) for r in (0, 1)]
    plan = json.loads((tmp_path / "c" / PLAN_FILE).read_text())
    (tmp_path / "c" / PLAN_FILE).write_text(json.dumps({**plan, "budgets": budgets}))
    data = report_data(read_runs(tmp_path / "c"))

    # bytes to target, paired like time: bytes of fedquad / bytes of fedlora, per seed
    block = data["per_target"][0]  # 0.75
    fedquad = block["labels"][0]
    ratio, best = fedquad["bytes_ratios"]
    assert best == {**ratio, "over": "best baseline (fedlora)"}
    expected = [
        trailing_mean_crossing(written[("fedquad", s)], 0.75).bytes
        / trailing_mean_crossing(written[("fedlora", s)], 0.75).bytes
        for s in (0, 1)
    ]
    assert ratio["over"] == "fedlora" and ratio["per_seed"] == pytest.approx(expected)
    assert ratio["geometric_mean"] == pytest.approx((expected[0] * expected[1]) ** 0.5)

    # the board clock: fedlora's full-depth rounds keep their time, fedquad's are re-timed
    board = data["board_clock"]
    assert board["available"] and board["composition"]["name"] == "jetson"
    labels = {item["label"]: item for item in board["labels"]}
    assert (labels["fedquad"]["exact"], labels["fedlora"]["exact"]) == (False, True)
    host_totals = [written[("fedlora", s)][-1]["virtual_seconds_total"] for s in (0, 1)]
    board_totals = labels["fedlora"]["virtual_seconds_total"]
    assert board_totals[0] == pytest.approx(host_totals[0])
    # seed 1 has a checkpointed device: its recomputed forwards are a share of the step that
    # differs between the clocks
    assert board_totals[1] != pytest.approx(host_totals[1])
    fedquad_host = [written[("fedquad", s)][-1]["virtual_seconds_total"] for s in (0, 1)]
    assert labels["fedquad"]["virtual_seconds_total"] != pytest.approx(fedquad_host)
    board_fedlora = board["per_target"][0]["labels"][1]["time_to_target_seconds"]
    host_fedlora = block["labels"][1]["time_to_target_seconds"]
    assert board_fedlora["per_seed"][0] == pytest.approx(host_fedlora["per_seed"][0])

    # accuracy at each budget: the last evaluation at or before it
    at = {item["label"]: item["at"] for item in data["budgets"]["labels"]}
    for label in ("fedquad", "fedlora"):
        for i, budget in enumerate(budgets):
            want = [
                max(
                    (m for m in written[(label, s)] if m["virtual_seconds_total"] <= budget),
                    key=lambda m: m["round"],
                )["test_accuracy"]
                for s in (0, 1)
            ]
            assert at[label][i]["per_seed"] == want
            assert at[label][i]["mean"] == pytest.approx(sum(want) / 2)
            assert at[label][i]["ended"] == [False, False]

    runs = {r["label"]: r for r in data["runs"]}
    assert runs["fedquad"]["final_accuracy"] == [0.85, 0.9]
    assert runs["fedquad"]["final_accuracy_mean"] == pytest.approx(0.875)
    assert runs["fedlora"]["device_rounds_over_budget"] == [0, 1]
    assert runs["fedlora"]["device_rounds_checkpointed"] == [0, 1]
    # FedLoRA leaves the small tier out: FedQuad trains it, within its budget
    assert "small" not in runs["fedlora"]["peak_memory_bytes"]
    small = runs["fedquad"]
    assert 0 < small["peak_memory_bytes"]["small"] <= small["memory_budget_bytes"]["small"]
    assert sum(runs["fedlora"]["device_rounds_sat_out"]) > 0

    claim = data["memory_claim"]
    assert (claim["label"], claim["seed"], claim["precision"]) == ("fedquad", 0, "fp32")
    assert claim["configs"][0]["total_bytes"] == memory_bytes(PROFILE, DeviceConfig(BLOCKS))
    assert claim["configs"][1]["saved_bytes"] == saved_bytes(
        PROFILE, DeviceConfig(BLOCKS, quantized=BLOCKS)
    )


def data_claims(comparison: bytes) -> list[str]:
    """The rival of every host-clock claim, target after target."""
    blocks = json.loads(comparison)["claims"]["per_target"]
    return [row["over"] for b in blocks for row in b["host"]]


def test_the_arm_report_rebuilds_byte_identically_with_every_table(tmp_path):
    write_comparison(tmp_path / "c", budgets=[1.5, 3.0])
    measured = {
        "schema": 1,
        "measured_by": "a test",
        "configs": [
            {"depth": BLOCKS, "quantized": 0, "bits": 8, "peak_bytes": 1 << 30,
             "peak_above_baseline_bytes": 1 << 29},
        ],
    }  # fmt: skip
    (tmp_path / "c" / MEASURED_FILE).write_text(json.dumps(measured))
    write_report(tmp_path / "c")
    names = ("comparison.md", "comparison.json")
    first = {n: (tmp_path / "c" / n).read_bytes() for n in names}
    (tmp_path / "c" / "comparison.md").unlink()
    assert main(["report", str(tmp_path / "c")]) == 0
    assert {n: (tmp_path / "c" / n).read_bytes() for n in names} == first
    md = first["comparison.md"].decode()
    for heading in (
        "## Claims against their thresholds",
        "### Bytes to target against each baseline",
        "## Board clock (jetson step composition)",
        "### Target 0.7500: speed-up on the board clock",
        "## Accuracy at fixed virtual-time budgets (host clock)",
        "## Final accuracy",
        "## Peak memory per tier (MiB)",
        "## Device-rounds",
        "## Memory claim: full depth, every block quantized",
    ):
        assert heading in md, heading
    assert "† re-timed, planned on the host clock: fedquad" in md
    assert "| fedquad† | fedlora |" in md  # the board's speed-up row is marked
    assert "| 1024.0 | 512.0 |" in md  # the measured unquantized peak, in MiB
    assert "Measured by a test." in md
    # the claims read the same runs on both clocks; this arm has no LEGEND, so no LEGEND rows
    assert "| FedQuad over the best baseline (fedlora) | 0.7500 |" in md
    assert "LEGEND" not in md.split("## Claims")[1].split("\n## ")[0]
    assert data_claims(first["comparison.json"]) == ["the best baseline (fedlora)", "fedlora"] * 2


def test_a_directory_without_timing_files_reports_the_board_clock_unavailable(tmp_path):
    write_comparison(tmp_path / "c")
    (tmp_path / "c" / "fedlora" / "seed-1" / "fleet.toml").unlink()
    data = report_data(read_runs(tmp_path / "c"))
    assert data["board_clock"]["available"] is False
    assert "fedlora seed 1 keeps no cost_profile.json" in data["board_clock"]["reason"]
    assert data["budgets"] is None
    assert data["memory_claim"]["label"] == "fedquad"  # fedquad's own files are there


def test_an_interim_report_covers_only_the_seeds_every_entry_has_finished(tmp_path, capsys):
    out = tmp_path / "c"
    write_comparison(out)
    with pytest.raises(FedquadError, match="no seed has finished for every entry"):
        read_runs(out, interim=True)
    # seed 1 finished for both entries, seed 0 only for fedquad: seed 0 is not paired yet
    for label, seed in (("fedquad", 0), ("fedquad", 1), ("fedlora", 1)):
        (out / label / f"seed-{seed}" / "summary.json").write_text("{}")
    assert main(["report", str(out), "--interim"]) == 0
    assert "over seeds 1 (interim)" in capsys.readouterr().out
    data = json.loads((out / "comparison.json").read_text())
    assert (data["seeds"], data["planned_seeds"]) == ([1], [0, 1])
    assert [r["label"] for r in data["runs"]] == ["fedquad", "fedlora"]
    assert all(len(r["final_accuracy"]) == len(r["rounds"]) == 1 for r in data["runs"])
    md = (out / "comparison.md").read_text()
    assert "**Interim report**: 1 of the 2 planned seeds" in md and "seeds 0 are left out" in md
    assert "| label | reached | geometric mean (s) | seed 1 |" in md
    # the full report still needs every run, and says how to get the interim one
    (out / "fedlora" / "seed-0" / "metrics.jsonl").unlink()
    with pytest.raises(FedquadError, match="--interim"):
        read_runs(out)
