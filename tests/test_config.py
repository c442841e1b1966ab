"""Config: TOML in/out, overrides, validation with one-line errors."""

from __future__ import annotations

import re
import typing

import pytest

from fedquad.config import (
    DEADLINES,
    Deadline,
    ExperimentConfig,
    FederationConfig,
    PlannerConfig,
    QuantConfig,
    apply_overrides,
    from_dict,
    load_config,
)
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
        ({"run_name": "a/b"}, "run_name = 'a/b' is not allowed"),
        ({"run_name": ".."}, "run_name = '..' is not allowed"),
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


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ExperimentConfig(planner=PlannerConfig(epsilon=-1)),
            "planner.epsilon = -1: use a number >= 0",
        ),
        (
            lambda: QuantConfig(bits=3),  # type: ignore[arg-type]
            "quant.bits = 3 is not allowed: use 8, 4 or 2",
        ),
        (
            lambda: PlannerConfig(deadline="late"),  # type: ignore[arg-type]
            "planner.deadline = 'late' is not allowed: use one of anchored, search, adaptive",
        ),
        (
            lambda: ExperimentConfig(
                method="hetlora", federation=FederationConfig(robust="median")
            ),
            "federation.robust = 'median' does not apply to hetlora",
        ),
    ],
)
def test_a_section_checks_itself_when_it_is_built(build, message):
    with pytest.raises(FedquadError, match="^" + re.escape(message)):
        build()


def test_validate_sees_a_section_changed_after_it_was_built():
    config = ExperimentConfig()
    config.train.batch_size = 0
    with pytest.raises(FedquadError, match=r"^train\.batch_size = 0 is not allowed"):
        config.validate()


def test_choice_tuples_are_the_literal_types_and_the_builder_checks_them():
    assert typing.get_args(Deadline) == DEADLINES == ("anchored", "search", "adaptive")
    hint = typing.get_type_hints(PlannerConfig)["deadline"]
    assert typing.get_origin(hint) is typing.Literal
    with pytest.raises(FedquadError, match=r"^planner\.deadline = 3: expected str$"):
        from_dict({"planner": {"deadline": 3}})
    with pytest.raises(FedquadError, match=r"^quant\.bits = True: expected int$"):
        from_dict({"quant": {"bits": True}})
    assert from_dict({"quant": {"bits": 4}}).quant.bits == 4
