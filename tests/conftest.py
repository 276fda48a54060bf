"""Test session setup: quiet, offline Prefect and GX, a private SIYU_HOME, shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="siyu-test-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["SIYU_HOME"] = str(_SESSION_HOME / "siyu")
# The tests choose the embedded environment (a missing block comes from SIYU_* settings), as
# `siyu up` does; a test of production sets it back.
os.environ["SIYU_ENVIRONMENT"] = "embedded"
# The heartbeat siyu's launchers give flow runs, so a zombie-run automation on the test
# server never takes a live run for a dead one.
os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = "30"

import pytest  # noqa: E402

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.sandbox"]


@pytest.fixture(scope="session")
def prefect_server():
    """One real, ephemeral Prefect server (SQLite) for the whole session: it takes ~10 s to start."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()  # for subprocesses (the CLI) to reach the same server


@pytest.fixture
def siyu_home(tmp_path, monkeypatch) -> Path:
    """A fresh SIYU_HOME for one test."""
    home = tmp_path / "siyu-home"
    home.mkdir()
    monkeypatch.setenv("SIYU_HOME", str(home))
    return home
