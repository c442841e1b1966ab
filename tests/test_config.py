"""Config: TOML in/out, overrides, validation with one-line errors."""

from __future__ import annotations

import pytest

from fedquad.config import ExperimentConfig, apply_overrides, from_dict, load_config
from fedquad.errors import FedquadError


def test_defaults_round_trip_through_toml(tmp_path):
    config = ExperimentConfig()
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


def test_overrides_parse_toml_literals_and_nested_keys():
    config = load_config(
        None,
        ["federation.rounds=3", "train.lr=0.01", "lora.ranks=[4, 2]", "data.name=foo.csv"],
    )
    assert config.federation.rounds == 3
    assert config.train.lr == 0.01
    assert config.lora.ranks == [4, 2]
    assert config.data.name == "foo.csv"


def test_override_does_not_mutate_input():
    raw = {"federation": {"rounds": 2}}
    apply_overrides(raw, ["federation.rounds=9"])
    assert raw == {"federation": {"rounds": 2}}


def test_int_accepted_for_float_field():
    assert from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"federation": {"rounds": 0}}, "federation.rounds = 0"),
        ({"train": {"batch_size": -4}}, "train.batch_size = -4"),
        ({"method": "nope"}, "method = 'nope'"),
        ({"data": {"partition": "zipf"}}, "iid, dirichlet, shards"),
        ({"federation": {"num_devices": 2, "devices_per_round": 3}}, "devices_per_round = 3"),
        ({"train": {"lr": "fast"}}, "train.lr = 'fast'"),
        ({"federaton": {"rounds": 2}}, "did you mean 'federation'"),
        ({"train": {"local_step": 2}}, "did you mean 'local_steps'"),
        ({"data": {"test_fraction": 1.5}}, "data.test_fraction = 1.5"),
        ({"lora": {"ranks": [4, 0]}}, "lora.ranks"),
    ],
)
def test_bad_values_give_one_line_errors(data, fragment):
    with pytest.raises(FedquadError) as info:
        from_dict(data)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unreadable_config_files(tmp_path):
    with pytest.raises(FedquadError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(FedquadError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FedquadError):
        load_config(binary)


def test_set_without_equals_is_an_error():
    with pytest.raises(FedquadError, match="key=value"):
        load_config(None, ["federation.rounds"])
