"""Split a training set across federated devices with flwr-datasets partitioners."""

from __future__ import annotations

import math
import numbers
import warnings

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    InnerDirichletPartitioner,
    Partitioner,
    ShardPartitioner,
)

from fedquad.data.sources import flatten_quietly
from fedquad.errors import FedquadError

PARTITION_SCHEMES: dict[str, str] = {
    "iid": "uniformly random, equal-sized partitions",
    "dirichlet": "per-label proportions drawn from Dirichlet(alpha); smaller alpha = more skew",
    "shards": "label-sorted shards, shards_per_partition of them per device",
    "inner-dirichlet": "each device's label mix drawn from Dirichlet(alpha x global label shares)"
    ", equal sizes",
}


def partition_dataset(
    train: datasets.Dataset,
    num_partitions: int,
    scheme: str = "dirichlet",
    *,
    alpha: float = 1.0,
    shards_per_partition: int = 2,
    min_partition_size: int = 1,
    seed: int = 0,
) -> list[datasets.Dataset]:
    """Split ``train`` into ``num_partitions`` non-empty, disjoint partitions.

    The same ``seed`` gives identical partitions. "iid", "dirichlet" and "inner-dirichlet" use
    every row; "shards" leaves out the ``len(train) % (num_partitions * shards_per_partition)``
    rows that do not fill a whole shard.

    "dirichlet" draws, per class, how that class is spread over the devices; "inner-dirichlet"
    (docs/methods.md §8) draws, per device, its label mix from ``Dir(alpha · p)`` with ``p`` the
    global label shares, and gives every device ``⌊n/N⌋`` rows (one more for the first
    ``n mod N``). It is the stronger skew at the same ``alpha``.
    """
    _check_scheme(scheme)
    _check_num_partitions(num_partitions, len(train))
    if scheme != "iid" and "label" not in train.column_names:
        raise FedquadError(
            f"partition scheme '{scheme}' needs a 'label' column; "
            f"available columns: {', '.join(train.column_names)}"
        )
    partitioner = _make_partitioner(
        train, num_partitions, scheme, alpha, shards_per_partition, min_partition_size, seed
    )
    parts = _load_partitions(partitioner, num_partitions, scheme, alpha, min_partition_size)
    for i, part in enumerate(parts):
        if len(part) == 0:
            raise FedquadError(
                f"partition {i} of {num_partitions} ('{scheme}') is empty; "
                "use a larger alpha or fewer devices"
            )
    return parts


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_scheme(scheme: str) -> None:
    if scheme not in PARTITION_SCHEMES:
        raise FedquadError(
            f"unknown partition scheme '{scheme}'; use one of: {', '.join(PARTITION_SCHEMES)}"
        )


def _check_num_partitions(num_partitions: int, num_rows: int) -> None:
    if not _is_int(num_partitions) or not 1 <= num_partitions <= num_rows:
        raise FedquadError(
            f"num_partitions={num_partitions!r} is invalid; use an integer from 1 to "
            f"{num_rows} (the number of training rows)"
        )


def _check_dirichlet(alpha: float, min_partition_size: int) -> None:
    is_real = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    if not is_real or not math.isfinite(alpha) or alpha <= 0:
        raise FedquadError(f"alpha={alpha!r} is invalid; use a finite number > 0")
    if not _is_int(min_partition_size) or min_partition_size < 1:
        raise FedquadError(
            f"min_partition_size={min_partition_size!r} is invalid; use an integer >= 1"
        )


def _check_shards(shards_per_partition: int, num_partitions: int, num_rows: int) -> None:
    if not _is_int(shards_per_partition) or shards_per_partition < 1:
        raise FedquadError(
            f"shards_per_partition={shards_per_partition!r} is invalid; use an integer >= 1"
        )
    # Each shard needs at least one row, otherwise flwr-datasets divides by zero.
    if num_partitions * shards_per_partition > num_rows:
        raise FedquadError(
            f"shards_per_partition={shards_per_partition} with {num_partitions} partitions "
            f"needs at least {num_partitions * shards_per_partition} rows, but there are "
            f"{num_rows}; use fewer shards or devices"
        )


def _make_partitioner(
    train: datasets.Dataset,
    num_partitions: int,
    scheme: str,
    alpha: float,
    shards_per_partition: int,
    min_partition_size: int,
    seed: int,
) -> Partitioner:
    partitioner: Partitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        # IidPartitioner cuts contiguous blocks without shuffling: shuffle it ourselves.
        partitioner.dataset = train.shuffle(seed=seed)
        return partitioner
    if scheme == "inner-dirichlet":
        _check_dirichlet(alpha, min_partition_size=1)
        partitioner = InnerDirichletPartitioner(
            partition_sizes=equal_sizes(len(train), num_partitions),
            partition_by="label",
            alpha=float(alpha) * label_shares(train["label"]),
            seed=seed,
        )
    elif scheme == "dirichlet":
        _check_dirichlet(alpha, min_partition_size)
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=int(min_partition_size),
            self_balancing=False,
            seed=seed,
        )
    else:
        _check_shards(shards_per_partition, num_partitions, len(train))
        partitioner = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=int(shards_per_partition),
            seed=seed,
        )
    partitioner.dataset = train
    return partitioner


def equal_sizes(num_rows: int, num_partitions: int) -> list[int]:
    """``⌊n/N⌋`` rows per partition, one more for the first ``n mod N``: every row used."""
    base, extra = divmod(num_rows, num_partitions)
    return [base + (i < extra) for i in range(num_partitions)]


def label_shares(labels: list[int]) -> np.ndarray:
    """Each class's share of the rows, in class-id order.

    flwr-datasets' ``InnerDirichletPartitioner`` takes class ``i`` to be label value ``i`` and
    reads a scalar concentration as the symmetric ``Dir(alpha)``: so the concentration is given
    as the vector ``alpha · p``, and every id from 0 to the largest must occur.
    """
    ids = np.asarray(labels)
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
        raise FedquadError(
            "partition scheme 'inner-dirichlet' needs integer class ids 0, 1, ... in 'label'"
        )
    counts = np.bincount(ids)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise FedquadError(
            f"partition scheme 'inner-dirichlet' needs every class id from 0 to {ids.max()} "
            f"among the training rows, and {int(missing[0])} has none: use more training rows "
            "or another scheme"
        )
    shares: np.ndarray = counts / counts.sum()
    return shares


def _load_partitions(
    partitioner: Partitioner,
    num_partitions: int,
    scheme: str,
    alpha: float,
    min_partition_size: int,
) -> list[datasets.Dataset]:
    try:
        with warnings.catch_warnings():
            # DirichletPartitioner warns on every resample (it gives up after 10 retries);
            # datasets' sort triggers a pyarrow FutureWarning. Neither is the user's concern.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            parts = [partitioner.load_partition(i) for i in range(num_partitions)]
    except ValueError as exc:
        if scheme == "inner-dirichlet":
            raise FedquadError(
                f"could not draw the label mixes of {num_partitions} devices with "
                f"alpha={alpha}: {exc}; use a larger alpha"
            ) from exc
        if scheme == "dirichlet":
            raise FedquadError(
                f"could not give each of {num_partitions} devices at least "
                f"{min_partition_size} rows with alpha={alpha} (Dirichlet retries exhausted); "
                "use a larger alpha or fewer devices"
            ) from exc
        raise FedquadError(f"could not partition with scheme '{scheme}': {exc}") from exc
    # Copy each partition's rows out of the full table so it pickles small (Ray/flwr).
    return [flatten_quietly(part) for part in parts]
