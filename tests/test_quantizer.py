"""Tests of the group-wise stochastic quantizer of saved activations."""

from __future__ import annotations

import math

import pytest
import torch

from fedquad.train import quantizer
from fedquad.train.quantizer import (
    QuantizedTensor,
    QuantSpec,
    _pack_lanes,
    _unpack_lanes,
    pack_codes,
    quantize,
    unpack_codes,
)

BITS = (8, 4, 2)
FP16_TINY = 2.0**-24  # smallest fp16 subnormal: spacing of the fp16 grid near 0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def group_stats(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference per-group min and max (float64), by plain slicing."""
    chunks = torch.split(x.detach().reshape(-1).double(), g)
    return torch.stack([c.min() for c in chunks]), torch.stack([c.max() for c in chunks])


def per_element(values: torch.Tensor, g: int, numel: int) -> torch.Tensor:
    return values.double().repeat_interleave(g)[:numel]


def fp16_ulp(v: torch.Tensor) -> torch.Tensor:
    """Spacing of the fp16 grid at ``v`` (float64)."""
    h = v.to(torch.float16)
    up = torch.nextafter(h, torch.full_like(h, math.inf)).double()
    return (up - h.double()).abs().clamp_min(FP16_TINY)


def check_error_bound(x: torch.Tensor, q: QuantizedTensor, out_rel_tol: float = 0.0) -> None:
    """Every element is within one step (of its group) of the input, plus rounding slack."""
    g = q.spec.group_size
    ref = x.detach().reshape(-1).double()
    deq = q.dequantize().reshape(-1).double()
    step = per_element(q.scale, g, q.numel)
    # slack: float32 arithmetic of codes and output, and the output dtype's own rounding
    slack = step * 1e-4 + ref.abs() * (4e-7 + out_rel_tol) + 1e-30
    err = (deq - ref).abs()
    assert torch.all(err <= step + slack), f"max excess {(err - step - slack).max().item()}"


def check_group_params(x: torch.Tensor, q: QuantizedTensor) -> None:
    """Stored fp16 grid covers each group, and its step is not needlessly coarse."""
    levels = 2**q.spec.bits - 1
    mn, mx = group_stats(x, q.spec.group_size)
    lo = q.minimum.double()
    step = q.scale.double()
    assert torch.all(lo <= mn)
    assert torch.all(lo + levels * step >= mx)
    # tight: min is at most one fp16 ulp below, step at most one fp16 rounding above
    assert torch.all(mn - lo <= fp16_ulp(mn))
    tight = (mx - mn + fp16_ulp(mn)) / levels * (1 + 2.0**-10) + FP16_TINY
    assert torch.all(step <= tight)


# ---------------------------------------------------------------- spec


def test_spec_rejects_bad_bits() -> None:
    with pytest.raises(ValueError, match=r"bits=3.*\(8, 4, 2\)"):
        QuantSpec(bits=3)


def test_spec_rejects_non_integer_bits() -> None:
    with pytest.raises(ValueError, match=r"bits=8\.0"):
        QuantSpec(bits=8.0)  # type: ignore[arg-type]


def test_spec_rejects_bad_group_size() -> None:
    with pytest.raises(ValueError, match=r"group_size=0.*>= 1"):
        QuantSpec(group_size=0)


def test_spec_bytes_per_element() -> None:
    assert QuantSpec(bits=8, group_size=128).bytes_per_element() == pytest.approx(1 + 4 / 128)
    assert QuantSpec(bits=2, group_size=64).bytes_per_element() == pytest.approx(0.25 + 4 / 64)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [1, 3, 7, 1001])
