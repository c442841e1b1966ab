"""Where and in which precision a model trains: the device, bf16 autocast, the accelerator's
memory and clock.

The model says its own precision: with ``bf16`` its frozen base weights are stored in bfloat16
(cast once, by :func:`place_model`) while its federated tensors (LoRA, head) stay float32, so the
trainer, the evaluation and the profiler all run it the same way without being told.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fedquad.errors import FedquadError
from fedquad.models.lora import federated_param_names

logger = logging.getLogger(__name__)

LOW_PRECISION = torch.bfloat16


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if present, else mps, else cpu; an absent accelerator is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FedquadError(
            "train.device = 'cuda' but torch sees no CUDA device: use cpu or auto, "
            "or install a CUDA build of torch"
        )
    if name == "mps" and not _mps_available():
        raise FedquadError("train.device = 'mps' but this machine has no MPS: use cpu or auto")
    if name not in ("cuda", "mps"):
        raise FedquadError(
            f"train.device = {name!r} is not allowed: use one of auto, cpu, cuda, mps"
        )
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX on x86; Arm is assumed to)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def check_precision(precision: str, device: torch.device) -> None:
    """A one-line error where ``device`` cannot run ``precision``; a warning where it is slow."""
    if precision == "fp32":
        return
    if precision != "bf16":
        raise FedquadError(f"train.precision = {precision!r} is not allowed: use fp32 or bf16")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        raise FedquadError(
            f"train.precision = 'bf16' but the CUDA device {name!r} has no bfloat16 support: "
            "use fp32"
        )
    if device.type == "cpu" and not cpu_has_bf16():
        logger.warning(
            "train.precision = 'bf16' on a CPU without bf16 instructions: it runs, "
            "but slower than fp32 here"
        )


def place_model(model: nn.Module, device_name: str, precision: str) -> torch.device:
    """Move ``model`` to its device and, for bf16, store its frozen base weights in bfloat16
    (the federated tensors and so the optimizer state stay float32). Returns the device."""
    device = resolve_device(device_name)
    check_precision(precision, device)
    if precision == "bf16":
        federated = set(federated_param_names(model))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name not in federated and param.is_floating_point():
                    param.data = param.data.to(LOW_PRECISION)
    model.to(device)
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def compute_dtype(model: nn.Module) -> torch.dtype | None:
    """The autocast dtype the model was placed for (``None``: plain float32)."""
    low = any(p.dtype == LOW_PRECISION for p in model.parameters())
    return LOW_PRECISION if low else None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """bf16 autocast on the model's device (nothing for float32)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def precision_scope(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """PEFT casts each LoRA input to the LoRA weights' float32, which under autocast is a wasted
    copy (autocast casts it back, and the copy is saved for backward beside the original): off
    for a low-precision model."""
    if dtype is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def synchronize(device: torch.device) -> None:
    """Wait for the accelerator's queued work, so a host clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Fork the CPU generator and, on an accelerator, the device's: restored on exit."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    if device.type == "mps":
        return torch.random.fork_rng(devices=[device], device_type="mps")
    return torch.random.fork_rng(devices=[])


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """The accelerator allocator's peak since :func:`reset_peak_memory` (``None`` on a CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def release_cached_memory() -> None:
    """Hand the CUDA allocator's cached blocks back before a retry after running out of memory."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
