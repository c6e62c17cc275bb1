"""The dependency picture of docs/ARCHITECTURE.md is true: no import runs back up.

    vocabulary <- trainables -> results <- analysis <- sweep   (sweep also drives trainables)

Every import statement of every module counts, the ones inside functions too: an arrow that runs back up
only at call time still ties the lower package to the upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("vocabulary", "results", "trainables", "sweep", "analysis", "bench")

# what each package may import of ours; anything else is an arrow that runs back up
ALLOWED = {
    "vocabulary": set(),
    "results": {"vocabulary"},
    "trainables": {"vocabulary", "results"},
    # sweep sits on top: it drives trainables and asks analysis which configurations were chosen
    "sweep": {"vocabulary", "results", "trainables", "analysis"},
    "analysis": {"vocabulary", "results"},
    "bench": {"vocabulary", "results", "trainables", "sweep"},
}
# a named exception, each with its reason: the only places a package reaches outside ALLOWED
EXCEPTIONS = {
    # `python -m analysis export` rebuilds the model, inside the command only (analysis stays torch-free)
    ("analysis/export.py", "trainables"),
    # the old command name `python -m trainables.bench` forwards to `python -m bench`
    ("trainables/bench.py", "bench"),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return found


def edges() -> list[tuple[str, str, str]]:
    out = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out.extend((package, rel, target) for target in imported_packages(path) if target != package)
    return out


def test_the_import_scan_sees_nested_imports(tmp_path):
    # the scan must count an import inside a function, or a back-arrow at call time would pass unseen
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from trainables.trial import run_trial\n    import sweep.cli\n")
    assert imported_packages(module) == {"trainables", "sweep"}


@pytest.mark.parametrize("package", OURS)
def test_no_dependency_runs_back_up(package):
    wrong = sorted((rel, target) for pkg, rel, target in edges()
                   if pkg == package and target not in ALLOWED[package] and (rel, target) not in EXCEPTIONS)
    assert not wrong, f"{package} imports packages above it (see docs/ARCHITECTURE.md): {wrong}"


def test_the_allowed_picture_has_no_cycle():
    order = []
    pending = dict(ALLOWED)
    while pending:
        ready = [p for p, needs in pending.items() if needs <= set(order)]
        assert ready, f"the allowed imports form a cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        for p in ready:
            del pending[p]


def test_every_exception_is_still_needed():
    used = {(rel, target) for _, rel, target in edges()}
    assert EXCEPTIONS <= used, f"exceptions no longer used, remove them: {EXCEPTIONS - used}"


MAX_FUNCTION_LINES = 60


def test_no_function_over_60_lines():
    # a function that does one job reads top to bottom; the long ones were the ones doing several
    long = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


# ------------------------------------------------------------------ tests use public names only

def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _is_our_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return dotted.split(".")[0] in OURS and (path.with_suffix(".py").is_file() or path.is_dir())


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """Where ``path`` reaches an underscore name of our packages: ``from ours import _x`` or ``mod._x`` with
    ``mod`` one of our modules (imported as a name, as an alias or through its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = {}  # local name -> our module's dotted name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_our_module(alias.name):
                    local = alias.asname or alias.name.split(".")[0]
                    modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_our_module(node.module):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif _is_our_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = _dotted(node.value)
            if owner is not None and owner.split(".")[0] in modules:
                full = ".".join([modules[owner.split(".")[0]], *owner.split(".")[1:]])
                if _is_our_module(full):
                    found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


def test_the_private_scan_sees_imports_and_module_attributes(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import trainables.trial\nfrom trainables import evaluate as ev\nfrom trainables.trial import "
                      "_Trial, run_trial\nev._x\ntrainables.trial._y\nev.__doc__\nrun_trial._z\n")
    assert private_uses(module) == ["line 3: from trainables.trial import _Trial", "line 4: ev._x",
                                    "line 5: trainables.trial._y"]


def test_tests_use_only_public_names_of_our_packages():
    """A test that imports a private name pins an implementation detail: a refactor that keeps every
    behaviour then breaks it. What a test genuinely needs gets a public name in its module's ``__all__``."""
    found = {path.relative_to(ROOT).as_posix(): uses for path in sorted((ROOT / "tests").rglob("*.py"))
             if (uses := private_uses(path))}
    assert not found, f"tests reach private names of our packages: {found}"


def test_trainables_names_its_public_surface_without_importing_torch():
    """``import trainables`` stays light (the CLIs' --help and analysis never pay for torch); each name of its
    ``__all__`` and of each submodule's ``__all__`` exists."""
    import subprocess
    import sys

    code = ("import sys, importlib, trainables\nassert 'torch' not in sys.modules, 'import trainables loaded torch'\n"
            "for name in trainables.__all__: getattr(trainables, name)\n"
            "import pkgutil\n"
            "for mod in pkgutil.iter_modules(trainables.__path__):\n"
            "    m = importlib.import_module('trainables.' + mod.name)\n"
            "    for name in getattr(m, '__all__', []): getattr(m, name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
