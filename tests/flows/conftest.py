"""A whole small system for flow tests: sandbox seeded with sample data, a database, env vars."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from siyu.blocks.wecom import WeComClient
from siyu.sandbox.sample import SampleSpec, generate
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.export import EXPORT_COLUMNS

DAY = date(2026, 11, 24)
SALT = "flow-test-salt"


def read_run(state):
    """The Prefect flow run behind a flow's returned state (its name and tags, as the UI lists)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


@dataclass
class System:
    """What a flow test drives and inspects."""

    sandbox: object
    database_url: str
    landing: Path
    export_path: Path
    seed_dir: Path
    home: Path

    def client(self) -> WeComClient:
        return WeComClient(self.sandbox.api_base, self.sandbox.corp_id, self.sandbox.secret)

    def engine(self):
        return make_engine(self.database_url)

    def export_frame(self) -> pd.DataFrame:
        """The export as text, field-named (the test's oracle reads it independently of siyu)."""
        headers = {c.header: c.field for c in EXPORT_COLUMNS}
        return pd.read_csv(self.export_path, encoding="gbk", dtype=str).rename(columns=headers)

    def follows(self) -> pd.DataFrame:
        return pd.read_parquet(self.seed_dir / "follows.parquet")

    def tag_changes(self) -> int:
        return self.sandbox.stats()["tag_changes"]

    def mark_tag_calls(self) -> int:
        return self.sandbox.stats()["calls"].get("externalcontact/mark_tag", 0)


@pytest.fixture
def system(prefect_server, sandbox, database_url, siyu_home, monkeypatch, tmp_path) -> System:
    """400 customers, 3 managers, seeded into the sandbox; env vars point siyu at it all."""
    sample = generate(
        SampleSpec(customers=400, groups=1, managers=3, seed=11, export_date=DAY),
        tmp_path / "sample",
    )
    sandbox.seed(sample.seed_dir)
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setenv("SIYU_WECOM_BASE_URL", sandbox.api_base)
    monkeypatch.setenv("SIYU_WECOM_CORP_ID", sandbox.corp_id)
    monkeypatch.setenv("SIYU_WECOM_SECRET", sandbox.secret)
    monkeypatch.setenv("SIYU_MOBILE_SALT", SALT)
    upgrade(database_url)
    landing = siyu_home / "landing"
    landing.mkdir()
    export_path = Path(shutil.copy(sample.export_path, landing / sample.export_path.name))
    return System(sandbox, database_url, landing, export_path, sample.seed_dir, siyu_home)
