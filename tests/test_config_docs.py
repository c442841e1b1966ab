"""docs/config.md is generated from config.py's docstrings and must be current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedquad import config
from fedquad.config_docs import parse_sections, render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _runtime_keys(cls: type, table: str = "") -> set[str]:
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        name = f"{table}.{f.name}" if table else f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys |= _runtime_keys(type(default), name)
        else:
            keys.add(name)
    return keys


def _documented_keys() -> dict[str, str]:
    return {
        f"{s.name}.{k.name}" if s.name else k.name: k.doc for s in parse_sections() for k in s.keys
    }


def test_committed_page_is_current():
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/config.md is out of date: run `python -m fedquad.config_docs --write`"
    )


def test_every_config_field_is_in_the_page():
    documented = _documented_keys()
    runtime = _runtime_keys(config.ExperimentConfig)
    assert sorted(runtime - documented.keys()) == []
    assert sorted(documented.keys() - runtime) == []
    page = DOCS.read_text(encoding="utf-8")
    for section in parse_sections():
        if section.name:
            assert f"## `[{section.name}]`" in page


def test_every_config_field_has_a_docstring():
    missing = sorted(key for key, doc in _documented_keys().items() if not doc)
    assert missing == [], f"config fields without a docstring: {', '.join(missing)}"


def test_parser_reads_literal_unions_and_factories():
    source = '''
from dataclasses import dataclass, field
from typing import Literal

Engine = Literal["local", "flower"]


@dataclass
class InnerConfig:
    """An inner table."""

    mode: Literal["a", "b"] = "a"
    """The mode."""
    ranks: list[int] | None = None
    """Ranks | none."""
    weights: list[float] = field(default_factory=list)
    limit: str | None = field(default=None)
    """A limit."""


@dataclass
class ExperimentConfig:
    engine: Engine = "local"
    """Where to run."""
    inner: InnerConfig = field(default_factory=InnerConfig)
'''
    top, inner = parse_sections(source)
    assert (top.name, inner.name, inner.doc) == ("", "inner", "An inner table.")
    assert [(k.name, k.type, k.default, k.doc) for k in top.keys] == [
        ("engine", "Literal['local', 'flower']", '"local"', "Where to run.")
    ]
    assert [(k.name, k.type, k.default, k.doc) for k in inner.keys] == [
        ("mode", "Literal['a', 'b']", '"a"', "The mode."),
        ("ranks", "list[int] | None", "unset", "Ranks | none."),
        ("weights", "list[float]", "[]", ""),
        ("limit", "str | None", "unset", "A limit."),
    ]
    text = render([top, inner])
    assert "| `ranks` | `list[int] \\| None` | `unset` | Ranks \\| none. |" in text
