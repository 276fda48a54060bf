"""The code stays ruff-clean, its imports point down the arrow, and only siyu up/cli reach the sandbox."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    done = run(str(BIN / "ruff"), "check", ".")
    assert done.returncode == 0, done.stdout[-3000:]


def test_ruff_format_is_clean():
    done = run(str(BIN / "ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout[-3000:]


def test_import_layers_hold():
    done = run(str(BIN / "lint-imports"))
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_contracts_catch_a_deployment_module_importing_the_sandbox(tmp_path):
    """Only `siyu sandbox`, `siyu sample` (cli) and `siyu up` may reach the sandbox."""
    import os
    import shutil

    root = tmp_path / "src" / "siyu"
    for package in ("flows", "tasks", "blocks", "schemas", "deployments", "sandbox"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (root / "deployments" / "serve.py").open("a") as module:
        module.write("\nimport siyu.sandbox.sample  # noqa\n")

    done = subprocess.run(
        [str(BIN / "lint-imports"), "--config", "pyproject.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "src")},
    )

    assert done.returncode != 0
    assert "siyu.deployments.serve -> siyu.sandbox.sample" in done.stdout
