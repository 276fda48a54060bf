"""Fixtures of the sandbox's own tests: the small seed loaded, and a bare client on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.sandbox import SandboxHandle
from tests.sandbox.bare_client import WeCom


@pytest.fixture
def seeded(sandbox: SandboxHandle, seed_dir: Path) -> SandboxHandle:
    sandbox.seed(seed_dir)
    return sandbox


@pytest.fixture
def wecom(seeded: SandboxHandle) -> WeCom:
    return WeCom(seeded)
