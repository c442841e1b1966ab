"""The method registry: config, compare, report, planners, aggregation and the README all take
their methods from it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from fedquad import methods_registry
from fedquad.aggregate.rules import RULES
from fedquad.compare import DEFAULT_METHODS, parse_methods
from fedquad.config import ExperimentConfig, FederationConfig, PlannerConfig, from_dict
from fedquad.errors import FedquadError
from fedquad.methods_registry import (
    AGGREGATION_SUMMARIES,
    METHODS,
    Aggregation,
    FallbackName,
    Method,
    PlannerName,
    Structure,
    methods_table,
)
from fedquad.planners.methods import FALLBACKS, PLANNERS, global_ranks
from fedquad.report.compare import BASELINES

README = Path(__file__).resolve().parents[1] / "README.md"
PROBE = Method("probe", "a test-only method", "full-depth", "perlayer", "uniform")


def test_config_accepts_exactly_the_registry_names(monkeypatch):
    for name in METHODS:
        assert from_dict({"method": name}).method == name
    with pytest.raises(FedquadError) as info:
        from_dict({"method": "probe"})
    assert str(info.value) == (f"method = 'probe' is not allowed: use one of {', '.join(METHODS)}")
    monkeypatch.setitem(METHODS, "probe", PROBE)  # one entry more: accepted everywhere
    assert ExperimentConfig(method="probe").method == "probe"
    assert parse_methods("probe,fedquad") == ["probe", "fedquad"]


def test_compare_defaults_and_report_baselines_come_from_the_registry():
    assert tuple(n for n, m in METHODS.items() if m.in_default_compare) == DEFAULT_METHODS
    assert tuple(n for n, m in METHODS.items() if m.baseline) == BASELINES
    # fedquad-noquant is an ablation: neither a baseline nor run by default
    assert "fedquad-noquant" in METHODS
    assert "fedquad-noquant" not in DEFAULT_METHODS and "fedquad-noquant" not in BASELINES


def test_the_readme_methods_table_is_the_registry_s():
    assert methods_table() in README.read_text(encoding="utf-8"), (
        "README.md's methods table is not current: paste methods_registry.methods_table()"
    )
    rows = methods_table().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == list(METHODS)


def test_every_name_an_entry_uses_has_its_implementation():
    assert set(PLANNERS) == set(typing.get_args(PlannerName))
    assert set(FALLBACKS) == set(typing.get_args(FallbackName))
    assert set(RULES) == set(typing.get_args(Aggregation)) == set(AGGREGATION_SUMMARIES)
    for name in METHODS:  # every structure gives a rank per LoRA block
        assert len(global_ranks(name, PlannerConfig(), 6, 8, None)) >= 1
    assert {m.structure for m in METHODS.values()} == set(typing.get_args(Structure))


def test_robust_aggregation_follows_robust_ok(monkeypatch):
    robust = FederationConfig(robust="median")
    for name, entry in METHODS.items():
        if entry.robust_ok:
            assert ExperimentConfig(method=name, federation=robust).method == name
        else:
            with pytest.raises(FedquadError, match=f"does not apply to {name}:"):
                ExperimentConfig(method=name, federation=robust)
    monkeypatch.setitem(METHODS, "probe", dataclasses.replace(PROBE, robust_ok=False))
    with pytest.raises(FedquadError, match="does not apply to probe"):
        ExperimentConfig(method="probe", federation=robust)


def test_registry_module_imports_nothing_heavy():
    import ast

    tree = ast.parse(Path(methods_registry.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {"__future__", "dataclasses", "typing", "fedquad.errors"}
