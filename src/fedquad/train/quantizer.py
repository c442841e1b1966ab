"""Group-wise stochastic quantization of the tensors autograd saves for backward.

A tensor is flattened (logical, row-major order) and cut into groups of ``group_size`` elements
(the last group may be shorter). Each group ``g`` gets an asymmetric min-max grid
``minimum_g + k * scale_g`` with ``k`` in ``[0, 2**bits - 1]``; ``scale`` and ``minimum`` are
stored in float16 and the integer codes ``k`` are bit-packed into uint8 (1, 2 or 4 codes per
byte for 8, 4 or 2 bits).

Codes are computed against the *stored* float16 ``minimum``/``scale`` (the minimum is rounded
down and the scale up after the cast, so the grid still covers the group), and rounded
stochastically: ``k = floor((x - minimum) / scale + u)`` with ``u`` uniform in ``(0, 1)``, so
``E[dequantize(quantize(x))] = x`` and every element is off by less than one ``scale``.

The dither ``u`` takes 16-bit values ``(j + 1/2) / 2**16`` drawn from the given generator:
drawing 64-bit words and splitting them is ~4x cheaper than ``torch.rand``, and the resulting
bias (< ``2**-17`` of a step) is below float32 resolution of ``(x - minimum) / scale + u``.

Limits (float16 storage of the group parameters):

- a group minimum below ``-65504`` or above ``65504``, or a step above ``65504``, is clamped
  to that range, so such groups saturate (codes are clamped) and the error bound no longer
  holds for them; ``+-inf`` inputs are handled the same way;
- a group holding a NaN dequantizes to NaN for the whole group;
- tiny steps fall into float16 subnormals: they are rounded up, so the group is still covered,
  only with a coarser grid than the bit width would allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_ALLOWED_BITS = (8, 4, 2)
_FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
_DITHER_STEP = 2.0**-16
# int16 dither j in [-2**15, 2**15 - 1] -> u = (j + 2**15 + 1/2) / 2**16 in (0, 1)
_DITHER_OFFSET = (2.0**15 + 0.5) * _DITHER_STEP


@dataclass(frozen=True)
class QuantSpec:
    """Bit width and group size of the quantizer."""

    bits: int = 8
    group_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in _ALLOWED_BITS:
            raise ValueError(f"bits={self.bits!r} is not supported; allowed: {_ALLOWED_BITS}")
        if (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 1
        ):
            raise ValueError(f"group_size={self.group_size!r} must be an integer >= 1")

    def bytes_per_element(self) -> float:
        """Bytes held per element: packed code plus the fp16 scale and minimum of its group."""
        return self.bits / 8 + 4 / self.group_size


@dataclass
class QuantizedTensor:
    """Packed codes plus what is needed to rebuild the tensor."""

    codes: torch.Tensor
    """uint8, ``ceil(numel * bits / 8)`` bytes of packed codes."""
    scale: torch.Tensor
    """float16, one step per group."""
    minimum: torch.Tensor
    """float16, one grid origin per group."""
    shape: torch.Size
    dtype: torch.dtype
    numel: int
    spec: QuantSpec

    @property
    def nbytes(self) -> int:
        """Bytes really held by the codes, scale and minimum storages."""
        return sum(t.untyped_storage().nbytes() for t in (self.codes, self.scale, self.minimum))

    def dequantize(self) -> torch.Tensor:
        """Rebuild a tensor of the original shape and dtype (computed in float32)."""
        with torch.no_grad():
            return _dequantize(self)


def _codes_per_byte(bits: int) -> int:
    if bits not in _ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; allowed: {_ALLOWED_BITS}")
    return 8 // bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (each ``< 2**bits``, not checked) into ``ceil(n * bits / 8)`` bytes.

    Code ``i`` goes to byte ``i // (8 // bits)`` at bit offset ``bits * (i % (8 // bits))``.
    """
    per_byte = _codes_per_byte(bits)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if per_byte == 1:
        return flat.clone()  # never alias the caller's tensor
    n = flat.numel()
    rem = n % per_byte
    if rem:  # zero-pad to whole bytes (cheap: codes are already small)
        flat = torch.cat([flat, flat.new_zeros(per_byte - rem)])
    lanes = flat.view(-1, per_byte)
    packed = lanes[:, 0].clone()
    for lane in range(1, per_byte):  # at most 3 vectorised passes, not a loop over elements
        packed |= lanes[:, lane] << (bits * lane)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes as a flat uint8 tensor."""
    per_byte = _codes_per_byte(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    flat = packed.reshape(-1)
    if numel > flat.numel() * per_byte:
        raise ValueError(f"numel={numel} exceeds the {flat.numel() * per_byte} packed codes")
    if per_byte == 1:
        return flat[:numel]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=flat.device)
    codes = (flat.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.view(-1)[:numel]


def _group_params(
    mn: torch.Tensor, mx: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 minimum (rounded down) and scale (rounded up) covering ``[mn, mx]`` per group."""
    # per-group work only (numel / group_size values): float64 makes it exact before the cast
    mn64 = mn.double().clamp(-_FP16_MAX, _FP16_MAX)
    minimum = mn64.to(torch.float16)
    down = torch.full_like(minimum, -math.inf)
    minimum = torch.where(minimum.double() > mn64, torch.nextafter(minimum, down), minimum)
    span = mx.double() - minimum.double()
    scale64 = (span / levels).clamp(0.0, _FP16_MAX)
    scale = scale64.to(torch.float16)
    up = torch.full_like(scale, math.inf)
    scale = torch.where(scale.double() < scale64, torch.nextafter(scale, up), scale)
    return minimum, scale


