"""The package's layers and their one-way import rule, checked on the source (function-local imports included)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "locoedit"

# Lower layers never import higher ones; a layer imports only strictly lower layers (and itself). ``toyworld`` and
# ``core`` are leaves: they import nothing of locoedit but its version.
LAYERS = {
    "locoedit": -1,  # the package root holds only __version__
    "core": 0,
    "toyworld": 0,
    "models": 1,
    "testing": 1,
    "interventions": 2,
    "delta": 2,  # edits as data: the file format, strength, apply, LoRA export, model cards
    "scoring": 2,
    "report": 2,
    "localize": 3,
    "trace": 3,
    "edit": 4,
    "evaluate": 5,
    "workflows": 6,
    "web": 7,  # the Gradio app, a front end like the CLI; below it only because `locoedit ui` starts it
    "cli": 8,
    "__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str | None) -> str:
    """``from module import name``: the submodule when ``name`` is one, else the module itself."""
    if name is not None:
        candidate = PACKAGE.parent.joinpath(*f"{module}.{name}".split("."))
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return f"{module}.{name}"
    return module


def _imports(source: str, here: str, is_package: bool = False) -> list[tuple[str, bool]]:
    """(imported locoedit module, whether the import runs) for every import in the source of module ``here``:
    top-level, in functions, and under ``if TYPE_CHECKING`` (which does not run)."""
    tree = ast.parse(source)
    checking_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            checking_only.update(id(child) for child in ast.walk(node))
    package = here if is_package else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in checking_only
        if isinstance(node, ast.Import):
            found += [(alias.name, runs) for alias in node.names if alias.name.split(".")[0] == "locoedit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "locoedit":
                found += [(_resolve(module, alias.name), runs) for alias in node.names]
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "locoedit"


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {
    _module_name(path): _imports(path.read_text(), _module_name(path), path.name == "__init__.py") for path in SOURCES
}


def test_every_top_level_unit_has_a_layer():
    units = {_layer(name) for name in GRAPH}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS (and to the README's drawing)"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_only(module):
    mine = _layer(module)
    upward = [
        target for target, _ in GRAPH[module] if _layer(target) != mine and LAYERS[_layer(target)] >= LAYERS[mine]
    ]
    assert not upward, f"{module} (layer {mine}) imports {upward} from the same or a higher layer"


def test_no_import_cycles():
    edges = {
        name: {target for target, runs in imports if runs and target in GRAPH and target != name}
        for name, imports in GRAPH.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_scan_sees_local_relative_and_type_checking_imports():
    source = (
        "from typing import TYPE_CHECKING\nfrom .errors import LocoeditError\nif TYPE_CHECKING:\n"
        "    from locoedit.models import Adapter\ndef f():\n    from locoedit.cli import app\n"
    )
    imports = _imports(source, "locoedit.core.probe")
    assert imports == [("locoedit.core.errors", True), ("locoedit.models", False), ("locoedit.cli", True)]
    assert LAYERS[_layer("locoedit.cli")] > LAYERS["core"]  # a core module importing the CLI would fail the rule


TRAINING_CODE = {"locoedit.toyworld.train"}  # one training loop, read top to bottom
MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines_outside_training_code():
    long = [
        f"{_module_name(path)}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in SOURCES
        if _module_name(path) not in TRAINING_CODE
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"split these into functions of at most {MAX_FUNCTION_LINES} lines: {long}"
