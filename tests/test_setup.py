"""The README's set-up: which Python `make` uses and when it (re)installs, read from `make -n` (nothing runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

FILES = ("Makefile", "requirements.txt", "requirements-dev.txt", "pyproject.toml")


@pytest.fixture
def project(tmp_path, repo_root):
    for name in FILES:
        shutil.copy(repo_root / name, tmp_path / name)
    return tmp_path


def dry_run(folder, *args: str, **env: str) -> list[str]:
    """The commands `make -n ARGS` would run, with no virtual environment active unless `env` says so."""
    # NOTE run from inside `make test`, the outer make's MAKEFLAGS / MAKELEVEL would make this one a sub-make
    hidden = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS")
    clean = {k: v for k, v in os.environ.items() if k not in hidden}
    done = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=folder, env={**clean, **env},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def test_without_an_environment_make_creates_and_uses_dot_venv(project):
    lines = dry_run(project, "demo")
    assert any(line.startswith("python3 -m venv .venv") for line in lines)
    assert ".venv/bin/python -m pip install -q -r requirements.txt" in lines
    assert lines[-1] == ".venv/bin/python scripts/run_chain.py --config configs/default.yaml"
    assert not any(line.startswith("python ") for line in lines)  # `python` need not exist


def test_a_made_dot_venv_is_reused_until_a_requirement_changes(project):
    python = project / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    time.sleep(0.05)
    (project / ".venv" / ".installed-runtime").write_text("")
    (project / ".venv" / ".installed-dev").write_text("")
    assert dry_run(project, "test") == [".venv/bin/lint-imports",
                                        "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 2"]
    time.sleep(0.05)
    (project / "requirements-dev.txt").write_text((project / "requirements-dev.txt").read_text() + "\n")
    lines = dry_run(project, "test")
    assert lines[0] == ".venv/bin/python -m pip install -q -r requirements-dev.txt"
    assert not any("venv .venv" in line or "requirements.txt" in line for line in lines)


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_used_as_it_is(project, variable):
    lines = dry_run(project, "demo", **{variable: "/opt/envs/mine"})
    assert not any("venv" in line for line in lines)
    assert "/opt/envs/mine/bin/python -m pip install -q -r requirements.txt" in lines
    assert lines[-1] == "/opt/envs/mine/bin/python scripts/run_chain.py --config configs/default.yaml"


def test_python_named_on_the_command_line(project):
    lines = dry_run(project, "lint", "PYTHON=/usr/bin/python3.12")
    assert lines[-1] == "/usr/bin/python3.12 -m ruff check src scripts tests"
    assert not any("venv" in line for line in lines)
