"""Whether the Hugging Face hub can be asked now; when it cannot, loads use the local caches only.

huggingface_hub and datasets read ``HF_HUB_OFFLINE`` once, at import, and without a network they
retry each request for half a minute or more. Here the environment is read at call time and an
unreachable hub is found by one short connection attempt, so that a name no cache holds fails at
once, with the same one-line error as a name the hub does not know.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

_TRUE = {"1", "ON", "YES", "TRUE"}


def _offline_env() -> bool:
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((v or "").strip().upper() in _TRUE for v in values)


def _endpoint() -> tuple[str, int]:
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@functools.cache
def _hub_reachable() -> bool:
    """One TCP connection attempt to the hub. Assumed reachable when a proxy is configured."""
    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(v) for v in proxies):
        return True
    try:
        socket.create_connection(_endpoint(), timeout=3.0).close()
    except OSError:
        return False
    return True


def offline_reason() -> str | None:
    """Why the hub is not to be asked (``HF_HUB_OFFLINE`` set, or the hub unreachable), or None."""
    if _offline_env():
        return "HF_HUB_OFFLINE is set"
    if not _hub_reachable():
        return f"{_endpoint()[0]} is unreachable"
    return None


@contextlib.contextmanager
def cache_only(active: bool = True) -> Iterator[None]:
    """huggingface_hub and datasets in offline mode inside the block (when ``active``): a load
    then reads their caches and never the network."""
    if not active:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
