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
