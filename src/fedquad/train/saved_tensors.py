"""Per-block accounting (and optional quantization) of the tensors autograd saves for backward.

One ``saved_tensors_hooks`` context is entered around each block's forward (module pre/post
hooks), so every tensor saved inside block ``l`` goes through block ``l``'s pack hook. The hook

- skips parameters and views of parameters (frozen weights included) by comparing storages,
  and, under autocast (``casts=True``), the copies autocast makes of parameters in another
  dtype (they are weights, not activations: never counted, never quantized),
- counts the bytes really held, once per storage (a storage saved twice is held once),
- quantizes floating tensors of the chosen blocks (codes + scales are what is then held).

Tensors saved outside every block (embeddings, head, loss) are counted under ``head``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedquad.train.quantizer import QuantizedTensor, QuantSpec, quantize, quantized_nbytes

HEAD = -1  # bucket for tensors saved outside the blocks


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _whole_storage(t: torch.Tensor) -> torch.Tensor:
    """The tensor's entire storage as a flat tensor of its dtype (views are rebuilt from it)."""
    storage = t.untyped_storage()
    flat = torch.empty(0, dtype=t.dtype, device=t.device)
    return flat.set_(storage, 0, (storage.nbytes() // t.element_size(),), (1,))


class QuantizedStorage:
    """The quantized contents of one storage, shared by every saved view of it.

    Views of one storage are unpacked close together in backward (q, k, v): while the last
    dequantized copy is still alive, the next view reuses it instead of dequantizing again.
    A weak reference, so the cache never keeps memory alive by itself.
    """

    def __init__(self, contents: QuantizedTensor) -> None:
        self.contents = contents
        self._last: weakref.ref[torch.Tensor] | None = None

    def dequantize(self) -> torch.Tensor:
        last = self._last() if self._last is not None else None
        if last is None:
            last = self.contents.dequantize()
            self._last = weakref.ref(last)
        return last


@dataclass
class StoredView:
    """A saved tensor held as a view into the quantized contents of its storage."""

    storage: QuantizedStorage
    offset: int
    shape: torch.Size
    stride: tuple[int, ...]

    def restore(self) -> torch.Tensor:
        return self.storage.dequantize().as_strided(self.shape, self.stride, self.offset)


@dataclass
class SavedBytes:
    """What one forward pass saved for backward."""

    per_block: dict[int, int] = field(default_factory=dict)
    """Bytes held per block index (``-1``: outside the blocks: embeddings, head, loss)."""
    unquantized_per_block: dict[int, int] = field(default_factory=dict)
    """What the same tensors would have held without quantization."""
    quantizable: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """Per block, ``(elements, bytes)`` of each storage held unquantized that quantization
    would compress: with it, the bytes of any quantized variant follow without running one."""

    def quantized_per_block(self, spec: QuantSpec) -> dict[int, int]:
        """Bytes each block would hold if its quantizable storages were quantized with ``spec``."""
        out = dict(self.per_block)
        for block, storages in self.quantizable.items():
            out[block] -= sum(nbytes - quantized_nbytes(numel, spec) for numel, nbytes in storages)
        return out

    @property
    def total(self) -> int:
        return sum(self.per_block.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_block": {str(k): v for k, v in sorted(self.per_block.items())},
            "unquantized_per_block": {
                str(k): v for k, v in sorted(self.unquantized_per_block.items())
            },
            "total": self.total,
        }


class SavedTensorMeter:
    """Context manager: measure (and optionally quantize) saved tensors per block.

    Use one ``with`` block per forward+backward step; ``saved`` then holds that step's bytes.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        params: Iterable[torch.Tensor],
        quantized_blocks: Iterable[int] = (),
        spec: QuantSpec | None = None,
        generator: torch.Generator | None = None,
        min_numel: int = 1024,
        casts: bool = False,
    ) -> None:
        self.blocks = blocks
        params = list(params)
        self.param_storages = {storage_key(p) for p in params}
        self.casts = casts
        self._params_by_numel: dict[int, list[torch.Tensor]] = {}
        if casts:
            for p in params:
                self._params_by_numel.setdefault(p.numel(), []).append(p)
        self._cast_values: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self.quantized_blocks = set(quantized_blocks)
        self.spec = spec or QuantSpec()
        self.generator = generator
        self.min_numel = min_numel
        self.saved = SavedBytes()
        self._seen: set[int] = set()
        # storage -> (pinned original, its quantized contents): ops save several views of one
        # storage (q/k/v all save the block input), which must be compressed once. The original
        # stays pinned until its block's forward ends, so its memory cannot be reused meanwhile
        # by another tensor that would then hit this cache.
        self._quantized: dict[int, tuple[torch.Tensor, QuantizedStorage]] = {}
        self._stack: list[Any] = []
        self._handles: list[Any] = []

    # ---- hooks
    def _pack_for(self, block: int) -> Any:
        quantize_here = block in self.quantized_blocks

        def pack(t: torch.Tensor) -> Any:
            key = storage_key(t)
            if key in self.param_storages or (self.casts and self._is_param_cast(t)):
                return t
            nbytes = t.untyped_storage().nbytes()
            if quantize_here and self._quantizable(t):
                cached = self._quantized.get(key)
                if cached is None:
                    whole = _whole_storage(t)
                    contents = quantize(whole, self.spec, self.generator)
                    cached = (whole, QuantizedStorage(contents))
                    self._quantized[key] = cached
                    self._count(block, contents.nbytes, nbytes)
                return StoredView(cached[1], int(t.storage_offset()), t.shape, t.stride())
            if key not in self._seen:
                self._seen.add(key)
                self._count(block, nbytes, nbytes)
                if self._quantizable(t):
                    numel = nbytes // t.element_size()
                    self.saved.quantizable.setdefault(block, []).append((numel, nbytes))
            return t

        return pack

    def _is_param_cast(self, t: torch.Tensor) -> bool:
        """Whether ``t`` (or the tensor it views) is a parameter cast to another dtype.

        A trained parameter's cast is cached by autocast and records the parameter as its
        autograd input; a frozen parameter's (e.g. an untrained LoRA on FedRA's backward path)
        has no history, and is recognised by holding exactly the parameter's cast values.
        """
        if not t.is_floating_point():
            return False
        base = t._base if t._base is not None else t
        fn = base.grad_fn
        if fn is not None:
            if type(fn).__name__ != "ToCopyBackward0" or not fn.next_functions:
                return False
            source = getattr(fn.next_functions[0][0], "variable", None)
            return source is not None and storage_key(source) in self.param_storages
        if base.requires_grad:
            return False
        numel = t.untyped_storage().nbytes() // t.element_size()
        for p in self._params_by_numel.get(numel, ()):
            if p.dtype != t.dtype and torch.equal(_whole_storage(t), self._cast_of(p, t.dtype)):
                return True
        return False

    def _cast_of(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        cast_key = (storage_key(p), dtype)
        cached = self._cast_values.get(cast_key)
        if cached is None:
            cached = _whole_storage(p.detach()).to(dtype)
            self._cast_values[cast_key] = cached
        return cached

    def _quantizable(self, t: torch.Tensor) -> bool:
        return t.is_floating_point() and t.numel() >= self.min_numel

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, StoredView):
            return packed.restore()
        return packed

    def _count(self, block: int, held: int, unquantized: int) -> None:
        self.saved.per_block[block] = self.saved.per_block.get(block, 0) + held
        self.saved.unquantized_per_block[block] = (
            self.saved.unquantized_per_block.get(block, 0) + unquantized
        )

    def _enter(self, block: int) -> None:
        ctx = torch.autograd.graph.saved_tensors_hooks(self._pack_for(block), self._unpack)
        ctx.__enter__()
        self._stack.append(ctx)

    def _exit(self) -> None:
        self._stack.pop().__exit__(None, None, None)
        self._quantized.clear()  # unpin: the block's originals may be freed now

    # ---- context protocol
    def __enter__(self) -> SavedTensorMeter:
        self.saved = SavedBytes()
        self._seen.clear()
        self._quantized.clear()
        self._enter(HEAD)
        for index, block in enumerate(self.blocks):
            self._handles.append(
                block.register_forward_pre_hook(lambda *_, i=index: self._enter(i))
            )
            self._handles.append(block.register_forward_hook(lambda *_: self._exit()))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._stack:  # also unwinds contexts left open by an exception inside a block
            self._exit()
        self._quantized.clear()
