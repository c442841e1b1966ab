"""Render docs/config.md, the table of every config key, from the source of ``config.py``.

The meaning of a key is its attribute docstring: the string expression right after the field's
annotated assignment. Python keeps those only in the source, so this module reads ``config.py``
with :mod:`ast` instead of importing it. Run ``python -m fedquad.config_docs`` to print the page,
or ``python -m fedquad.config_docs --write`` to rewrite docs/config.md in place.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

CONFIG_SOURCE = Path(__file__).with_name("config.py")
ROOT_CLASS = "ExperimentConfig"
DEFAULT_OUTPUT = Path("docs") / "config.md"


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class Section:
    name: str
    """The TOML table ("" for the top-level keys)."""
    cls: str
    doc: str
    keys: tuple[Key, ...]


def _is_dataclass(node: ast.ClassDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "dataclass":
            return True
    return False


def _docstring(node: ast.stmt | None) -> str:
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return " ".join(inspect.cleandoc(node.value.value).split())
    return ""


def _aliases(tree: ast.Module) -> dict[str, ast.expr]:
    # Module-level type aliases (``Method = Literal[...]``, ``type Method = ...``), so a field
    # annotated with the alias shows the choices it stands for.
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif sys.version_info >= (3, 12) and isinstance(node, ast.TypeAlias):
            target, value = node.name, node.value
        else:
            continue
        if isinstance(target, ast.Name) and _looks_like_type(value):
            found[target.id] = value
    return found


def _looks_like_type(value: ast.expr) -> bool:
    if isinstance(value, ast.Subscript):
        base = value.value
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        return name == "Literal"
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
        return _looks_like_type(value.left) or _looks_like_type(value.right)
    return False


class _ExpandAliases(ast.NodeTransformer):
    def __init__(self, aliases: dict[str, ast.expr]) -> None:
        self.aliases = aliases

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.aliases.get(node.id, node)


def _type_text(annotation: ast.expr, aliases: dict[str, ast.expr]) -> str:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body  # a quoted annotation
    return ast.unparse(_ExpandAliases(aliases).visit(annotation))


def _default_text(value: ast.expr | None) -> str:
    if value is None:
        return "(required)"
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for kw in value.keywords:
            if kw.arg == "default":
                return _default_text(kw.value)
            if kw.arg == "default_factory":
                factory = ast.unparse(kw.value)
                empty = {"list": "[]", "dict": "{}", "tuple": "()"}
                return empty.get(factory, f"{factory}()")
        return "(required)"
    try:
        literal = ast.literal_eval(value)
    except ValueError:
        return ast.unparse(value)
    return _toml_literal(literal)


def _toml_literal(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return repr(value)


def _section_class(annotation: ast.expr, classes: dict[str, ast.ClassDef]) -> str | None:
    name = ast.unparse(annotation).strip("'\"")
    return name if name in classes else None


def parse_sections(source: str | None = None) -> list[Section]:
    """The top-level keys, then one section per dataclass that an ``ExperimentConfig`` field
    holds (in field order, nested sections after their parent)."""
    tree = ast.parse(source if source is not None else CONFIG_SOURCE.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef) and _is_dataclass(n)}
    aliases = _aliases(tree)
    sections: list[Section] = []

    def walk(cls_name: str, table: str) -> None:
        node = classes[cls_name]
        keys: list[Key] = []
        nested: list[tuple[str, str]] = []
        body = node.body
        for i, stmt in enumerate(body):
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            name = stmt.target.id
            sub = _section_class(stmt.annotation, classes)
            if sub is not None:
                nested.append((f"{table}.{name}" if table else name, sub))
                continue
            following = body[i + 1] if i + 1 < len(body) else None
            keys.append(
                Key(
                    name=name,
                    type=_type_text(stmt.annotation, aliases),
                    default=_default_text(stmt.value),
                    doc=_docstring(following),
                )
            )
        class_doc = _docstring(body[0]) if body else ""
        sections.append(Section(table, cls_name, class_doc, tuple(keys)))
        for sub_table, sub_cls in nested:
            walk(sub_cls, sub_table)

    walk(ROOT_CLASS, "")
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(sections: list[Section] | None = None) -> str:
    """The Markdown page: one table per section (key, type, default, meaning)."""
    sections = parse_sections() if sections is None else sections
    lines = [
        "# Configuration keys",
        "",
        "Every key a run's TOML file (or `--set key=value`) accepts, with its type, its",
        "default and what it means. Keys of a section go under its table (`[model]`) or take a",
        "dotted name (`--set model.max_length=128`). `unset` means the key is absent by default",
        "and the meaning says what is used instead.",
        "",
        "This page is generated from the docstrings in `src/fedquad/config.py`; do not edit it by",
        "hand. After changing a field, run `python -m fedquad.config_docs --write`",
        "(`tests/test_config_docs.py` fails while the page is out of date).",
    ]
    for section in sections:
        title = "Top-level keys" if not section.name else f"`[{section.name}]`"
        lines += ["", f"## {title}", ""]
        if section.doc and section.name:
            lines += [section.doc, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in section.keys:
            cells = [f"`{_cell(key.name)}`", f"`{_cell(key.type)}`", f"`{_cell(key.default)}`"]
            lines.append("| " + " | ".join([*cells, _cell(key.doc)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedquad.config_docs", description=__doc__)
    parser.add_argument(
        "--write",
        nargs="?",
        const=str(DEFAULT_OUTPUT),
        metavar="PATH",
        help=f"write the page to PATH (default {DEFAULT_OUTPUT}) instead of printing it",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write is None:
        sys.stdout.write(text)
    else:
        Path(args.write).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
