"""The package's layers (docs/DESIGN.md "Layers"): the import-linter contracts of pyproject.toml hold,
and a module that imports upwards is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def _lint_imports(cwd, src):
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_layer_contracts_hold(repo_root):
    done = _lint_imports(repo_root, repo_root / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.slow
def test_an_upward_import_breaks_the_contract(repo_root, tmp_path):
    """A copy of the package where the probability layer imports a stage: the checker must refuse it."""
    shutil.copytree(repo_root / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "pyproject.toml", tmp_path / "pyproject.toml")
    views = tmp_path / "src" / "segfold" / "probs" / "views.py"
    views.write_text(views.read_text() + "\n\ndef _sneaky():\n    from segfold.predict import run  # noqa: F401\n")
    done = _lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode != 0
    assert "segfold.probs.views -> segfold.predict" in done.stdout
