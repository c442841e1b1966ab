"""The Flower ClientApp and the codec between the round messages and Flower's Message API.

A ``train`` message carries one :class:`TrainInstruction`: ``instruction`` (ConfigRecord: its
scalar fields), ``config`` and, when set, ``fallback`` (ConfigRecords: the :class:`DeviceConfig`
fields) and ``tensors`` (ArrayRecord: the global LoRA and head; the device needs all of it, since
the frozen LoRA below its cut still runs in its forward). The reply carries the
:class:`TrainReply`: ``reply`` (ConfigRecord: its scalar fields), ``tensors`` (ArrayRecord: only
what it trained) and its measurements, flattened (nested keys joined by ``/``): numbers in the
MetricRecord ``metrics``, anything else in the ConfigRecord ``info``.

A ``query`` message asks a node which device it is (its ``partition-id``) and how many samples
it holds, so the server can address devices by id.

The client side trains with :func:`fedquad.engines.local.train_device`, as the local executor does.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Callable
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedquad.config import from_dict
from fedquad.device_config import DeviceConfig
from fedquad.engines.local import train_device
from fedquad.errors import FedquadError
from fedquad.models.lora import State
from fedquad.quiet import quiet_libraries
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.workbench import Workbench, build_workbench, seed_everything

DEVICE_KEY = "partition-id"
"""The node config key naming the device a node is (Flower's simulation sets it per node)."""
_SEP = "/"

# --------------------------------------------------------------------------- codec


def _array_record(state: State) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(state)


def _state(record: ArrayRecord) -> State:
    return dict(record.to_torch_state_dict())


def config_int(record: ConfigRecord, key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FedquadError(f"message field {key} = {value!r}: expected an integer")
    return value


def _fields_record(obj: Any, skip: tuple[str, ...] = ()) -> ConfigRecord:
    """A dataclass's fields (but ``skip``) as a ConfigRecord; None is left out, a tuple is
    sent as a list. New scalar fields of the messages travel without a codec change."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}
    return ConfigRecord(
        {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    )


def _fields(record: ConfigRecord) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def instruction_content(ins: TrainInstruction) -> RecordDict:
    fallback = {} if ins.fallback is None else {"fallback": _fields_record(ins.fallback)}
    return RecordDict(
        {
            "instruction": _fields_record(ins, skip=("config", "fallback", "tensors")),
            "config": _fields_record(ins.config),
            **fallback,
            "tensors": _array_record(ins.tensors),
        }
    )


def instruction_from(content: RecordDict) -> TrainInstruction:
    records = content.config_records
    fallback = records.get("fallback")
    return TrainInstruction(
        **_fields(records["instruction"]),
        config=DeviceConfig(**_fields(records["config"])),
        fallback=None if fallback is None else DeviceConfig(**_fields(fallback)),
        tensors=_state(content.array_records["tensors"]),
    )


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}{_SEP}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(_SEP)
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def _is_metric(value: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return number(value) or (isinstance(value, list) and all(number(v) for v in value))


def reply_content(reply: TrainReply) -> RecordDict:
    flat = _flatten(reply.measurements)
    return RecordDict(
        {
            "reply": _fields_record(reply, skip=("tensors", "measurements")),
            "tensors": _array_record(reply.tensors),
            "metrics": MetricRecord({k: v for k, v in flat.items() if _is_metric(v)}),
            "info": ConfigRecord({k: v for k, v in flat.items() if not _is_metric(v)}),
        }
    )


def reply_from(content: RecordDict) -> TrainReply:
    records = content.config_records
    flat = {**records["info"], **content.metric_records["metrics"]}
    return TrainReply(
        **_fields(records["reply"]),
        tensors=_state(content.array_records["tensors"]),
        measurements=_unflatten(flat),
    )


# --------------------------------------------------------------------------- client side


class FlowerNotices(logging.Filter):
    """Drops Flower notices a fedquad user cannot act on: ``run_simulation``'s deprecation (it
    is the Python entry point to the Simulation Engine) and each actor's exit at shutdown."""

    NOTICES = ("run_simulation", "Manually terminating")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in self.NOTICES)


_WORKLOADS: dict[str, Workbench] = {}
"""This process's workload, by the experiment's TOML text: built once, reused by every message."""


def workload(config_toml: str) -> Workbench:
    """The model with LoRA and the data partitions of the experiment, as the server builds them."""
    if config_toml not in _WORKLOADS:
        config = from_dict(tomllib.loads(config_toml))
        quiet_libraries()
        flwr_logger = logging.getLogger("flwr")
        if not any(isinstance(f, FlowerNotices) for f in flwr_logger.filters):
            flwr_logger.addFilter(FlowerNotices())
        # the server's order: seed, then build (any weight not sent is initialised alike)
        seed_everything(config.seed)
        _WORKLOADS.clear()  # one experiment per process at a time
        _WORKLOADS[config_toml] = build_workbench(config)
    return _WORKLOADS[config_toml]


def node_device(context: Context, num_devices: int) -> int:
    device = context.node_config.get(DEVICE_KEY)
    if not isinstance(device, int) or not 0 <= device < num_devices:
        raise FedquadError(
            f"node config {DEVICE_KEY} = {device!r}: use a device id from 0 to {num_devices - 1}"
        )
    return device


def query_content(config_toml: str, context: Context) -> RecordDict:
    bench = workload(config_toml)
    device = node_device(context, len(bench.device_data))
    samples = len(bench.device_data[device]["labels"])
    return RecordDict({"device": ConfigRecord({"device_id": device, "num_samples": samples})})


def _train(config_toml: str, content: RecordDict, context: Context) -> RecordDict:
    return reply_content(train_reply(config_toml, content, context))


def train_reply(config_toml: str, content: RecordDict, context: Context) -> TrainReply:
    """Train the node's device on a ``train`` message's instruction."""
    bench = workload(config_toml)
    device = node_device(context, len(bench.device_data))
    ins = instruction_from(content)
    if ins.device_id != device:
        raise FedquadError(f"the node of device {device} received device {ins.device_id}'s work")
    config = bench.config
    return train_device(
        bench.model,
        bench.parts,
        bench.structure,
        bench.device_data[device],
        ins,
        config.train,
        config.quant,
    )


def answer(message: Message, work: Callable[[], RecordDict]) -> Message:
    """The reply to ``message``; a user error is replied as its one-line reason (anything else
    raises, and Flower replies with the traceback)."""
    try:
        return Message(work(), reply_to=message)
    except FedquadError as exc:
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=message)


def make_client_app(config_toml: str) -> ClientApp:
    """The ClientApp of one experiment (its resolved config as TOML text)."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return answer(message, lambda: query_content(config_toml, context))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return answer(message, lambda: _train(config_toml, message.content, context))

    return app
