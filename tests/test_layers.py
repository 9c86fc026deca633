"""Imports run one way: a module never imports a layer above its own, not even inside a function.

The layers, lowest first (DESIGN.md): the core; config schemas; data, evaluation, the run store,
prices and prompts; backends and model loading; training, retrieval and the classical
baseline; rungs; economics and the verdict; the climb; report and serve; the CLI. Imports under
``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rungwise"

LAYERS: list[set[str]] = [
    {"types", "errors", "paths", "_deps", "registry", "money", "usercode"},
    {"config"},
    {"data", "evaluate", "store", "prices", "prompting", "templates"},
    {"backends", "models", "data.audit"},  # the audit counts tokens with the task model's tokenizer
    {"train", "retrieval", "classic"},
    {"rungs"},
    {"economics", "advise"},
    {"climb"},
    {"report", "serve", "compare"},
    {"cli", "__main__", "__init__"},
]


def _layer(module: str) -> int:
    """Layer of ``rungwise.<top>...`` (the longest listed prefix wins: ``data.audit`` sits above
    ``data``); every top-level module must be placed in a layer."""
    parts = module.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for i, names in enumerate(LAYERS):
            if prefix in names:
                return i
    raise AssertionError(f"rungwise.{parts[0]} is in no layer: add it to LAYERS in tests/test_layers.py")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every rungwise import outside ``if TYPE_CHECKING`` blocks."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.startswith("rungwise"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("rungwise"):
                if name == "rungwise" or not node.module:  # `from rungwise import models` imports modules
                    out.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
                else:
                    out.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_imports_never_run_upward() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        here = _layer(module)
        for line, target in _imports(ast.parse(path.read_text(encoding="utf-8")), package):
            if target in ("rungwise", "rungwise.__init__"):
                target = "rungwise.__version__" if module != "rungwise.__init__" else target
            if target == "rungwise.__version__":
                continue  # the version string: importing it pulls in nothing
            if _layer(target) > here:
                upward.append(f"{path.relative_to(SRC.parent)}:{line}: {module} (layer {here}) imports {target} "
                              f"(layer {_layer(target)})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_layer_test_sees_an_upward_import(tmp_path: Path) -> None:
    # The walker finds imports inside functions and skips TYPE_CHECKING blocks.
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rungwise.climb import climb\n"
        "def f():\n    from rungwise.cli import main\n"
        "from . import paths\n"
    )
    assert _imports(tree, "rungwise.data") == [(5, "rungwise.cli"), (6, "rungwise.data.paths")]
    assert _layer("rungwise.cli.core") > _layer("rungwise.data.loaders")
