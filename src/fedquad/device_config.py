"""What the server tells one device in a round; torch-free, for the planners and the cost model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceConfig:
    """What the server tells a device to do this round: ``c_i = (d_i, q_i, ranks_i)``."""

    depth: int
    quantized: int = 0
    """``q``: how many of the span's blocks have their saved activations quantized."""
    bits: int = 8
    quant_position: str = "bottom"
    """``bottom``: the lowest ``q`` blocks of the span; ``top``: the highest."""

    def quantized_blocks(self, num_blocks: int) -> list[int]:
        span = list(range(num_blocks - self.depth, num_blocks))
        if self.quant_position == "top":
            return span[len(span) - self.quantized :]
        return span[: self.quantized]
