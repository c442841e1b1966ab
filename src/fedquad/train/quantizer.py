"""Group-wise stochastic quantization of the tensors autograd saves for backward.

A tensor is flattened (logical, row-major order) and cut into groups of ``group_size`` elements
(the last group may be shorter). Each group ``g`` gets an asymmetric min-max grid
``minimum_g + k * scale_g`` with ``k`` in ``[0, 2**bits - 1]``; ``scale`` and ``minimum`` are
stored in float16 and the integer codes ``k`` are bit-packed into uint8 (1, 2 or 4 codes per
byte for 8, 4 or 2 bits).

Codes are computed against the *stored* float16 ``minimum``/``scale`` (the minimum is rounded
down and the scale up after the cast, so the grid still covers the group), and rounded
stochastically: ``k = floor((x - minimum) / scale + u)`` with ``u`` uniform in ``(0, 1)``, so
``E[dequantize(quantize(x))] = x`` and every element is off by less than one ``scale``. The
same generator state gives the same codes. All arithmetic is float32 (float64 for the few
per-group values); ``dequantize`` casts back to the input dtype. Low-precision inputs (bf16
activations under autocast) are read in float32; held against their 2-byte elements, 8-bit
codes and group parameters are ``(1 + 4/128) / 2`` ≈ 0.52 of the bytes, not 0.26 as against
float32. Tensors
and the generator live on one device (CPU or accelerator): codes, scales and the dither are
made where the tensor is.

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
import sys
from dataclasses import dataclass

import torch

_ALLOWED_BITS = (8, 4, 2)
_LITTLE_ENDIAN = sys.byteorder == "little"
_BLOCK = 1 << 18  # elements per block of whole groups (1 MiB of float32 temporaries)
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
        if (
            not isinstance(self.bits, int)
            or isinstance(self.bits, bool)
            or self.bits not in _ALLOWED_BITS
        ):
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


def quantized_nbytes(numel: int, spec: QuantSpec) -> int:
    """Bytes :func:`quantize` holds for ``numel`` elements: packed codes, fp16 scale and minimum."""
    groups = math.ceil(numel / spec.group_size)
    return math.ceil(numel / (8 // spec.bits)) + 2 * 2 * groups


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
    rem = flat.numel() % per_byte
    if rem:  # zero-pad to whole bytes
        flat = torch.cat([flat, flat.new_zeros(per_byte - rem)])
    if not _LITTLE_ENDIAN:
        return _pack_lanes(flat, bits)
    if flat.storage_offset() % per_byte:  # a wider view needs an aligned start
        flat = flat.clone()
    # uint8 shifts are slow on CPU: read the bytes of one output as one int16/int32 word and
    # fold them down with word-wide shifts (~8x faster); the low byte is the packed byte
    if bits == 4:
        w = flat.view(torch.int16)  # b0 | b1 << 8
        return (w | (w >> 4)).to(torch.uint8)  # low byte: b0 | b1 << 4
    w = flat.view(torch.int32)  # b0 | b1 << 8 | b2 << 16 | b3 << 24
    w = w | (w >> 6)  # byte 0: b0 | b1 << 2, byte 2: b2 | b3 << 2
    return (w | (w >> 12)).to(torch.uint8)  # byte 0: b0 | b1 << 2 | b2 << 4 | b3 << 6


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
    if not _LITTLE_ENDIAN:
        return _unpack_lanes(flat, bits)[:numel]
    # spread each byte over one int16/int32 word, one code per byte, with word-wide ops
    if bits == 4:
        w = flat.to(torch.int16)
        w.bitwise_or_(w << 4).bitwise_and_(0x0F0F)  # byte 0: low nibble, byte 1: high nibble
    else:
        w = flat.to(torch.int32)
        w.bitwise_or_(w << 12).bitwise_and_(0x000F000F)  # nibbles to bytes 0 and 2
        w.bitwise_or_(w << 6).bitwise_and_(0x03030303)  # 2-bit fields to bytes 0..3
    return w.view(torch.uint8)[:numel]


def _pack_lanes(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Byte-order independent (slower) packing of a padded flat uint8 tensor."""
    lanes = flat.view(-1, 8 // bits)
    packed = lanes[:, 0].clone()
    for lane in range(1, 8 // bits):  # at most 3 vectorised passes
        packed |= lanes[:, lane] << (bits * lane)
    return packed


def _unpack_lanes(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Byte-order independent (slower) inverse of :func:`_pack_lanes`."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=flat.device)
    return ((flat.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).view(-1)


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
    """Write the stochastically rounded codes of ``groups`` (rows = groups) into ``out``.

    ``dither`` (int16, same shape) is consumed, then reused as scratch for the codes.
    """
    mn = minimum.float().unsqueeze(1)
    s = scale.float().unsqueeze(1)
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))  # constant group -> code 0
    t = groups - mn  # fresh buffer: the input is never written
    t.mul_(inv)
    t.add_(dither, alpha=_DITHER_STEP).add_(_DITHER_OFFSET)
    if not finite:  # NaN (from NaN, or inf * 0) -> uint8 is undefined: use code 0
        t.nan_to_num_(0.0)
    t.clamp_(0, levels)  # guards float rounding at the top of the grid and +-inf
    # float -> int truncates, i.e. floors t >= 0; going through int16 (the spent dither) is
    # ~4x faster on CPU than a direct float -> uint8 cast
    dither.copy_(t)
    out.copy_(dither)


def _blocks(n: int, g: int) -> list[tuple[int, int, int, int]]:
    """``(start, rows, cols, first_group)`` blocks covering ``n`` elements in groups of ``g``.

    Whole groups come in blocks of about ``_BLOCK`` elements, the short last group alone: the
    temporaries of one block stay in cache and are recycled by the allocator, which is ~2x
    faster than full-size temporaries (fresh pages) for activation-sized tensors.
    """
    full, tail = divmod(n, g)
    step = max(1, _BLOCK // g)
    blocks = [(r * g, min(step, full - r), g, r) for r in range(0, full, step)]
    if tail:
        blocks.append((full * g, 1, tail, full))
    return blocks


def quantize(
    x: torch.Tensor, spec: QuantSpec, generator: torch.Generator | None = None
) -> QuantizedTensor:
    """Quantize a floating tensor group-wise (see the module docstring).

    ``generator`` drives the stochastic rounding (the default generator if ``None``); it must
    live on ``x``'s device. ``x`` is read only, and may be non-contiguous.
    """
    if not x.is_floating_point():
        raise TypeError(f"quantize expects a floating tensor, got {x.dtype}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"the generator lives on {generator.device} but the tensor on {x.device}: "
            "create the generator on the tensor's device"
        )
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
    # no padding copy: every block, the short last group included, is a view of ``flat``
    blocks = _blocks(numel, spec.group_size)
    views = [flat[b : b + r * c].view(r, c) for b, r, c, _ in blocks]
    mn = torch.cat([v.amin(1) for v in views]) if views else flat.new_empty(0)
    mx = torch.cat([v.amax(1) for v in views]) if views else flat.new_empty(0)
    if x.device.type == "mps":  # no float64 there: the few per-group values go via the host
        minimum, scale = (t.to(x.device) for t in _group_params(mn.cpu(), mx.cpu(), levels))
    else:
        minimum, scale = _group_params(mn, mx, levels)
    finite = bool(torch.isfinite(mn).all() and torch.isfinite(mx).all())

    # one int16 dither per element, carved out of full-range 64-bit draws
    words = torch.empty(math.ceil(numel / 4), dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None, generator=generator)
    dither = words.view(torch.int16)

    # codes land directly in a buffer already padded to whole bytes
    codes = torch.empty(math.ceil(numel / per_byte) * per_byte, dtype=torch.uint8, device=x.device)
    codes[numel:].zero_()  # unused bits of the last byte: deterministic, not garbage
    for (b, r, c, first), groups in zip(blocks, views, strict=True):
        _encode(
            groups,
            minimum[first : first + r],
            scale[first : first + r],
            dither[b : b + r * c].view(r, c),
            levels,
            codes[b : b + r * c].view(r, c),
            finite,
        )
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
    for b, r, c, first in _blocks(q.numel, q.spec.group_size):
        dst = out[b : b + r * c].view(r, c)
        dst.copy_(codes[b : b + r * c].view(r, c))
        # code * scale is exact (<= 8 + 11 bits), so only the addition rounds
        dst.mul_(s[first : first + r]).add_(mn[first : first + r])
    return out.view(q.shape).to(q.dtype)
