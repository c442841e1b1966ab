"""Parallel local executor: the round's devices trained in worker processes.

Each worker is a spawned (not forked) process with one thread and its own frozen model, loaded
through the same registry call as the parent's after the same seeding; it checks its frozen
weights' checksum against the parent's before it trains. A worker keeps no state between
instructions: an instruction carries the device's global tensors *and* its training samples
(both as safetensors bytes), so a device's update is a function of its instruction alone, and
the metrics are the same for any number of workers. (Sending the samples costs a few hundred
kilobytes per device; rebuilding every device's data in every worker would tokenize the whole
dataset once per worker.)

A worker that dies mid-instruction becomes that device's error reply and is replaced; the
round goes on. Workers ignore SIGINT: the parent stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes
from torch import nn

from fedquad.config import EngineConfig, ExperimentConfig
from fedquad.engines.local import LocalExecutor, TensorData, train_device
from fedquad.errors import FedquadError
from fedquad.models.lora import LoraStructure, State, is_head_param, is_lora_param
from fedquad.server.messages import TrainInstruction, TrainReply

WORKER_DIED = "worker died"
"""The error reply of a device whose worker process ended before replying."""


def host_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(engine: EngineConfig, devices_per_round: int) -> int:
    """``engine.workers`` as a number; ``auto``: one per core, at most one per device of a
    round, and none (this process) when that is one — a lone worker only adds its start-up."""
    if engine.workers != "auto":
        return int(engine.workers)
    n = min(host_cores(), devices_per_round)
    return n if n > 1 else 0


def frozen_checksum(model: nn.Module) -> str:
    """SHA-256 of the frozen base weights, by name (not LoRA, not the exchanged head, not the
    head's unused original PEFT keeps aside): equal models, equal sums."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if not (is_lora_param(name) or is_head_param(name) or ".original_module." in name):
            digest.update(name.encode())
            digest.update(param.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _pack(tensors: dict[str, torch.Tensor]) -> bytes:
    return tensors_to_bytes({k: v.contiguous() for k, v in tensors.items()})


# --------------------------------------------------------------------------- the worker side


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a worker builds its model from."""

    config_toml: str
    num_labels: int
    structure: LoraStructure
    checksum: str
    """The parent's :func:`frozen_checksum`."""


def _worker_main(conn: Connection, setup: WorkerSetup) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers
    torch.set_num_threads(1)
    import tomllib

    from fedquad.config import from_dict
    from fedquad.quiet import quiet_libraries
    from fedquad.workbench import load_base_model, seed_everything, with_lora

    quiet_libraries()
    config = from_dict(tomllib.loads(setup.config_toml))
    seed_everything(config.seed)  # the parent's order: seed, then build
    base, parts = load_base_model(config, setup.num_labels)
    model = with_lora(config, base, parts, setup.structure)
    checksum = frozen_checksum(model)
    if checksum != setup.checksum:
        conn.send(("error", f"frozen weights differ from the server's ({config.model.name})"))
        return
    conn.send(("ready", None))
    while True:
        message = conn.recv()
        if message is None:
            return
        fields, tensors, data = message
        try:
            instruction = TrainInstruction(**fields, tensors=tensors_from_bytes(tensors))
            reply = train_device(
                model,
                parts,
                setup.structure,
                tensors_from_bytes(data),
                instruction,
                config.train,
                config.quant,
            )
            out = dataclasses.asdict(reply) | {"tensors": _pack(reply.tensors)}
            conn.send(("reply", out))
        except Exception:
            conn.send(("error", traceback.format_exc()))


# --------------------------------------------------------------------------- the parent side


class _Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        # the child reads OMP_NUM_THREADS when torch loads, before any code of ours runs
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            self.process: BaseProcess = context.Process(
                target=_worker_main, args=(child, setup), daemon=True
            )
            self.process.start()
        finally:
            if saved is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        child.close()
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            raise FedquadError("a training worker process ended while loading the model") from None
        if kind != "ready":
            raise FedquadError(f"a training worker cannot start: {detail}")
        self.ready = True

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # already gone
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerPoolExecutor:
    """The local executor's rounds, with the training in ``workers`` processes; evaluation
    stays in this process, on ``local``'s model."""

    def __init__(
        self, local: LocalExecutor, config: ExperimentConfig, num_labels: int, workers: int
    ) -> None:
        if workers < 1:
            raise FedquadError(f"engine.workers = {workers}: a worker pool needs at least 1")
        self.local = local
        self.setup = WorkerSetup(
            config_toml=config.to_toml(),
            num_labels=num_labels,
            structure=local.structure,
            checksum=frozen_checksum(local.model),
        )
        self.size = workers
        self.workers: list[_Worker] = []

    def start(self) -> None:
        """Start the workers (and wait until each has loaded its model)."""
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.setup))
        for worker in self.workers:
            worker.wait_ready()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __enter__(self) -> WorkerPoolExecutor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def device_samples(self) -> list[int]:
        return self.local.device_samples()

    def evaluate(self, state: State) -> dict[str, float]:
        return self.local.evaluate(state)

    def _message(self, ins: TrainInstruction) -> tuple[dict[str, Any], bytes, bytes]:
        fields = {f.name: getattr(ins, f.name) for f in dataclasses.fields(ins)}
        del fields["tensors"]
        data: TensorData = self.local.device_data[ins.device_id]
        return fields, _pack(ins.tensors), _pack(data)

    def _died(self, ins: TrainInstruction) -> TrainReply:
        samples = len(self.local.device_data[ins.device_id]["labels"])
        return TrainReply(
            device_id=ins.device_id, tensors={}, num_samples=samples, error=WORKER_DIED
        )

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        """Each instruction to the next free worker; the replies in instruction order."""
        self.start()
        replies: list[TrainReply | None] = [None] * len(instructions)
        pending = list(enumerate(instructions))
        busy: dict[Connection, tuple[int, _Worker]] = {}
        idle = list(self.workers)
        while pending or busy:
            while pending and idle:
                index, ins = pending.pop(0)
                worker = idle.pop()
                try:
                    worker.conn.send(self._message(ins))
                    busy[worker.conn] = (index, worker)
                except (OSError, ValueError):
                    replies[index] = self._died(ins)
                    idle.append(self._replace(worker))
            for conn in wait(list(busy)):
                index, worker = busy.pop(conn)  # type: ignore[call-overload]
                try:
                    kind, detail = worker.conn.recv()
                except (EOFError, OSError):
                    replies[index] = self._died(instructions[index])
                    idle.append(self._replace(worker))
                    continue
                if kind == "error":
                    raise RuntimeError(f"training worker failed:\n{detail}")
                detail["tensors"] = tensors_from_bytes(detail["tensors"])
                replies[index] = TrainReply(**detail)
                idle.append(worker)
        return [r for r in replies if r is not None]

    def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        fresh = _Worker(self.setup)
        fresh.wait_ready()
        self.workers[self.workers.index(dead)] = fresh
        return fresh
