"""What importing the library loads, and the import graph of the project: no cycles, and the layering
modeling_acula <- acula_train <- acula_eval (the library never imports an app, training never imports evaluation)."""

import ast
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testing_utils import REPO

PACKAGES = ("modeling_acula", "acula_train", "acula_eval", "benchmarks")
# Entry points at the top of the repository (setup.py is packaging, not part of the program).
SCRIPTS = tuple(sorted(path.stem for path in REPO.glob("*.py") if path.name != "setup.py"))
# What the library must not load: the apps' dependencies, and the apps themselves.
NOT_LOADED_BY_THE_LIBRARY = ("peft", "datasets", "evaluate", "sklearn", "matplotlib", "acula_train", "acula_eval")
# The library's own runtime dependencies (setup.py's install_requires) and what they load themselves.
LIBRARY_DEPENDENCIES = {
    "torch", "transformers", "safetensors", "huggingface_hub", "numpy", "soundfile", "_soundfile",
    "_soundfile_data", "cffi", "_cffi_backend", "soxr",
}


# --- what `import modeling_acula` loads ------------------------------------------------------------------------


def modules_after(code: str) -> frozenset[str]:
    """The names in sys.modules of a fresh interpreter (no conftest, no pytest) that ran `code` in the repository
    root."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    return frozenset(json.loads(result.stdout.splitlines()[-1]))


def top_level(modules: frozenset[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@functools.cache
def after_importing_the_library() -> frozenset[str]:
    return modules_after("import modeling_acula")


def module_level_transformers_imports(module: str) -> list[str]:
    """The `import transformers...` / `from transformers... import ...` statements at the top level of `module`."""
    statements = []
    for node in ast.parse(module_path(module).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "transformers":
            statements.append(f"from {node.module} import {', '.join(alias.name for alias in node.names)}")
        elif isinstance(node, ast.Import):
            statements += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "transformers"]
    return statements


def test_importing_the_library_loads_neither_the_apps_nor_their_dependencies():
    loaded = top_level(after_importing_the_library())
    assert "modeling_acula" in loaded
    assert not loaded & set(NOT_LOADED_BY_THE_LIBRARY), sorted(loaded & set(NOT_LOADED_BY_THE_LIBRARY))


def test_the_library_loads_nothing_beyond_the_transformers_pieces_it_uses_and_its_own_dependencies():
    """accelerate in particular: transformers 5 imports it at import time whenever it is installed, so the library
    loads it exactly when the transformers modules it builds on do, never on its own."""
    library_modules = sorted(m for m in after_importing_the_library() if m.split(".")[0] == "modeling_acula")
    statements = sorted({s for module in library_modules for s in module_level_transformers_imports(module)})
    assert statements, "found no transformers import in modeling_acula"
    by_transformers = top_level(modules_after("\n".join(statements)))
    by_library = top_level(after_importing_the_library())
    assert ("accelerate" in by_library) == ("accelerate" in by_transformers)
    # What is true of the pinned transformers: its modeling modules load accelerate when it is installed.
    assert ("accelerate" in by_transformers) == (importlib.util.find_spec("accelerate") is not None)
    added = by_library - by_transformers - set(sys.stdlib_module_names) - {"modeling_acula"}
    assert added <= LIBRARY_DEPENDENCIES, sorted(added - LIBRARY_DEPENDENCIES)


# --- the import graph of the project ---------------------------------------------------------------------------


def module_path(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def project_modules() -> list[str]:
    modules = list(SCRIPTS)
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def is_type_checking_block(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): never run, so not an import at run time."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(node: ast.AST):
    """Every import statement under `node`, at module level and inside functions, except in TYPE_CHECKING blocks
    (their `else:` branch runs and is kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif is_type_checking_block(child):
            for statement in child.orelse:
                yield from import_nodes(ast.Module(body=[statement], type_ignores=[]))
        else:
            yield from import_nodes(child)


def imported_names(module: str) -> list[tuple[str, int]]:
    """Every module `module` imports (at module level and inside functions), with the line: `from a import b`
    names `a.b` (a submodule, or a name that `resolve` maps back to `a`)."""
    is_package = module_path(module).name == "__init__.py"
    names = []
    for node in import_nodes(ast.parse(module_path(module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        else:
            if node.level:  # relative: from the package (itself, for an __init__)
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names] + [(base, node.lineno)]
    return names


def resolve(name: str, modules: set[str]) -> str | None:
    """The project module `name` refers to: itself, or its closest enclosing project module; None outside."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


@functools.cache
def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the import}."""
    modules = set(project_modules())
    graph = {}
    for module in modules:
        edges = {}
        for name, line in imported_names(module):
            target = resolve(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    return "; ".join(f"{source}:{line} -> {target}" for source in component
                     for target, line in sorted(graph[source].items()) if target in members)


def test_the_graph_sees_every_kind_of_import():
    """The walker itself: relative, function-level and `from package import submodule` imports are edges."""
    graph = import_graph()
    assert "modeling_acula.modeling_acula" in graph["modeling_acula"]  # `from .modeling_acula import ...`
    assert "modeling_acula.configuration_acula" in graph["modeling_acula.modeling_acula"]
    assert "train_acula" in graph and any(t.startswith("acula_train") for t in graph["train_acula"])
    assert find_cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}) == [["a", "b", "c"]]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                      "def f():\n    import c\n")
    assert [alias.name for node in import_nodes(typed) for alias in getattr(node, "names", [])] == [
        "TYPE_CHECKING", "b", "c"]


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(component, graph) for component in cycles)


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [("modeling_acula", ("acula_train", "acula_eval", "benchmarks", *SCRIPTS)),
     ("acula_train", ("acula_eval", "benchmarks", *SCRIPTS))],
)
def test_the_layers_import_only_downwards(importer, forbidden):
    graph = import_graph()
    crossings = [
        f"{source}:{line} imports {target}"
        for source, edges in sorted(graph.items()) if source.split(".")[0] == importer
        for target, line in sorted(edges.items()) if target.split(".")[0] in forbidden
    ]
    assert not crossings, "\n".join(crossings)