def test_pack_unpack_round_trip(bits: int, numel: int) -> None:
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8, generator=gen(numel))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(numel * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_pack_layout_is_little_endian_within_a_byte() -> None:
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [0x21, 0x03]
    assert pack_codes(codes, 2).tolist() == [0b00_11_10_01]


@pytest.mark.parametrize("bits", [4, 2])
def test_pack_accepts_strided_and_offset_codes(bits: int) -> None:
    big = torch.randint(0, 2**bits, (2, 41), dtype=torch.uint8, generator=gen(20))
    for codes in (big[0, 1:], big[:, ::3], big.t()):  # odd storage offset, strided, transposed
        packed = pack_codes(codes, bits)
        assert torch.equal(unpack_codes(packed, bits, codes.numel()), codes.reshape(-1))


@pytest.mark.parametrize("bits", [4, 2])
def test_word_wide_packing_matches_byte_order_free_fallback(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (4000,), dtype=torch.uint8, generator=gen(21))
    packed = pack_codes(codes, bits)
    assert torch.equal(packed, _pack_lanes(codes, bits))
    assert torch.equal(_unpack_lanes(packed, bits), codes)


def test_pack_does_not_alias_its_input() -> None:
    codes = torch.arange(10, dtype=torch.uint8)
    packed = pack_codes(codes, 8)
    packed[0] = 99
    assert codes[0] == 0


# ---------------------------------------------------------------- quantize / dequantize


def _inputs() -> dict[str, torch.Tensor]:
    g = gen(1)
    base = torch.randn(6, 50, 13, generator=g)  # 3900 = 30 * 128 + 60: short last group
    return {
        "random": torch.randn(4, 256, generator=g) * 3,
        "ragged": base,
        "transposed": base.transpose(0, 2),  # non-contiguous
        "strided": torch.randn(40, 90, generator=g)[::3, 1::2],  # non-contiguous, ragged
        "offset": 1000 + 0.01 * torch.randn(1000, generator=g),  # min far from zero
        "tiny": 1e-6 * torch.randn(500, generator=g),  # steps in fp16 subnormals
        "constant": torch.full((300,), 0.1),  # 0.1 is not an fp16 number
        "mixed": torch.cat([torch.full((128,), 2.5), torch.randn(200, generator=g)]),
    }


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", list(_inputs()))
def test_round_trip_within_one_step(bits: int, name: str) -> None:
    x = _inputs()[name]
    before = x.clone()
    spec = QuantSpec(bits=bits)
    q = quantize(x, spec, gen(2))
    y = q.dequantize()
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(x, before)  # input untouched
    groups = math.ceil(x.numel() / spec.group_size)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == math.ceil(x.numel() * bits / 8)
    assert q.scale.dtype == torch.float16 and q.scale.shape == (groups,)
    assert q.minimum.dtype == torch.float16 and q.minimum.shape == (groups,)
    check_group_params(x, q)
    check_error_bound(x, q)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [1, 3, 5, 128])
def test_group_sizes_not_aligned_to_bytes(bits: int, group_size: int) -> None:
    x = torch.randn(203, generator=gen(3))
    q = quantize(x, QuantSpec(bits=bits, group_size=group_size), gen(4))
    check_group_params(x, q)
    check_error_bound(x, q)


