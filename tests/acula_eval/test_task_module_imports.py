"""The task specs and the split logic share one type (`SplitPolicy`, in `split_policy.py`) and know nothing else of
each other: neither module imports the other, at run time or for type checking."""

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[2] / "acula_eval" / "tasks"


def imported_modules(path: Path) -> set[str]:
    """The modules `path` imports anywhere (under `if TYPE_CHECKING:` and inside functions too), relative ones as
    written relative to their package (`.splits` -> `splits`, `acula_eval.tasks.splits` -> `splits`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # `from . import splits` names the module in the imported names
            modules = [base] if base else [alias.name for alias in node.names]
            if node.level == 0 and base == "acula_eval.tasks":
                modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            names.add(module.removeprefix("acula_eval.tasks."))
    return names


@pytest.mark.parametrize("module, other", [("specs", "splits"), ("splits", "specs")])
def test_specs_and_splits_do_not_import_each_other(module, other):
    assert other not in imported_modules(TASKS / f"{module}.py")


def test_both_take_the_split_policy_from_its_own_module():
    for module in ("specs", "splits"):
        assert "split_policy" in imported_modules(TASKS / f"{module}.py")
    assert {"specs", "splits"}.isdisjoint(imported_modules(TASKS / "split_policy.py"))


def test_the_check_sees_a_type_checking_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .specs import TaskData\n"
                      "def f():\n    from acula_eval.tasks import splits\n")
    assert {"specs", "splits"} <= imported_modules(source)
