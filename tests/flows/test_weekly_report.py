"""The weekly-report flow on a simulated month: artifacts read back from Prefect, checked against the DB."""

from __future__ import annotations

import datetime as dt
import json
import re
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy.orm import Session

from siyu.flows.weekly_report import ARTIFACT_KEY, weekly_report
from siyu.sandbox.export_files import write_export
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.models import Export
from siyu.schemas.settings import Settings
from siyu.tasks.export import file_checksum
from siyu.tasks.weekly_report import TABLES, WeeklyFigures
from tests.tasks.test_weekly_report import BUDGET, REPORT_WEEK, check_figures, simulate_month

ZONE = ZoneInfo("Asia/Shanghai")
EXPORT_DAY = dt.date(2026, 11, 29)


def newest(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created)


def write_newest_export(session: Session, aum_now: pd.DataFrame) -> None:
    """The newest accepted export: the enrolled customers with their AUM now, in the landing dir."""
    frame = pd.DataFrame(
        {
            "customer_id": aum_now["customer_id"],
            "name": "",
            "mobile": [f"139{i:08d}" for i in range(len(aum_now))],
            "branch_code": "BR001",
            "customer_class": "直营",
            "aum": aum_now["aum"].map(lambda a: f"{a:.2f}"),
            "aum_peak": aum_now["aum"].map(lambda a: f"{a:.2f}"),
            **{f: "否" for f in ("payroll", "holds_wealth", "holds_fund", "holds_insurance",
                                 "holds_loan", "holds_credit_card")},
            "opened_on": "20200101",
            "export_date": f"{EXPORT_DAY:%Y%m%d}",
        }
    )  # fmt: skip
    path = write_export(frame, Settings.from_env().landing_dir / f"core_{EXPORT_DAY:%Y%m%d}.csv")
    path.chmod(0o600)
    # Accepted (its push under way), not synced: the tag figures count synced exports only.
    session.add(
        Export(
            file_name=path.name,
            checksum=file_checksum(path),
            export_date=EXPORT_DAY,
            status="accepted",
            row_count=len(frame),
        )
    )
    session.commit()


@pytest.fixture
def month(prefect_server, sandbox, seed_dir, database_url, siyu_home, monkeypatch):
    sandbox.seed(seed_dir)  # the two seed groups have names in WeCom
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setenv("SIYU_WECOM_BASE_URL", sandbox.api_base)
    monkeypatch.setenv("SIYU_WECOM_CORP_ID", sandbox.corp_id)
    monkeypatch.setenv("SIYU_WECOM_SECRET", sandbox.secret)
    monkeypatch.setenv("SIYU_MOBILE_SALT", "weekly-report-salt")
    (siyu_home / "landing").mkdir(exist_ok=True)
    upgrade(database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        simulated = simulate_month(session)
        write_newest_export(session, simulated.aum_now)
    try:
        yield engine, simulated
    finally:
        engine.dispose()


def test_the_weekly_report_of_a_simulated_month_matches_the_database(month) -> None:
    engine, simulated = month
    # Monday 09:00 Beijing time: the scheduled run reports the week that just ended.
    state = weekly_report(at=dt.datetime(2026, 11, 30, 9, tzinfo=ZONE), return_state=True)
    assert state.is_completed(), state.message
    assert "2026-W48" in state.message

    tables = {}
    for name in TABLES:
        artifact = newest(f"{ARTIFACT_KEY}-{name}")
        assert artifact.type == "table"
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        tables[name] = pd.DataFrame(data)
    figures = WeeklyFigures(
        weeks=["2026-W45", "2026-W46", "2026-W47", "2026-W48"], week_start=REPORT_WEEK, **tables
    )
    assert figures.rewards["budget_fen"].iloc[0] % BUDGET.group_week_fen == 0  # the library's
    with Session(engine) as session:
        check_figures(figures, session, simulated.aum_now)

    report = newest(ARTIFACT_KEY)
    assert report.type == "markdown"
    markdown = report.data
    assert markdown.startswith("# Weekly report 2026-W48 (2026-11-23 to 2026-11-29)")
    images = re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(images) == 7
    assert all(len(image) * 3 / 4 < 150_000 for image in images)
    # The dying group is named as WeCom names it; a group WeCom no longer knows keeps its id.
    assert "李经理的信用卡福利群" in markdown and "wrSimChat0005" in markdown
    assert "代发稳健理财" in markdown and "周五抢答" in markdown  # path title, activity theme
    assert not re.search(r"C\d{8}|wmSim\d{4}", markdown + json.dumps(state.result()))


def test_a_week_given_by_hand_is_reported_for_that_week(month) -> None:
    state = weekly_report(
        week_of=dt.date(2026, 11, 11), weeks=2, at=dt.datetime(2026, 12, 1, tzinfo=ZONE),
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    assert state.result()["weeks"] == ["2026-W45", "2026-W46"]
    markdown = newest(ARTIFACT_KEY).data
    assert markdown.startswith("# Weekly report 2026-W46 (2026-11-09")
    # That week's newest export is gone from the landing directory: the report says so.
    assert "AUM after conversion is not shown" in markdown
