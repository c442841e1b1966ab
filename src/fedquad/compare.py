"""``fedquad compare``: every method on the same config, then one table and a few plots.

Each method runs with the same seed, data partition, fleet and rounds (only ``method`` differs),
into its own sub-directory of one fresh comparison directory under ``output_dir``. The target
accuracy is decided after all runs (docs/methods.md §7), from their metrics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedquad.config import ExperimentConfig
from fedquad.errors import FedquadError, did_you_mean
from fedquad.methods_registry import METHODS, default_compare_methods
from fedquad.report.compare import (
    Row,
    Target,
    choose_target,
    comparison_json,
    comparison_rows,
    markdown_table,
)
from fedquad.report.provenance import comparison_provenance
from fedquad.report.results import (
    atomic_write_text,
    default_run_name,
    new_run_dir,
    read_metrics,
)
from fedquad.report.run_info import read_run_info

DEFAULT_METHODS = default_compare_methods()

_SHARED_CONFIG_NOTE = "# The config every compared method ran with; only `method` differed.\n"


@dataclass
class ComparisonResult:
    dir: Path
    target: Target | None
    rows: list[Row]
    metrics: dict[str, list[dict[str, Any]]]
    run_dirs: dict[str, Path]

    def markdown(self) -> str:
        return markdown_table(self.rows, self.target)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Comma-separated method names, checked against the known ones (repeats dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n.strip()]
    if not names:
        raise FedquadError(f"--methods {text!r} names no method: use some of {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        hint = did_you_mean(unknown[0], METHODS)
        tail = f" ({hint})" if hint else ""
        raise FedquadError(
            f"unknown method {unknown[0]!r} in --methods: use some of {', '.join(METHODS)}{tail}"
        )
    return list(dict.fromkeys(names))


def method_configs(config: ExperimentConfig, methods: Sequence[str]) -> dict[str, ExperimentConfig]:
    """Each method's config, every one checked before the first run starts."""
    return {m: dataclasses.replace(config, method=m).validate() for m in methods}


def comparison_data(out: str | Path) -> dict[str, Any]:
    """What ``fedquad compare --format json`` prints: the directory and its ``comparison.json``."""
    return {"dir": str(out), **json.loads((Path(out) / "comparison.json").read_text())}


def check_target(target: float | None) -> None:
    if target is not None and not 0 < target <= 1:
        raise FedquadError(f"target accuracy {target!r} is not allowed: use a number in (0, 1]")


def compare(
    config: ExperimentConfig,
    methods: Sequence[str],
    *,
    target: float | None = None,
    progress: bool = False,
    on_method: Callable[[int, str], None] = lambda _i, _m: None,
) -> ComparisonResult:
    """Run every method on ``config`` and write the comparison directory.

    ``target`` overrides ``federation.target_accuracy``; without either, the target is 95% of the
    best final accuracy of any method. ``on_method(i, name)`` is called before each run.
    """
    methods = parse_methods(methods)
    check_target(target)
    source = "set by " + ("--target" if target is not None else "federation.target_accuracy")
    if target is not None:
        config = dataclasses.replace(
            config, federation=dataclasses.replace(config.federation, target_accuracy=target)
        )
    configs = method_configs(config, methods)
    from fedquad.api import run  # torch and transformers: only once everything is checked

    out = new_run_dir(
        config.output_dir,
        config.run_name
        or default_run_name("compare", config.data.name, config.model.name, config.seed),
    )
    atomic_write_text(out / "config.toml", _SHARED_CONFIG_NOTE + config.to_toml())
    run_dirs: dict[str, Path] = {}
    for i, m in enumerate(methods):
        on_method(i, m)
        method_config = dataclasses.replace(configs[m], output_dir=str(out), run_name=m)
        run_dirs[m] = run(method_config, progress=progress).run_dir
    return report(out, run_dirs, config.federation.target_accuracy, source)


def report(
    out: str | Path,
    run_dirs: Mapping[str, str | Path],
    target: float | None = None,
    source: str = "set by federation.target_accuracy",
) -> ComparisonResult:
    """Table and plots of finished runs (read back from their ``metrics.jsonl``) into ``out``.

    ``target`` (from ``source``) when given, else the protocol's default from the runs."""
    out, dirs = Path(out), {m: Path(d) for m, d in run_dirs.items()}
    metrics = {m: read_metrics(d) for m, d in dirs.items()}
    chosen = choose_target(metrics, target, source)
    rows = comparison_rows(metrics, chosen, {m: str(d) for m, d in dirs.items()})
    result = ComparisonResult(out, chosen, rows, metrics, dirs)
    atomic_write_text(out / "comparison.md", result.markdown())
    data = {**comparison_json(rows, chosen), "provenance": comparison_provenance(dirs)}
    atomic_write_text(out / "comparison.json", json.dumps(data, indent=2) + "\n")
    from fedquad.report.plots import write_comparison_plots  # matplotlib: only when plotting

    info = {m: read_run_info(d) for m, d in dirs.items()}
    write_comparison_plots(metrics, None if chosen is None else chosen.accuracy, out, info)
    return result
