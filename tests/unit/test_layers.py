"""Layer rules: the API and the executor never import each other, and nothing
in the package imports the command-line entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "manager"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [("api", "manager.executor"), ("executor", "manager.api")],
)
def test_api_and_executor_do_not_import_each_other(folder: str, forbidden: str) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules_under(folder)
        for name in imported_modules(path)
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert offenders == []
    assert modules_under(folder), f"no modules found under manager/{folder}"


def test_nothing_imports_the_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("cli.py", "__main__.py")
        and "manager.cli" in imported_modules(path)
    ]
    assert offenders == []


def test_store_and_database_layers_import_neither_api_nor_executor() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for folder in ("store", "db")
        for path in modules_under(folder)
        for name in imported_modules(path)
        if name.startswith(("manager.api", "manager.executor"))
    ]
    assert offenders == []
