"""The import contracts of pyproject.toml ([tool.importlinter]) hold: `lint-imports` passes.

import-linter finds a package's modules by walking the folder of its
``__init__.py``. The repository keeps ``core/`` and ``cli/`` beside ``src/prunectl``
(see [tool.setuptools.package-dir]), so an editable install gives it no
``prunectl/core`` folder to walk; the test lays the sources out as the wheel does
and runs the installed import-linter on that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO

LAYOUT = {"prunectl": REPO / "src" / "prunectl", "prunectl/core": REPO / "core", "prunectl/cli": REPO / "cli"}


def test_import_contracts_hold(tmp_path):
    for target, source in LAYOUT.items():
        shutil.copytree(source, tmp_path / target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--config",
            str(REPO / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