@pytest.mark.parametrize("bits", BITS)
def test_blocking_does_not_change_the_result(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(7, 333, generator=gen(22))  # 2331 = 23 groups of 100 + 31
    spec = QuantSpec(bits=bits, group_size=100)
    whole = quantize(x, spec, gen(23))
    monkeypatch.setattr(quantizer, "_BLOCK", 250)  # blocks of 2 groups, then the short one
    blocked = quantize(x, spec, gen(23))
    assert torch.equal(whole.codes, blocked.codes)
    assert torch.equal(whole.scale, blocked.scale)
    assert torch.equal(whole.minimum, blocked.minimum)
    assert torch.equal(whole.dequantize(), blocked.dequantize())
    check_error_bound(x, blocked)


def test_constant_groups() -> None:
    exact = torch.full((3, 128), -2.5)  # fp16-representable: zero step, exact round trip
    q = quantize(exact, QuantSpec(bits=4), gen())
    assert torch.all(q.scale == 0)
    assert torch.equal(q.dequantize(), exact)

    inexact = torch.full((256,), 0.1)  # not fp16: as close as the fp16 grid allows
    q = quantize(inexact, QuantSpec(bits=2), gen())
    err = (q.dequantize().double() - 0.1).abs()
    assert torch.all(err <= fp16_ulp(torch.tensor(0.1, dtype=torch.float64)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", BITS)
def test_low_precision_inputs_round_trip(dtype: torch.dtype, bits: int) -> None:
    x = (torch.randn(5, 77, generator=gen(5)) * 4).to(dtype)
    q = quantize(x, QuantSpec(bits=bits), gen(6))
    y = q.dequantize()
    assert y.dtype == dtype and y.shape == x.shape
    check_group_params(x, q)
    check_error_bound(x, q, out_rel_tol=torch.finfo(dtype).eps)


def test_empty_tensor() -> None:
    q = quantize(torch.empty(0, 4), QuantSpec(bits=4), gen())
    assert q.dequantize().shape == (0, 4)
    assert q.nbytes == 0


def test_rejects_integer_input() -> None:
    with pytest.raises(TypeError):
        quantize(torch.arange(10), QuantSpec(), gen())


def test_non_finite_values_stay_in_their_group() -> None:
    x = torch.randn(4, 128, generator=gen(7))
    x[1, 5] = math.nan
    x[2, 7] = math.inf
    x[3, :] = -math.inf
    q = quantize(x, QuantSpec(bits=4), gen(8))
    y = q.dequantize()
    assert torch.all(torch.isnan(y[1]))  # NaN poisons its own group only
    assert torch.all(torch.isfinite(y[[0, 2, 3]]))
    assert y[2, 7] >= 65504  # +inf saturates at the top of its (fp16-clamped) grid
    assert torch.all(y[3] == -65504)  # -inf saturates at the fp16 minimum
    assert torch.all((y[0] - x[0]).abs() <= q.scale[0].float() * (1 + 1e-4))  # group 0 intact


# ---------------------------------------------------------------- stochastic rounding


def test_unbiased_at_two_bits() -> None:
    x = torch.randn(256, generator=gen(9))
    spec = QuantSpec(bits=2, group_size=64)
    n = 2000
    g = gen(10)
    total = torch.zeros(256, dtype=torch.float64)
    for _ in range(n):  # one generator: every call sees a new state
        q = quantize(x, spec, g)
        total += q.dequantize().double()
    mean = total / n
    step = per_element(q.scale, spec.group_size, x.numel())
    # each draw is within one step, so std <= step / 2; 8 sigma of the mean, plus fp32 slack
    bound = 4 * step / math.sqrt(n) + 1e-6 * x.abs().double()
    assert torch.all((mean - x.double()).abs() < bound)
    # pooled over elements, a bias of a few thousandths of a step would show
    pooled = ((mean - x.double()) / step.clamp_min(FP16_TINY)).mean()
    assert pooled.abs() < 4 * 0.5 / math.sqrt(n * x.numel())
    # rounding to nearest would miss by up to step / 2: the bound is tight enough to notice
    nearest = torch.round((x.double() - per_element(q.minimum, 64, 256)) / step) * step
    nearest += per_element(q.minimum, 64, 256)
    assert ((nearest - x.double()).abs() > bound).float().mean() > 0.5


def test_same_seed_same_codes_other_seed_other_codes() -> None:
    x = torch.randn(1000, generator=gen(11))
    spec = QuantSpec(bits=2)
    a, b, c = (quantize(x, spec, gen(s)) for s in (42, 42, 43))
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scale, c.scale) and torch.equal(a.minimum, c.minimum)
    assert not torch.equal(a.codes, c.codes)


def test_default_generator_is_used_when_none() -> None:
    x = torch.randn(1000, generator=gen(12))
    torch.manual_seed(5)
    a = quantize(x, QuantSpec(bits=2))
    torch.manual_seed(5)
    b = quantize(x, QuantSpec(bits=2))
    assert torch.equal(a.codes, b.codes)


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [1, 1001, 4096])
def test_nbytes_counts_packed_codes_and_group_params(bits: int, numel: int) -> None:
    spec = QuantSpec(bits=bits)
    q = quantize(torch.randn(numel, generator=gen(13)), spec, gen())
    groups = math.ceil(numel / spec.group_size)
    assert q.nbytes == math.ceil(numel * bits / 8) + 4 * groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", BITS)
def test_compression_ratio_matches_spec(bits: int, dtype: torch.dtype) -> None:
    spec = QuantSpec(bits=bits)
    x = torch.randn(64, 128 * 64, generator=gen(14)).to(dtype)
    q = quantize(x, spec, gen())
    held = x.element_size() * x.numel()
    assert q.nbytes / held == pytest.approx(spec.bytes_per_element() / x.element_size(), rel=1e-3)
    if bits == 8:  # against bf16 activations 8 bits save half, against fp32 three quarters
        assert q.nbytes / held == pytest.approx(0.52 if dtype == torch.bfloat16 else 0.26, abs=0.01)


def test_unbiased_for_bf16_inputs() -> None:
    x = (torch.randn(256, generator=gen(31)) * 3).to(torch.bfloat16)
    spec = QuantSpec(bits=4, group_size=64)
    n, g = 1000, gen(32)
    total = torch.zeros(256, dtype=torch.float64)
    for _ in range(n):
        q = quantize(x, spec, g)
        y = q.dequantize()
        assert y.dtype == torch.bfloat16
        total += y.double()
    step = per_element(q.scale, spec.group_size, x.numel())
    ref = x.double()
    # the mean is the input within the noise of the mean plus the bf16 rounding of each output
    bound = 4 * step / math.sqrt(n) + ref.abs() * torch.finfo(torch.bfloat16).eps
    assert torch.all(((total / n) - ref).abs() < bound)


def test_a_generator_on_another_device_is_refused() -> None:
    x = torch.randn(300, generator=gen(33))
    with pytest.raises(ValueError, match="generator lives on cuda.*tensor on cpu"):
        quantize(x, QuantSpec(), _FakeCudaGenerator())  # type: ignore[arg-type]


class _FakeCudaGenerator:
    device = torch.device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_tensors_quantize_on_their_device_like_the_cpu(dtype: torch.dtype) -> None:
    x = (torch.randn(33, 129, generator=gen(34)) * 2).to(dtype)
    spec = QuantSpec(bits=4)
    on_cpu = quantize(x, spec, gen(35))
    on_cuda = quantize(x.cuda(), spec, torch.Generator(device="cuda").manual_seed(35))
    assert on_cuda.codes.device.type == "cuda"
    assert torch.equal(on_cuda.scale.cpu(), on_cpu.scale)  # same grid, other dither
    assert torch.equal(on_cuda.minimum.cpu(), on_cpu.minimum)
    check_error_bound(x, on_cuda, out_rel_tol=torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_as_saved_tensor_hooks_gradients_stay_close(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))
    x = torch.randn(32, 64)
    low = dtype != torch.float32  # bf16 activations, as autocast saves them

    def grads(hooked: bool) -> list[torch.Tensor]:
        net.zero_grad()
        g = gen(30)

        def pack(t: torch.Tensor) -> object:
            return quantize(t, QuantSpec(bits=8), g) if t.is_floating_point() else t

        def unpack(p: object) -> torch.Tensor:
            if isinstance(p, QuantizedTensor):
                return p.dequantize()
            assert isinstance(p, torch.Tensor)
            return p

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            if hooked:
                with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                    out = net(x)
            else:
                out = net(x)
        out.float().pow(2).sum().backward()
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    # 8-bit noise moves these gradients by <= 1.3%; a scrambled layout would move them by ~100%
    for exact, approx in zip(grads(False), grads(True), strict=True):
        assert approx.shape == exact.shape
        assert (approx - exact).norm() <= 0.03 * exact.norm()
