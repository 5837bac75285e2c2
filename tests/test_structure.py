"""The package's shape, checked by the suite: its layers (import-linter's contracts in
pyproject.toml), ruff, modules and functions of a readable size, and no import hidden in a
function where it would hide a dependency from both."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tune_hw"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
MODULES = sorted(PACKAGE.rglob("*.py"))


def run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_imports_keep_the_layers():
    # the venv's own script first: the suite may run without the venv on PATH
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
        shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -e '.[test]'"
    proc = run(command, "--no-cache", "--no-logo")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_finds_nothing():
    proc = run(sys.executable, "-m", "ruff", "check", "tune_hw", "tests", "benchmarks")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, "split the module by job"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_import_of_tune_hw_or_ray_hides_in_a_function(path):
    hidden = []
    for func in ast.walk(ast.parse(path.read_text())):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            hidden += [f"{func.name}: {n}" for n in names
                       if n.split(".")[0] in ("tune_hw", "ray")
                       or (isinstance(node, ast.ImportFrom) and node.level)]
    assert hidden == []
