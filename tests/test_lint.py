"""The code stays ruff-clean and its imports point down the arrow: flows -> tasks -> blocks/schemas."""

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
