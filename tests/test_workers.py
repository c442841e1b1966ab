"""The parallel local executor: the same metrics for any number of workers, and a worker that
dies costs only its device's update."""

from __future__ import annotations

import os
import signal

import pytest

import fedquad
from fedquad.api import seed_everything
from fedquad.config import load_config
from fedquad.engines.local import LocalExecutor
from fedquad.engines.workers import WORKER_DIED, WorkerPoolExecutor, resolve_workers
from fedquad.report.results import read_metrics
from fedquad.server.messages import TrainInstruction
from fedquad.workbench import build_workbench
from helpers import SMALL_RUN as SMALL

HOST_FIELDS = ("host_seconds", "host_seconds_total", "median_step_seconds")


def _without_host(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in HOST_FIELDS}
    out["devices"] = [
        {k: v for k, v in d.items() if k not in HOST_FIELDS} for d in record["devices"]
    ]
    return out


def _metrics(method: str, workers: int, out) -> list[dict]:
    config = load_config(
        None,
        [
            *SMALL,
            f"method='{method}'",
            "federation.devices_per_round=3",
            f"engine.workers={workers}",
            f"output_dir={out}",
            f"run_name={method}-{workers}",
        ],
    )
    return [_without_host(m) for m in read_metrics(fedquad.run(config).run_dir)]


def _check_same(method: str, counts: tuple[int, ...], out) -> None:
    runs = {n: _metrics(method, n, out) for n in counts}
    base = runs[counts[0]]
    assert base and all(m["devices"] and all("loss" in d for d in m["devices"]) for m in base)
    for n in counts[1:]:
        assert runs[n] == base, f"{method}: {n} workers differ from {counts[0]}"


@pytest.mark.parametrize("method", ["fedquad", pytest.param("hetlora", marks=pytest.mark.slow)])
def test_two_workers_give_the_metrics_of_one_process(method, tmp_path):
    _check_same(method, (0, 2), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", ["fedquad", "legend", "joint", "fedlora", "hetlora", "flexlora", "fedra"]
)
def test_any_number_of_workers_gives_the_same_metrics(method, tmp_path):
    _check_same(method, (0, 1, 2), tmp_path)


def test_auto_is_one_worker_per_core_at_most_one_per_device():
    engine = load_config(None, []).engine
    assert resolve_workers(engine, 1) == 0
    assert 0 <= resolve_workers(engine, 64) <= os.cpu_count()
    assert resolve_workers(load_config(None, ["engine.workers=3"]).engine, 1) == 3


def test_a_killed_worker_is_its_device_error_and_the_next_round_runs():
    config = load_config(None, [*SMALL, "engine.workers=1"])
    seed_everything(config.seed)
    bench = build_workbench(config)
    local = LocalExecutor(
        bench.model,
        bench.parts,
        bench.structure,
        bench.device_data,
        bench.test_data,
        config.train,
        config.quant,
    )
    from fedquad.device_config import DeviceConfig
    from fedquad.models.lora import get_state

    full = DeviceConfig(depth=2)
    tensors = get_state(bench.model)
    instructions = [
        TrainInstruction(device_id=d, round=1, config=full, tensors=tensors, seed=d) for d in (0, 1)
    ]
    with WorkerPoolExecutor(local, config, bench.model.config.num_labels, 1) as pool:
        pool.start()
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        pool.workers[0].process.join()
        first = pool.train(instructions)
        assert first[0].error == WORKER_DIED and first[0].tensors == {}
        assert first[1].error is None and first[1].tensors  # the replacement trained it
        second = pool.train(instructions)
    assert [r.error for r in second] == [None, None]
    assert [r.device_id for r in second] == [0, 1]
    expected = local.train(instructions)
    for got, want in zip(second, expected, strict=True):
        assert got.tensors.keys() == want.tensors.keys()
        assert all((got.tensors[k] == want.tensors[k]).all() for k in want.tensors)


def test_engine_is_a_table_and_the_string_form_still_reads(tmp_path):
    from fedquad.config import EngineConfig, FedquadError

    old = tmp_path / "config.toml"
    old.write_text('engine = "local"\n')  # as older run directories wrote it
    assert load_config(old).engine == EngineConfig("local", "auto")
    assert load_config(old, ["engine.workers=2"]).engine == EngineConfig("local", 2)
    kept = load_config(old, ["engine.workers=2", "engine=flower-sim"]).engine
    assert kept == EngineConfig("flower-sim", 2)
    assert (
        '[engine]\nname = "local"\nworkers = 2' in load_config(None, ["engine.workers=2"]).to_toml()
    )
    for bad, says in [("engine.workers=-1", "engine.workers = -1"), ("engine=grpc", "'grpc'")]:
        with pytest.raises(FedquadError, match=says):
            load_config(None, [bad])
