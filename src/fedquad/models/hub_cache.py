"""The built-in models under their Hugging Face hub ids, without network access.

A saved adapter names its base model by hub id (``sentence-transformers/all-MiniLM-L6-v2``), as
PEFT users expect. :func:`seed_hub_cache` makes that id resolve offline: it lays the embedded
files out as the hub cache does (``models--org--name/snapshots/<rev>/`` and ``refs/main``), as
links to the installed copy, so ``from_pretrained(hub_id)`` finds them with ``HF_HUB_OFFLINE=1``.
A cache that already holds the model from the hub is left as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from fedquad.errors import FedquadError
from fedquad.models.registry import (
    BUILTIN_HUB_IDS,
    MARKER_NAME,
    builtin_model_dir,
)

logger = logging.getLogger(__name__)


def hub_cache_dir() -> Path:
    """The hub cache ``from_pretrained`` reads, from the environment at call time:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def seed_hub_cache(
    cache: str | Path | None = None, names: Iterable[str] | None = None
) -> dict[str, Path]:
    """Lay the built-in models ``names`` (default: every one available without converting
    anything) into the hub cache ``cache`` (default :func:`hub_cache_dir`); returns the snapshot
    directory of each hub id."""
    root = Path(cache).expanduser() if cache is not None else hub_cache_dir()
    wanted = list(BUILTIN_HUB_IDS) if names is None else list(names)
    seeded = {}
    for name in wanted:
        if name not in BUILTIN_HUB_IDS:
            known = ", ".join(BUILTIN_HUB_IDS)
            raise FedquadError(f"'{name}' is not a built-in model; built-in: {known}")
        # without names, only what is there already: smollm2-135m is converted on first use
        source = builtin_model_dir(name, convert=names is not None)
        if source is None:
            continue
        try:
            seeded[BUILTIN_HUB_IDS[name]] = _seed(root, BUILTIN_HUB_IDS[name], source)
        except OSError as exc:
            raise FedquadError(
                f"cannot lay out '{name}' in the Hugging Face cache {root} ({exc.strerror})"
            ) from None
    return seeded


def _files(source: Path) -> list[Path]:
    return sorted(
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and p.name != MARKER_NAME and not p.name.startswith(".")
    )


def _revision(hub_id: str, source: Path, files: list[Path]) -> str:
    """A commit-hash-shaped name for this copy: the same files give the same snapshot."""
    digest = hashlib.sha1(hub_id.encode())
    for rel in files:
        digest.update(f"{rel.as_posix()}:{(source / rel).stat().st_size}\n".encode())
    return digest.hexdigest()


def _seed(root: Path, hub_id: str, source: Path) -> Path:
    repo = root / f"models--{hub_id.replace('/', '--')}"
    files = _files(source)
    revision = _revision(hub_id, source, files)
    snapshot = repo / "snapshots" / revision
    ref = repo / "refs" / "main"
    current = ref.read_text().strip() if ref.is_file() else None
    if current and current != revision and (repo / "snapshots" / current).is_dir():
        return repo / "snapshots" / current  # the hub's own copy (or an older one): keep it
    if not snapshot.is_dir():
        tmp = repo / "snapshots" / f".{revision}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for rel in files:
                _link_or_copy(source / rel, tmp / rel)
            with contextlib.suppress(OSError):  # another process laid it out first
                os.replace(tmp, snapshot)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp_ref = ref.with_name(f".main.{uuid.uuid4().hex[:8]}")
    tmp_ref.write_text(revision)
    os.replace(tmp_ref, ref)
    return snapshot


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(source.resolve())
    except OSError:  # no symlinks (some Windows setups): a copy
        shutil.copy2(source, dest)
