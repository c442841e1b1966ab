"""The executor over a Flower Grid, shared by the flower-sim and flower engines.

``run_rounds`` stays the round logic; :class:`GridExecutor` sends each device's instruction as
a Flower message to the SuperNode of that device and turns the replies back into
:class:`TrainReply`. Whether the Grid reaches virtual SuperNodes (Simulation Engine) or real ones
(Deployment Engine) is the caller's business. The global model is evaluated on the server, as
with the local executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedquad.engines.flower_app import config_int, instruction_content, reply_from
from fedquad.errors import FedquadError
from fedquad.models.lora import State
from fedquad.server.messages import TrainInstruction, TrainReply

NODES_TIMEOUT = 60.0
"""Default seconds to wait for the SuperNodes to register."""
LOST = frozenset(
    {
        ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.CLIENT_APP_CRASHED,
    }
)
"""Error replies that mean the device went away (its SuperNode stopped sending heartbeats, or
its ClientApp process died), not that the app is wrong: the device is dropped from the round,
as a crashed one is, instead of the run stopping. Flower reports a SuperNode as unavailable
once it missed its heartbeats for twice their interval (30 s by default)."""


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the tensors a message carries (what the cost model counts as sent)."""
    records: list[ArrayRecord] = list(content.array_records.values())
    return sum(
        int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
        for record in records
        for array in record.values()
    )


class GridExecutor:
    """Executor over a Flower Grid: one message per device, addressed by device id.

    Each reply's measurements gain ``sent_bytes`` and ``received_bytes``: the tensor bytes of
    the message sent to the device and of its reply.
    """

    def __init__(
        self,
        grid: Grid,
        num_devices: int,
        evaluator: Callable[[State], dict[str, float]],
        *,
        nodes_timeout: float = NODES_TIMEOUT,
        reply_timeout: float | None = None,
    ) -> None:
        self.grid = grid
        self.evaluator = evaluator
        self.nodes_timeout = nodes_timeout
        self.reply_timeout = reply_timeout
        self.nodes: dict[int, int] = {}
        """Device id → node id."""
        self.nodes, self.samples = self._discover(num_devices)

    def _discover(self, num_devices: int) -> tuple[dict[int, int], list[int]]:
        """Ask every node which device it is and how many samples it holds."""
        node_ids = _wait_for_nodes(self.grid, num_devices, self.nodes_timeout)
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids
        ]
        nodes: dict[int, int] = {}
        samples = [0] * num_devices
        for reply in self._exchange(queries):
            device = reply.content.config_records["device"]
            d = config_int(device, "device_id")
            if d in nodes:
                raise FedquadError(
                    f"nodes {nodes[d]} and {reply.metadata.src_node_id} both say they are "
                    f"device {d}: give each SuperNode its own partition-id"
                )
            nodes[d] = reply.metadata.src_node_id
            samples[d] = config_int(device, "num_samples")
        if sorted(nodes) != list(range(num_devices)):
            raise FedquadError(
                f"the connected nodes are devices {sorted(nodes)}: "
                f"expected one node per device 0 to {num_devices - 1}"
            )
        return nodes, samples

    def device_samples(self) -> list[int]:
        return list(self.samples)

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        contents = {ins.device_id: instruction_content(ins) for ins in instructions}
        messages = [
            Message(
                contents[ins.device_id],
                dst_node_id=self.nodes[ins.device_id],
                message_type=MessageType.TRAIN,
                group_id=str(ins.round),
            )
            for ins in instructions
        ]
        by_device: dict[int, TrainReply] = {}
        replies = self._exchange(messages, self.reply_timeout, lost=LOST)
        # the Grid gave each message its id when it sent it; the SuperLink's own error replies
        # (node unavailable) name that id, not the node
        sent = zip(messages, instructions, strict=True)
        sent_to = {m.metadata.message_id: ins.device_id for m, ins in sent}
        for message in replies:
            if message.has_error():  # the node went away: the device is left out of the round
                d = sent_to[message.metadata.reply_to_message_id]
                by_device[d] = self._lost(d, message)
                continue
            reply = reply_from(message.content)
            reply.measurements["sent_bytes"] = payload_bytes(contents[reply.device_id])
            reply.measurements["received_bytes"] = payload_bytes(message.content)
            by_device[reply.device_id] = reply
        # the instructions' order: aggregation sums in it, whichever node answered first
        return [by_device.get(ins.device_id) or self._no_reply(ins) for ins in instructions]

    def _no_reply(self, ins: TrainInstruction) -> TrainReply:
        return TrainReply(
            device_id=ins.device_id,
            tensors={},
            num_samples=self.samples[ins.device_id],
            error=f"no reply within flower.reply_timeout = {self.reply_timeout} s",
        )

    def _lost(self, device: int, message: Message) -> TrainReply:
        return TrainReply(
            device_id=device,
            tensors={},
            num_samples=self.samples[device],
            error=f"node lost mid-round: {_last_line(message.error.reason)}",
        )

    def evaluate(self, state: State) -> dict[str, float]:
        return self.evaluator(state)

    def _exchange(
        self,
        messages: list[Message],
        timeout: float | None = None,
        lost: frozenset[int] = frozenset(),
    ) -> list[Message]:
        """Send and wait for the replies; only with a ``timeout`` may some be missing. An error
        reply raises, but those with a code in ``lost`` are returned."""
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error() and reply.error.code not in lost:
                raise FedquadError(f"{self._name(reply)}: {_last_line(reply.error.reason)}")
        if timeout is None and len(replies) != len(messages):
            raise FedquadError(f"{len(replies)} of {len(messages)} nodes replied")
        return replies

    def _name(self, reply: Message) -> str:
        node = reply.metadata.src_node_id
        devices = [d for d, n in self.nodes.items() if n == node]
        return f"device {devices[0]}" if devices else f"node {node}"


def _last_line(reason: str | None) -> str:
    # a user error's reason is its one line; a crash's ends with the exception's message
    lines = (reason or "no reason given").strip().splitlines()
    return lines[-1].strip() if lines else "no reason given"


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    # the ServerApp may start before the SuperNodes have connected
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FedquadError(
                f"{len(node_ids)} of {count} SuperNodes connected in {timeout:.0f} s: "
                "expected one per device"
            )
        time.sleep(0.05)
    return node_ids
