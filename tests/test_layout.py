"""The package's shape: no import cycle, output kinds named only where they live, short
functions, and numerics that know nothing of the command line or of files."""

import ast
from pathlib import Path

import pytest

from rnnlm_cli import output
from rnnlm_cli.config import ModelConfig

PACKAGE = Path(__file__).resolve().parent.parent / "rnnlm_cli"
NUMERICS = ("layers", "gated", "model", "output", "output.softmax", "output.classes", "output.hsm", "optim", "parallel",
            "schedule", "evaluate", "sample", "gradcheck", "dynamic", "tune")


def _modules():
    """{dotted name within the package: parsed module}"""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return found


def _imports(name, path, tree, names):
    """The package modules `name` imports (relative imports; anywhere in the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(base + [alias.name])
                deps.add(candidate if candidate in names else ".".join(base))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and module.startswith("rnnlm_cli"):
                deps.add(module[len("rnnlm_cli."):] if module != "rnnlm_cli" else "")
    return {d for d in deps if d != name}


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, tree, modules) for name, (path, tree) in modules.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join(trail + [name])}"
        state[name] = "open"
        for dep in graph.get(name, ()):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def _strings(tree):
    """String constants that are not docstrings."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs}


def test_output_kinds_are_named_only_in_their_package_and_the_config():
    names = set(output.KINDS)
    for kind, module in output.KINDS.items():
        cfg = ModelConfig(output=kind, hidden_dim=4, classes=2)
        names |= set(module.param_shapes(cfg, 10)) - {"output."}
    for name, (path, tree) in _modules().items():
        if name == "config" or name.startswith("output"):
            continue
        named = _strings(tree) & names
        assert not named, f"{path.name} names output kinds or their arrays: {sorted(named)}"
        assert ".output ==" not in path.read_text(encoding="utf-8"), path.name


def test_functions_are_short_or_say_why():
    for name, (path, tree) in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = lines[node.lineno - 1:node.end_lineno]
                if len(body) > 60:
                    assert any("Long on purpose" in line for line in body), \
                        f"{path.name}:{node.lineno} {node.name} has {len(body)} lines and no comment saying why"


@pytest.mark.parametrize("name", NUMERICS)
def test_the_numerics_know_nothing_of_the_command_line_or_files(name):
    path, tree = _modules()[name]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0] if node.module and not node.level else f".{node.module}")
            if node.level and node.module is None:
                imported |= {f".{a.name}" for a in node.names}
    assert not imported & {"click", "tqdm", "mpi4py", ".files", ".modeldir", ".lock", ".checkpoint", ".cli"}, imported
