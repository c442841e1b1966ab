"""What the server tells one device in a round; torch-free, for the planners and the cost model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceConfig:
    """What the server tells a device to do this round: ``c_i = (d_i, q_i, ranks_i)``."""

    depth: int
    """Backward reaches blocks ``L-depth … L-1``; by default all of them train their LoRA."""
    quantized: int = 0
    """``q``: how many of the trained blocks have their saved activations quantized."""
    bits: int = 8
    quant_position: str = "bottom"
    """``bottom``: the lowest ``q`` trained blocks; ``top``: the highest."""
    rank: int | None = None
    """Rank-heterogeneous methods (hetlora, flexlora): train the global LoRA truncated to this
    rank (the first ``rank`` rows of each ``A``, columns of each ``B``). None: the full ranks."""
    blocks: tuple[int, ...] | None = None
    """FedRA: the LoRA blocks trained, not necessarily consecutive (sorted; the lowest is
    ``L-depth``). None: every block of the span."""
    checkpointed: int = 0
    """``k``: how many trained blocks run under activation checkpointing (each keeps only its
    input and recomputes its forward in backward): the lowest ``k`` that are not quantized
    (docs/methods.md §4.4)."""

    def trained_blocks(self, num_blocks: int) -> list[int]:
        if self.blocks is not None:
            return list(self.blocks)
        return list(range(num_blocks - self.depth, num_blocks))

    def quantized_blocks(self, num_blocks: int) -> list[int]:
        trained = self.trained_blocks(num_blocks)
        if self.quant_position == "top":
            return trained[len(trained) - self.quantized :]
        return trained[: self.quantized]

    def checkpointed_blocks(self, num_blocks: int) -> list[int]:
        """The lowest ``checkpointed`` trained blocks that are not quantized: a checkpointed
        block's saved tensors are only its input, so there is nothing to quantize in it."""
        quantized = set(self.quantized_blocks(num_blocks))
        free = [b for b in self.trained_blocks(num_blocks) if b not in quantized]
        return free[: self.checkpointed]

    def as_dict(self) -> dict[str, Any]:
        """The fields set (None and no checkpointed blocks left out, tuples as lists): JSON-
        and message-ready."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if v is not None and not (k == "checkpointed" and v == 0)
        }