def _encode(
    groups: torch.Tensor,
    minimum: torch.Tensor,
    scale: torch.Tensor,
    dither: torch.Tensor,
    levels: int,
    out: torch.Tensor,
    finite: bool,
) -> None:
    """Write the stochastically rounded codes of ``groups`` (rows = groups) into ``out``."""
    mn = minimum.float().unsqueeze(1)
    s = scale.float().unsqueeze(1)
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))  # constant group -> code 0
    t = groups - mn  # fresh buffer: the input is never written
    t.mul_(inv)
    t.add_(dither, alpha=_DITHER_STEP).add_(_DITHER_OFFSET)
    if not finite:  # NaN (from NaN, or inf * 0) -> uint8 is undefined: use code 0
        t.nan_to_num_(0.0)
    t.clamp_(0, levels)  # guards float rounding at the top of the grid and +-inf
    out.copy_(t)  # float -> uint8 truncates, i.e. floor for t >= 0


def _split(n: int, g: int) -> list[tuple[int, int, int]]:
    """``(start, rows, cols)`` of the whole groups and of the short last group, if any."""
    full, tail = divmod(n, g)
    parts = [(0, full, g)] if full else []
    if tail:
        parts.append((full * g, 1, tail))
    return parts


def quantize(
    x: torch.Tensor, spec: QuantSpec, generator: torch.Generator | None = None
) -> QuantizedTensor:
    """Quantize a floating tensor group-wise (see the module docstring).

    ``generator`` drives the stochastic rounding (the default generator if ``None``); it must
    live on ``x``'s device. ``x`` is read only, and may be non-contiguous.
    """
    if not x.is_floating_point():
        raise TypeError(f"quantize expects a floating tensor, got {x.dtype}")
    with torch.no_grad():
        return _quantize(x, spec, generator)


def _quantize(
    x: torch.Tensor, spec: QuantSpec, generator: torch.Generator | None
) -> QuantizedTensor:
    bits, levels, per_byte = spec.bits, (1 << spec.bits) - 1, 8 // spec.bits
    numel = x.numel()
    # no copy for contiguous fp32, else one copy in logical order (``.to`` alone keeps the
    # strides of a same-dtype tensor, so fp32 goes through ``reshape``)
    if x.dtype == torch.float32:
        flat = x.reshape(-1)
    else:
        flat = x.to(torch.float32, memory_format=torch.contiguous_format).reshape(-1)
    # no padding copy: the whole groups and the short last group are two views of ``flat``
    parts = [
        (start, flat[start : start + r * c].view(r, c))
        for start, r, c in _split(numel, spec.group_size)
    ]
    mn = torch.cat([p.amin(1) for _, p in parts]) if parts else flat.new_empty(0)
    mx = torch.cat([p.amax(1) for _, p in parts]) if parts else flat.new_empty(0)
    minimum, scale = _group_params(mn, mx, levels)
    finite = bool(torch.isfinite(mn).all() and torch.isfinite(mx).all())

    # one int16 dither per element, carved out of full-range 64-bit draws
    words = torch.empty(math.ceil(numel / 4), dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None, generator=generator)
    dither = words.view(torch.int16)

    # codes land directly in a buffer already padded to whole bytes
    codes = torch.empty(math.ceil(numel / per_byte) * per_byte, dtype=torch.uint8, device=x.device)
    codes[numel:].zero_()  # unused bits of the last byte: deterministic, not garbage
    row = 0
    for start, groups in parts:  # at most two parts, not a loop over groups
        rows, cols = groups.shape
        end = start + rows * cols
        _encode(
            groups,
            minimum[row : row + rows],
            scale[row : row + rows],
            dither[start:end].view(rows, cols),
            levels,
            codes[start:end].view(rows, cols),
            finite,
        )
        row += rows
    packed = codes if per_byte == 1 else pack_codes(codes, bits)
    return QuantizedTensor(
        codes=packed,
        scale=scale,
        minimum=minimum,
        shape=x.shape,
        dtype=x.dtype,
        numel=numel,
        spec=spec,
    )


def _dequantize(q: QuantizedTensor) -> torch.Tensor:
    codes = unpack_codes(q.codes, q.spec.bits, q.numel)
    out = torch.empty(q.numel, dtype=torch.float32, device=q.codes.device)
    mn = q.minimum.float().unsqueeze(1)
    s = q.scale.float().unsqueeze(1)
    row = 0
    for start, rows, cols in _split(q.numel, q.spec.group_size):
        end = start + rows * cols
        dst = out[start:end].view(rows, cols)
        dst.copy_(codes[start:end].view(rows, cols))
        # code * scale is exact (<= 8 + 11 bits), so only the addition rounds
        dst.mul_(s[row : row + rows]).add_(mn[row : row + rows])
        row += rows
    return out.view(q.shape).to(q.dtype)
