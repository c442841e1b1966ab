"""docs/design.md's module layout names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fedquad"
ROW = re.compile(r"^\| `([\w/]+(?:\.py|/))` \|", re.MULTILINE)


def _layout() -> set[str]:
    """The modules that the "Module layout" section's table names."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## Module layout", 1)[1].split("\n## ", 1)[0]
    return set(ROW.findall(section))


def test_every_module_is_in_the_layout():
    named = _layout()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        folder = module.split("/")[0] + "/"
        if path.name == "__init__.py" and module != "__init__.py":
            continue  # a subpackage's __init__ re-exports what its modules hold
        if module not in named and not ("/" in module and folder in named):
            missing.append(module)
    assert not missing, f"docs/design.md's module layout lacks {missing}"


def test_the_layout_names_no_module_that_is_gone():
    gone = [m for m in _layout() if not (PACKAGE / m).exists()]
    assert not gone, f"docs/design.md's module layout names {gone}, which do not exist"
