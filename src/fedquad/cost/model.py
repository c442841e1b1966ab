"""The cost model of docs/methods.md §3: memory, step time, communication, round time of a config.

Everything here is a pure function of a :class:`CostProfile` (measured once on the host per model,
task, batch, sequence length and LoRA structure) and a device config ``(d, q, k)``: depth,
quantized and checkpointed blocks. Blocks are indexed ``0 … L-1`` from the input; a device of
depth ``d`` trains blocks ``L-d … L-1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError

FP32_BYTES = 4
"""LoRA weights, gradients and transfers are fp32."""


@dataclass(frozen=True)
class CostProfile:
    """What the profiler measures once per (model, task, ``b``, ``s``, LoRA structure)."""

    num_blocks: int
    frozen_weight_bytes: int
    """``W``: bytes of the frozen base weights (embeddings, blocks, base head)."""
    lora_params: tuple[int, ...]
    """``P_l`` per block ``0 … L-1`` (0 where the block carries no LoRA)."""
    head_params: int
    """``P_head``: trainable head parameters (trained and exchanged by every device)."""
    saved_bytes: tuple[int, ...]
    """``A_l`` per block when trainable and unquantized."""
    saved_bytes_bottom: tuple[int, ...]
    """``A_l`` when block ``l`` is the lowest of the span: its input is then not saved by a
    trainable block below, so the measurement differs. Used for block ``L-d``."""
    quant_ratio: dict[int, float]
    """``ρ_β`` per bit width: quantized / unquantized saved bytes."""
    head_saved_bytes: int
    """``A_head``: bytes saved by the head and the loss."""
    f: float
    """Seconds: forward of one block."""
    g: float
    """Seconds: extra backward of one trainable block."""
    o: float
    """Seconds: quantize + dequantize overhead of one quantized block."""
    c: float
    """Seconds: embeddings, head, loss and optimizer step."""
    optimizer_bytes_per_param: int = 8
    """``e_opt``: 8 for AdamW (two fp32 moments), 0 for plain SGD."""
    slack_bytes: int = 0
    """``M_slack``: allocator and workspace overhead added to every config."""
    lora_ranks: tuple[int, ...] = ()
    """``r_l`` per block (0 where none): LoRA parameters scale linearly with the rank, which
    prices a device training a truncated rank. Empty: rank-truncated configs are not priced."""
    saved_bytes_path: tuple[int, ...] = ()
    """``A_l`` of a block on the backward path that does not train (FedRA's gaps): it saves only
    what input gradients need. Empty: charged as a trainable block (an upper bound)."""
    saved_bytes_quantized: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Measured ``A_l`` per block when quantized, per bit width (exact, unlike ``ρ_β·A_l``);
    bit widths missing here fall back to ``ρ_β·A_l``."""
    saved_bytes_bottom_quantized: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """The same for block ``l`` as the lowest block of the span."""
    saved_bytes_checkpointed: tuple[int, ...] = ()
    """Measured ``A_l`` of a checkpointed block: only what the checkpoint keeps to recompute
    the block's forward in backward (its inputs). Empty: checkpointed configs are not priced."""
    saved_bytes_bottom_checkpointed: tuple[int, ...] = ()
    """The same for block ``l`` as the lowest checkpointed block: the first to keep the tensors
    every block is given (BERT's attention mask), which the blocks above then share."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form provenance (model name, b, s, host); not used by the model."""

    def __post_init__(self) -> None:
        n = self.num_blocks
        if n < 1:
            raise FedquadError(f"cost profile num_blocks = {n} is not allowed: use >= 1")
        for name in _OPTIONAL_PER_BLOCK:
            values = getattr(self, name)
            if values and (len(values) != n or any(v < 0 for v in values)):
                raise FedquadError(
                    f"cost profile {name} = {list(values)}: give one value >= 0 per block ({n})"
                )
        for name in ("lora_params", "saved_bytes", "saved_bytes_bottom"):
            values = getattr(self, name)
            if len(values) != n:
                raise FedquadError(
                    f"cost profile {name} has {len(values)} entries: give one per block ({n})"
                )
            if any(v < 0 for v in values):
                raise FedquadError(f"cost profile {name} = {list(values)}: use values >= 0")
        for name in ("saved_bytes_quantized", "saved_bytes_bottom_quantized"):
            for bits, values in getattr(self, name).items():
                if len(values) != n or any(v < 0 for v in values):
                    raise FedquadError(
                        f"cost profile {name}[{bits}] = {list(values)}: "
                        f"give one value >= 0 per block ({n})"
                    )
        for bits, ratio in self.quant_ratio.items():
            if not 0 < ratio <= 1:
                raise FedquadError(
                    f"cost profile quant_ratio[{bits}] = {ratio} is not allowed: use 0 < ρ <= 1"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (bit widths become string keys, tuples lists)."""
        data = asdict(self)
        data["quant_ratio"] = {str(k): v for k, v in self.quant_ratio.items()}
        for name in ("lora_params", "saved_bytes", "saved_bytes_bottom", "lora_ranks"):
            data[name] = list(data[name])
        for name in _OPTIONAL_PER_BLOCK:
            data[name] = list(data[name])
        for name in ("saved_bytes_quantized", "saved_bytes_bottom_quantized"):
            data[name] = {str(k): list(v) for k, v in data[name].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostProfile:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise FedquadError(
                f"cost profile has unknown field {unknown[0]!r}: known fields are "
                f"{', '.join(sorted(known))}"
            )
        values = dict(data)
        values["quant_ratio"] = {int(k): float(v) for k, v in data["quant_ratio"].items()}
        for name in ("lora_params", "saved_bytes", "saved_bytes_bottom"):
            values[name] = tuple(int(v) for v in data[name])
        for name in _OPTIONAL_PER_BLOCK:
            values[name] = tuple(int(v) for v in data.get(name, ()))
        for name in ("saved_bytes_quantized", "saved_bytes_bottom_quantized"):
            values[name] = {int(k): tuple(int(x) for x in v) for k, v in data.get(name, {}).items()}
        return cls(**values)


_OPTIONAL_PER_BLOCK = (
    "lora_ranks",
    "saved_bytes_path",
    "saved_bytes_checkpointed",
    "saved_bytes_bottom_checkpointed",
)
"""Per-block profile fields that older profiles may lack (empty there)."""


@dataclass(frozen=True)
class StepComposition:
    """A tier's own mix of its full-depth unquantized step (docs/methods.md §6): forward ``F``,
    fixed cost ``C``, and backward ``1 - F - C`` spread evenly over the ``L`` blocks, plus
    ``o = quant_overhead·g`` per quantized block. Anchored so that the tier's full-depth step
    stays ``σ`` × the host's: a full-depth method times the same on every composition."""

    forward: float
    """``F``: share of the full-depth step that is the forward pass."""
    fixed: float = 0.0
    """``C``: share that is embeddings, head, loss and optimizer step."""
    quant_overhead: float = 0.25
    """``o`` as a multiple of a block's backward share ``g`` (ours)."""
    name: str | None = None
    """The built-in composition it is, if any (what a fleet file names)."""

    def __post_init__(self) -> None:
        where = f"step composition {self.name or ''}".rstrip()
        for key in ("forward", "fixed", "quant_overhead"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise FedquadError(f"{where} {key} = {value!r} is not allowed: use a number >= 0")
        if not self.forward + self.fixed < 1:
            raise FedquadError(
                f"{where} forward + fixed = {self.forward + self.fixed:g} is not allowed: "
                "use shares that leave the backward pass a part (< 1)"
            )


COMPOSITIONS = {"jetson": StepComposition(forward=0.65, fixed=0.0, name="jetson")}
"""Built-in step compositions. ``jetson``: the LEGEND prototype's Jetson per-step table, fitted
on its 12-block model (a depth-1 step costs 0.68 of a full-depth one); quantization ours."""


class LinkProfile(Protocol):
    """What :func:`round_time` needs of a device (``fleet.Device`` has it)."""

    @property
    def slowdown(self) -> float: ...
    @property
    def uplink(self) -> float: ...  # bytes/s
    @property
    def downlink(self) -> float: ...  # bytes/s


@dataclass(frozen=True)
class RoundTime:
    """Seconds of one device's round: ``total = compute + download + upload``."""

    compute: float
    download: float
    upload: float
    total: float


# --------------------------------------------------------------------------- helpers


def _span(profile: CostProfile, depth: int) -> range:
    if not 1 <= depth <= profile.num_blocks:
        raise FedquadError(
            f"depth {depth} is not allowed: use 1 to the number of blocks {profile.num_blocks}"
        )
    return range(profile.num_blocks - depth, profile.num_blocks)


def _quantized_set(span: range, quantized: int, position: str) -> set[int]:
    if not 0 <= quantized <= len(span):
        raise FedquadError(
            f"quantized blocks q = {quantized} is not allowed: use 0 to the depth {len(span)}"
        )
    if position not in ("bottom", "top"):
        raise FedquadError(f"quant_position = {position!r} is not allowed: use bottom or top")
    config = DeviceConfig(depth=len(span), quantized=quantized, quant_position=position)
    return set(config.quantized_blocks(span.stop))


def _ratio(profile: CostProfile, bits: int) -> float:
    if bits not in profile.quant_ratio:
        allowed = ", ".join(str(b) for b in sorted(profile.quant_ratio)) or "none profiled"
        raise FedquadError(f"bits = {bits} has no measured ratio in the profile: use {allowed}")
    return profile.quant_ratio[bits]


def _memory(
    profile: CostProfile, depth: int, quantized: int, bits: int, position: str = "bottom"
) -> int:
    span = _span(profile, depth)
    return _memory_of(profile, span, _quantized_set(span, quantized, position), bits)


def _memory_of(
    profile: CostProfile,
    span: range,
    quant: set[int],
    bits: int,
    trained: set[int] | None = None,
    rank: int | None = None,
    checkpointed: frozenset[int] = frozenset(),
) -> int:
    trained = set(span) if trained is None else trained
    # Trained LoRA: weight + grad (fp32) + optimizer state; other LoRA: weight only.
    per_trainable = 2 * FP32_BYTES + profile.optimizer_bytes_per_param
    lora = sum(
        _params(profile, block, rank) * (per_trainable if block in trained else FP32_BYTES)
        for block in range(profile.num_blocks)
    )
    fixed = profile.frozen_weight_bytes + profile.slack_bytes
    return fixed + lora + _saved_of(profile, span, quant, bits, trained, checkpointed)


def _params(profile: CostProfile, block: int, rank: int | None) -> int:
    """``P_l`` of a device holding the global LoRA truncated to ``rank`` (None: full ranks)."""
    full = profile.lora_params[block]
    if rank is None or full == 0:
        return full
    if not profile.lora_ranks:
        raise FedquadError(
            "this cost profile has no per-block ranks: it cannot price rank = " + str(rank)
        )
    global_rank = profile.lora_ranks[block]
    return full if rank >= global_rank else full * rank // global_rank


def _saved_of(
    profile: CostProfile,
    span: range,
    quant: set[int],
    bits: int,
    trained: set[int] | None = None,
    checkpointed: frozenset[int] = frozenset(),
) -> int:
    """``Σ_{l∈S\\Q} A_l + ρ_β·Σ_{l∈Q} A_l + A_head``: every saved-activation term of §3.

    Where the profile measured a block's quantized bytes at ``bits`` they replace ``ρ_β·A_l``;
    a checkpointed block is charged the measured bytes of its kept inputs instead of ``A_l``.
    """
    exact = profile.saved_bytes_quantized.get(bits) if quant else None
    exact_bottom = profile.saved_bytes_bottom_quantized.get(bits) if quant else None
    ratio = _ratio(profile, bits) if quant and (exact is None or exact_bottom is None) else 1.0
    total = profile.head_saved_bytes
    for block in span:
        bottom = block == span.start
        saved = profile.saved_bytes_bottom[block] if bottom else profile.saved_bytes[block]
        if trained is not None and block not in trained:
            total += profile.saved_bytes_path[block] if profile.saved_bytes_path else saved
        elif block in checkpointed:
            # the lowest checkpointed block is the first to keep what every block is given
            first = block == min(checkpointed)
            kept = (
                profile.saved_bytes_bottom_checkpointed
                if first
                else profile.saved_bytes_checkpointed
            )
            total += kept[block]
        elif block not in quant:
            total += saved
        elif exact is not None and exact_bottom is not None:
            total += exact_bottom[block] if bottom else exact[block]
        else:
            total += round(ratio * saved)  # per block, so the total is a whole number of bytes
    return total


# --------------------------------------------------------------------------- §3 formulas


def memory_bytes(profile: CostProfile, config: DeviceConfig) -> int:
    """``M_i(d, q)``: peak bytes of a device training ``config`` (docs/methods.md §3).

    The head's weights are counted in ``W`` like the base model's; §3 charges no gradient or
    optimizer state for the head.
    """
    span, trained, quant = _config_sets(profile, config)
    checkpointed = _checkpointed_set(profile, config)
    return _memory_of(profile, span, quant, config.bits, trained, config.rank, checkpointed)


def _config_sets(profile: CostProfile, config: DeviceConfig) -> tuple[range, set[int], set[int]]:
    """The span below the cut, the trained blocks and the quantized blocks, validated."""
    span = _span(profile, config.depth)
    _quantized_set(span, config.quantized, config.quant_position)  # validates q and position
    trained = set(config.trained_blocks(profile.num_blocks))
    if not trained <= set(span) or span.start not in trained:
        raise FedquadError(
            f"trained blocks {sorted(trained)} are not allowed with depth {config.depth}: "
            f"use blocks of {span.start} … {span.stop - 1} that include {span.start}"
        )
    if config.quantized > len(trained):
        raise FedquadError(
            f"quantized blocks q = {config.quantized} is more than the {len(trained)} trained"
        )
    # The trainer's own rule picks the quantized blocks, so the model and the meter agree.
    return span, trained, set(config.quantized_blocks(profile.num_blocks))


def _checkpointed_count(profile: CostProfile, config: DeviceConfig) -> int:
    """``k``, validated: at most the trained blocks that are not quantized."""
    k = config.checkpointed
    free = len(config.trained_blocks(profile.num_blocks)) - config.quantized
    if k != 0 and not 0 <= k <= free:
        raise FedquadError(
            f"checkpointed blocks k = {k} is not allowed: use 0 to the {free} trained blocks "
            "that are not quantized"
        )
    return k


def _checkpointed_set(profile: CostProfile, config: DeviceConfig) -> frozenset[int]:
    """The checkpointed blocks, by the trainer's own rule; validated, and priced by the
    profile."""
    if _checkpointed_count(profile, config) == 0:
        return frozenset()
    if not (profile.saved_bytes_checkpointed and profile.saved_bytes_bottom_checkpointed):
        raise FedquadError(
            "this cost profile has no checkpointed bytes: it cannot price checkpointed "
            "blocks (profile the workload again)"
        )
    return frozenset(config.checkpointed_blocks(profile.num_blocks))


def saved_bytes(profile: CostProfile, config: DeviceConfig) -> int:
    """Bytes ``config`` saves for backward in one step: the activation terms of ``M_i(d, q)``.

    The head's ``A_head`` is included, as the trainer's saved-tensor meter counts the head in its
    total; comparing this with a measured total gives a device's memory factor.
    """
    span, trained, quant = _config_sets(profile, config)
    checkpointed = _checkpointed_set(profile, config)
    return _saved_of(profile, span, quant, config.bits, trained, checkpointed)


def step_seconds(
    profile: CostProfile,
    config: DeviceConfig,
    slowdown: float = 1.0,
    composition: StepComposition | None = None,
) -> float:
    """``t_i(d, q, k) = σ·(L·f + d·g + q·o + k·f + c)``: one local step.

    Each of the ``k`` checkpointed blocks runs its forward once more in backward: one more
    ``f`` (docs/methods.md §4.4). With a tier's ``composition`` the same full-depth step
    ``σ·(L·f + L·g + c)`` is split by the tier's shares instead of the host's:
    ``σ·T_full·(F + C + d·g' + q·o' + k·F/L)`` with ``g' = (1 - F - C)/L`` and
    ``o' = quant_overhead·g'`` (docs/methods.md §6)."""
    _quantized_set(_span(profile, config.depth), config.quantized, config.quant_position)
    k = _checkpointed_count(profile, config)
    n = profile.num_blocks
    if composition is None:
        return slowdown * (
            n * profile.f
            + config.depth * profile.g
            + config.quantized * profile.o
            + k * profile.f
            + profile.c
        )
    full = n * profile.f + n * profile.g + profile.c
    backward = (1 - composition.forward - composition.fixed) / n
    share = (
        composition.forward
        + composition.fixed
        + config.depth * backward
        + config.quantized * composition.quant_overhead * backward
        + k * composition.forward / n
    )
    return slowdown * full * share


def device_step_seconds(profile: CostProfile, config: DeviceConfig, device: LinkProfile) -> float:
    """:func:`step_seconds` of ``device``: its slowdown and its tier's composition, if any."""
    return step_seconds(profile, config, device.slowdown, getattr(device, "composition", None))


def upload_bytes(profile: CostProfile, config: DeviceConfig | int) -> int:
    """``up(d) = 4·(Σ_{l∈S} P_l + P_head)``: the trained LoRA (at the device's rank) and the
    head, fp32. An int is a depth with every block of its span trained at full rank."""
    if isinstance(config, int):
        config = DeviceConfig(depth=config)
    _, trained, _ = _config_sets(profile, config)
    lora = sum(_params(profile, b, config.rank) for b in trained)
    return FP32_BYTES * (lora + profile.head_params)


def download_bytes(profile: CostProfile, config: DeviceConfig | None = None) -> int:
    """``down = 4·(Σ_l P_l + P_head)``: every device receives the whole global LoRA (frozen
    blocks below its cut run in its forward) and the head; the blocks it trains at its rank
    when it has one."""
    rank = None if config is None else config.rank
    trained = set() if config is None or rank is None else _config_sets(profile, config)[1]
    lora = sum(
        _params(profile, b, rank if b in trained else None) for b in range(profile.num_blocks)
    )
    return FP32_BYTES * (lora + profile.head_params)


def round_time(
    profile: CostProfile, config: DeviceConfig, device: LinkProfile, local_steps: int
) -> RoundTime:
    """``T_i = τ·t_i(d,q) + down/β_down + up(d)/β_up`` for one device."""
    if local_steps < 1:
        raise FedquadError(f"local_steps = {local_steps} is not allowed: use >= 1")
    if device.uplink <= 0 or device.downlink <= 0:
        raise FedquadError(
            f"bandwidth up={device.uplink}, down={device.downlink} B/s is not allowed: use > 0"
        )
    compute = local_steps * device_step_seconds(profile, config, device)
    down = download_bytes(profile, config) / device.downlink
    up = upload_bytes(profile, config) / device.uplink
    return RoundTime(compute=compute, download=down, upload=up, total=compute + down + up)


def full_footprint(profile: CostProfile, rank: int | None = None) -> int:
    """``M(L, 0)``: full depth, nothing quantized. Fractional memory budgets multiply this.

    With ``rank``, the footprint of uniform rank ``rank`` on every block (LoRA parameters scale
    linearly with the rank): the same reference for every method, whatever its own ranks.
    """
    if rank is None:
        return _memory(profile, profile.num_blocks, 0, bits=8)
    per_rank = [p / r for p, r in zip(profile.lora_params, profile.lora_ranks, strict=False) if r]
    if not per_rank:
        raise FedquadError("this cost profile has no per-block ranks: give no reference rank")
    # blocks are alike: a block without LoRA here gets the mean per-rank count of the others
    params = round(rank * sum(per_rank) / len(per_rank))
    actual = sum(profile.lora_params)
    per_trainable = 2 * FP32_BYTES + profile.optimizer_bytes_per_param
    delta = (params * profile.num_blocks - actual) * per_trainable
    return _memory(profile, profile.num_blocks, 0, bits=8) + delta


def fewest_that_fit(memory: Callable[[int], float], limit: float, most: int) -> int | None:
    """The fewest ``k`` in ``0 … most`` with ``memory(k) ≤ limit``, or None if none does.

    ``k`` is whatever lowers memory as it grows (quantized blocks of a depth, checkpointed
    blocks of a config): the planner's ``q_min``, :func:`min_quantized` and a baseline's
    checkpointed blocks (``planner.infeasible = "checkpoint"``) all search with it.
    """
    for k in range(most + 1):
        if memory(k) <= limit:
            return k
    return None


def deepest_that_fits(memory: Callable[[int], float], limit: float, deepest: int) -> int | None:
    """The largest depth ``d`` in ``1 … deepest`` with ``memory(d) ≤ limit``, or None.

    Every depth is checked rather than stopping at the first failure: the bottom-block
    measurement can make memory non-monotone in ``d``.
    """
    best = None
    for depth in range(1, deepest + 1):
        if memory(depth) <= limit:
            best = depth
    return best


def min_quantized(
    profile: CostProfile,
    depth: int,
    budget_bytes: int,
    kappa: float = 0.1,
    bits: int = 8,
    quant_position: str = "bottom",
) -> int | None:
    """``q_min(d)``: fewest quantized blocks that fit ``(1-κ)·budget``, or None if none does."""
    _check_kappa(kappa)
    return fewest_that_fit(
        lambda q: _memory(profile, depth, q, bits, quant_position),
        (1 - kappa) * budget_bytes,
        depth,
    )


def largest_feasible_depth(
    profile: CostProfile,
    budget_bytes: int,
    kappa: float = 0.1,
    quantize: bool = False,
    bits: int = 8,
    max_depth: int | None = None,
    quant_position: str = "bottom",
) -> int | None:
    """Deepest ``d ≤ max_depth`` (default ``L``) with ``M(d, q) ≤ (1-κ)·budget``, or None.

    Without ``quantize`` the test uses ``q = 0``; with it, ``q = d`` (every trainable block
    quantized: the least memory a depth can take).
    """
    _check_kappa(kappa)
    top = profile.num_blocks if max_depth is None else max_depth
    if not 1 <= top <= profile.num_blocks:
        raise FedquadError(
            f"max_depth = {top} is not allowed: use 1 to the number of blocks {profile.num_blocks}"
        )
    return deepest_that_fits(
        lambda d: _memory(profile, d, d if quantize else 0, bits, quant_position),
        (1 - kappa) * budget_bytes,
        top,
    )


def _check_kappa(kappa: float) -> None:
    if not 0 <= kappa < 1:
        raise FedquadError(f"safety margin kappa = {kappa} is not allowed: use 0 <= kappa < 1")


# --------------------------------------------------------------------------- calibration


def fit_times(
    samples: Sequence[tuple[int, int, float]],
    num_blocks: int,
    forward_per_block: float | None = None,
) -> tuple[float, float, float, float]:
    """Least-squares ``(f, g, o, c)`` from measured steps ``(depth, q, seconds)``.

    Step times alone only identify ``g``, ``o`` and the sum ``K = L·f + c``: every step runs all
    ``L`` forwards. With a measured ``forward_per_block`` we pin ``f`` and set ``c = K - L·f``;
    without it we return ``f = 0`` and ``c = K``, which predicts the same step times for this ``L``.
    If no sample is quantized, ``o`` is unidentifiable and returned as 0. With samples at one
    depth only (a global LoRA depth of 1, the only depth any device can have), ``g`` is folded
    into the constant and returned as 0: the predictions at that depth are the same.
    """
    if num_blocks < 1:
        raise FedquadError(f"num_blocks = {num_blocks} is not allowed: use >= 1")
    if not samples:
        raise FedquadError("fit_times got no samples: time at least one step")
    data = np.asarray(samples, dtype=float)
    depth, quant, seconds = data[:, 0], data[:, 1], data[:, 2]
    with_depth = len(set(depth.tolist())) > 1
    with_quant = bool(np.any(quant > 0))
    columns = [c for c, used in ((depth, with_depth), (quant, with_quant)) if used]
    design = np.column_stack([*columns, np.ones_like(depth)])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise FedquadError(
            "fit_times samples do not separate depth from quantized blocks: "
            "vary q independently of d"
        )
    coef, *_ = np.linalg.lstsq(design, seconds, rcond=None)
    g = float(coef[0]) if with_depth else 0.0
    o = float(coef[int(with_depth)]) if with_quant else 0.0
    constant = float(coef[-1])
    f = 0.0 if forward_per_block is None else float(forward_per_block)
    return f, g, o, constant - num_blocks * f
