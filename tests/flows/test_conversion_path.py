"""The conversion path end to end: tag-sync's export, enrolment, scheduled touches, catch-up."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import siyu.flows.conversion_path as conversion_path
from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.conversion_path import path_due, path_enroll, path_touch
from siyu.flows.tag_sync import tag_sync
from siyu.schemas.conversion import Cohort, Enrollment, TouchRun
from siyu.schemas.ledger import Send
from tests.flows.conftest import DAY, read_run

ZONE = ZoneInfo("Asia/Shanghai")
MASS_API = "externalcontact/add_msg_template"


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), ZONE)


@pytest.fixture
def scheduled(monkeypatch) -> list[tuple[str, dict, dt.datetime, str]]:
    """What path-enroll asks Prefect to schedule (no path-touch deployment is served here)."""
    calls: list[tuple[str, dict, dt.datetime, str]] = []

    def record(key, parameters, due, name):
        calls.append((key, parameters, due, name))
        return None

    monkeypatch.setattr(conversion_path, "SCHEDULER", record)
    return calls


@pytest.fixture
def synced(system):
    assert contacts_sync(return_state=True).is_completed()
    assert tag_sync(business_date=DAY, return_state=True).is_completed()
    return system


def _frame(engine, query, columns) -> pd.DataFrame:
    with Session(engine) as session:
        return pd.DataFrame(session.execute(query).all(), columns=columns)


def test_a_dry_run_says_who_would_enter_and_stores_nothing(synced, scheduled) -> None:
    state = path_enroll(as_of=at(DAY, 9), dry_run=True, return_state=True)
    assert state.is_completed()
    entrants = state.result()["entrants"]
    assert sum(r["members"] for r in entrants) > 0
    assert {r["path"] for r in entrants} <= {
        "asset-recovery",
        "payroll-wealth",
        "high-asset-invest",
        "wealth-news",
        "new-customer",
    }
    with Session(synced.engine()) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Enrollment)) == 0
    assert scheduled == []
    run = read_run(state)
    assert run.name.endswith(" · dry run") and "dry-run" in run.tags


def test_enrolment_schedules_four_named_touches_and_touches_reach_the_treated_once(
    synced, scheduled
) -> None:
    engine = synced.engine()
    assert path_enroll(as_of=at(DAY, 9), return_state=True).is_completed()
    members = _frame(
        engine,
        sa.select(
            Enrollment.customer_id,
            Enrollment.external_userid,
            Enrollment.holdout,
            Cohort.path,
            Cohort.id,
        ).join(Cohort, Cohort.id == Enrollment.cohort_id),
        ["customer_id", "external_userid", "holdout", "path", "cohort"],
    )
    assert not members.empty
    assert members["customer_id"].is_unique  # at most one path per customer
    cohorts = sorted(set(members["cohort"]))
    # Four touch runs per cohort, named for ops, inside 10:00-11:30 on working days.
    assert len(scheduled) == 4 * len(cohorts)
    assert any(name.endswith("· 2026-11-24 cohort · touch 2") for *_, name in scheduled)
    for _key, parameters, due, _name in scheduled:
        local = due.astimezone(ZONE)
        assert dt.time(10) <= local.time() <= dt.time(11, 30)
        assert local.weekday() < 5
    # A second enrolment the same day enters nobody new and schedules nothing new.
    scheduled.clear()
    assert path_enroll(as_of=at(DAY, 9, 30), return_state=True).is_completed()
    assert scheduled == []

    for cohort in cohorts:
        assert path_touch(
            cohort=cohort, touch=1, as_of=at(DAY, 10), return_state=True
        ).is_completed()
    sends = _frame(
        engine,
        sa.select(Send.target_id, Send.step, Send.sender, Send.status),
        ["target_id", "step", "sender", "status"],
    )
    treated = members.loc[~members["holdout"], "external_userid"]
    held = members.loc[members["holdout"], "external_userid"]
    assert set(sends["target_id"]) <= set(treated)
    assert not set(sends["target_id"]) & set(held)
    assert sends.groupby(["target_id", "step"]).size().max() == 1
    assert (sends["status"] == "created").sum() == len(sends)  # treated, reachable: all queued
    # One template per (sender, variant) of each cohort, never one call per customer.
    templates = synced.sandbox.stats()["calls"].get(MASS_API, 0)
    groups = sends[sends["status"] != "skipped"].merge(
        members.rename(columns={"external_userid": "target_id"}), on="target_id"
    )
    assert templates == groups.groupby(["cohort", "sender"]).ngroups

    # A touch run that already ran does nothing; the catch-up runs what was due, once.
    again = path_touch(cohort=cohorts[0], touch=1, as_of=at(DAY, 10, 30), return_state=True)
    assert "already ran" in again.message
    assert path_due(until=at(DAY, 23, 59), return_state=True).result()["ran"] == []
    thursday = DAY + dt.timedelta(days=2)
    ran = path_due(until=at(thursday, 10, 15), return_state=True).result()["ran"]
    assert len(ran) == len(cohorts)
    assert all(name.endswith("touch 2") for name in ran)
    assert path_due(until=at(thursday, 10, 20), return_state=True).result()["ran"] == []
    with Session(engine) as session:
        done = session.scalar(
            sa.select(sa.func.count()).select_from(TouchRun).where(TouchRun.status == "done")
        )
    assert done == 2 * len(cohorts)


def _touch_runs_in_prefect(deployment_id) -> list:
    """The flow runs of the path-touch deployment, as the Prefect API lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def test_a_cohorts_four_touch_runs_are_scheduled_runs_in_the_prefect_api(synced) -> None:
    from siyu.deployments.specs import DEPLOYMENTS

    spec = next(s for s in DEPLOYMENTS if s.full_name == conversion_path.TOUCH_DEPLOYMENT)
    deployment_id = spec.to_runner_deployment().apply()
    assert path_enroll(as_of=at(DAY, 9), return_state=True).is_completed()

    with Session(synced.engine()) as session:
        cohorts = {c.id: c for c in session.scalars(sa.select(Cohort))}
        stored = {
            (r.cohort_id, r.touch): (r.flow_run_id, r.due_at)
            for r in session.scalars(sa.select(TouchRun))
        }
    # The runs this enrolment stored (the session's server may hold other tests' runs, and the
    # same day's cohort of another test's database has the same idempotency keys).
    ours = {flow_run_id for flow_run_id, _ in stored.values()}
    listed = _touch_runs_in_prefect(deployment_id)
    found = [r for r in listed if str(r.id) in ours]
    assert cohorts and len(found) == 4 * len(cohorts) == len(stored)
    by_cohort: dict[int, list] = {}
    for run in found:
        assert set(run.parameters) == {"cohort", "touch"}
        cohort, touch = run.parameters["cohort"], run.parameters["touch"]
        assert stored[(cohort, touch)] == (str(run.id), run.expected_start_time)
        assert run.state.is_scheduled()  # Scheduled (or Late: its due time is the test's past)
        assert run.name == f"{cohorts[cohort].title} · 2026-11-24 cohort · touch {touch}"
        local = run.expected_start_time.astimezone(ZONE)
        assert dt.time(10) <= local.time() <= dt.time(11, 30)
        assert local.weekday() < 5
        by_cohort.setdefault(cohort, []).append((touch, run.expected_start_time))
    for runs in by_cohort.values():
        runs.sort()
        assert [t for t, _ in runs] == [1, 2, 3, 4]
        assert [d for _, d in runs] == sorted({d for _, d in runs})  # four distinct, in order

    # Enrolment again the same day schedules nothing more.
    assert path_enroll(as_of=at(DAY, 9, 30), return_state=True).is_completed()
    again = _touch_runs_in_prefect(deployment_id)
    assert {r.id for r in again} == {r.id for r in listed}
    # The idempotency key is what holds it: asking Prefect again for a scheduled touch (a retry
    # of enrolment after a crash between Prefect's answer and our commit) returns the same run.
    (cohort, touch), (flow_run_id, due) = next(iter(stored.items()))
    key = conversion_path.touch_run_key(cohort, touch, due)
    name = f"{cohorts[cohort].title} · 2026-11-24 cohort · touch {touch}"
    params = {"cohort": cohort, "touch": touch}
    assert conversion_path.schedule_with_prefect(key, params, due, name) == flow_run_id
    assert len(_touch_runs_in_prefect(deployment_id)) == len(listed)


@pytest.fixture
def playbooks_restored():
    """Whatever ConversionPaths block "siyu" the session had is back after the test."""
    from prefect.client.orchestration import get_client

    from siyu.blocks.conversion_paths import ConversionPaths

    try:
        before = ConversionPaths.load("siyu")
    except ValueError:
        before = None
    yield
    if before is not None:
        before.save("siyu", overwrite=True)
    else:
        saved = ConversionPaths.load("siyu")
        with get_client(sync_client=True) as client:
            client.delete_block_document(saved._block_document_id)


def test_a_paused_path_sends_nothing_and_records_every_planned_send_skipped(
    synced, scheduled, playbooks_restored
) -> None:
    from prefect.artifacts import Artifact

    from siyu.blocks.conversion_paths import ConversionPaths
    from siyu.schemas.models import OutboxEntry
    from siyu.tasks.delivery import OUTBOX_PLAN
    from siyu.tasks.journeys import PAUSED_BY_OPS

    system = synced
    engine = system.engine()
    books = ConversionPaths()
    for path in books.paths:
        path.active = path.name == "payroll-wealth"
        path.paused = path.name == "payroll-wealth"
    books.save("siyu", overwrite=True)
    # Pausing stops the touches, not the enrolment.
    assert path_enroll(as_of=at(DAY, 9), return_state=True).is_completed()
    members = _frame(
        engine,
        sa.select(Enrollment.external_userid, Enrollment.holdout, Cohort.id).join(
            Cohort, Cohort.id == Enrollment.cohort_id
        ),
        ["external_userid", "holdout", "cohort"],
    )
    (cohort,) = set(members["cohort"])
    treated = set(members.loc[~members["holdout"], "external_userid"])
    assert treated and len(scheduled) == 4

    system.sandbox.set_clock(at(DAY, 10).timestamp())
    state = path_touch(cohort=cohort, touch=1, as_of=at(DAY, 10), return_state=True)
    assert state.is_completed() and "paused by ops - nothing sent" in state.message
    sends = _frame(
        engine,
        sa.select(Send.target_id, Send.step, Send.status, Send.reason),
        ["target_id", "step", "status", "reason"],
    )
    # Every treated member has its touch-1 row, final: skipped, with the reason ops read.
    assert set(sends["target_id"]) == treated and len(sends) == len(treated)
    assert (sends["status"] == "skipped").all() and (sends["reason"] == PAUSED_BY_OPS).all()
    assert system.sandbox.stats()["calls"].get(MASS_API, 0) == 0
    assert system.sandbox.mass_messages() == []
    with Session(engine) as session:
        queued = sa.select(sa.func.count()).select_from(OutboxEntry)
        assert session.scalar(queued.where(OutboxEntry.plan == OUTBOX_PLAN)) == 0
        done = session.scalar(
            sa.select(TouchRun.status).where(TouchRun.cohort_id == cohort, TouchRun.touch == 1)
        )
    assert done == "done"
    touch_artifact = Artifact.get(f"path-touch-{cohort}-1")
    assert "Paused by ops" in touch_artifact.data
    assert f"skipped:{PAUSED_BY_OPS}: {len(treated):,}" in touch_artifact.data

    # Ops resume the path: the next touch goes out; touch 1 stays skipped (final), even forced.
    books.path("payroll-wealth").paused = False
    books.save("siyu", overwrite=True)
    forced = path_touch(
        cohort=cohort, touch=1, as_of=at(DAY, 10, 30), force=True, return_state=True
    )
    assert forced.is_completed()
    assert system.sandbox.stats()["calls"].get(MASS_API, 0) == 0
    thursday = DAY + dt.timedelta(days=2)
    system.sandbox.set_clock(at(thursday, 10).timestamp())
    resumed = path_touch(cohort=cohort, touch=2, as_of=at(thursday, 10), return_state=True)
    assert resumed.is_completed()
    second = _frame(
        engine,
        sa.select(Send.target_id, Send.status).where(Send.step == "touch-2"),
        ["target_id", "status"],
    )
    assert set(second["target_id"]) == treated and (second["status"] == "created").all()
    assert system.sandbox.stats()["calls"].get(MASS_API, 0) > 0


# A month on the sandbox's clock costs minutes: it runs on SQLite; PostgreSQL's ledger, outbox and
# claims are proven by the shorter flow tests that run on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_month_of_touches_against_the_sandbox(synced, scheduled) -> None:
    """A month day by day: daily exports, conversions after touch 1 and touch 3, one who never
    converts, one who deletes the manager, a holdout, a holiday on touch 3's day."""
    from siyu.blocks.conversion_paths import ConversionPaths
    from siyu.blocks.send_rules import SendRules
    from siyu.flows.sends_track import sends_track
    from siyu.sandbox.export_files import write_export
    from siyu.schemas.conversion import Conversion

    system = synced
    engine = system.engine()
    holiday = dt.date(2026, 12, 3)  # touch 3's day 9 (a Thursday) is a day off
    SendRules(holidays=[holiday], known_until=dt.date(2027, 12, 31)).save("siyu", overwrite=True)
    books = ConversionPaths()
    for path in books.paths:
        path.active = path.name == "payroll-wealth"
    books.save("siyu", overwrite=True)
    system.sandbox.config(confirm_delay_seconds=60, late_share=0, never_share=0)

    base = system.export_frame()
    held_back: dict[dt.date, set[str]] = {}  # export day -> customers holding wealth from then
    members = pd.DataFrame()
    roles: dict[str, str] = {}
    day = DAY
    while day <= DAY + dt.timedelta(days=30):
        system.sandbox.set_clock(at(day, 7).timestamp())
        if day != DAY:
            export = base.copy()
            bought = set().union(*(c for d, c in held_back.items() if d <= day))
            export.loc[export["customer_id"].isin(bought), "holds_wealth"] = "是"
            export["export_date"] = day.strftime("%Y%m%d")
            name = f"core_export_{day.strftime('%Y%m%d')}.csv"
            write_export(export, system.landing / name)
            assert tag_sync(export_file=name, business_date=day, return_state=True).is_completed()
        assert path_enroll(as_of=at(day, 7, 30), return_state=True).is_completed()
        if day == DAY:
            members = _frame(
                engine,
                sa.select(
                    Enrollment.customer_id,
                    Enrollment.userid,
                    Enrollment.external_userid,
                    Enrollment.holdout,
                ),
                ["customer_id", "userid", "external_userid", "holdout"],
            )
            contacts_per_customer = system.follows().groupby("external_userid").size()
            single = members[members["external_userid"].map(contacts_per_customer).fillna(1) == 1]
            treated = single[~single["holdout"]]["customer_id"].tolist()
            holdout = single[single["holdout"]]["customer_id"].tolist()
            assert len(treated) >= 8 and holdout
            roles = {c: "after touch 1" for c in treated[:3]}
            roles |= {c: "after touch 3" for c in treated[3:6]}
            roles[treated[6]] = "deletes the manager"
            roles[treated[7]] = "never"
            roles[holdout[0]] = "holdout converts"
            held_back[DAY + dt.timedelta(days=1)] = set(treated[:3])
            held_back[dt.date(2026, 12, 5)] = set(treated[3:6]) | {holdout[0]}
        if day == DAY + dt.timedelta(days=3):  # after touch 2, before touch 3
            row = members.set_index("customer_id").loc[treated[6]]
            system.sandbox.delete_follow(row["userid"], row["external_userid"])
            assert contacts_sync(return_state=True).is_completed()
        system.sandbox.set_clock(at(day, 10).timestamp())
        assert path_due(until=at(day, 10), return_state=True).is_completed()
        system.sandbox.set_clock(at(day, 12).timestamp())
        assert sends_track(as_of=at(day, 12), return_state=True).is_completed()
        day += dt.timedelta(days=1)

    sends = _frame(
        engine,
        sa.select(
            Send.target_id, Send.step, Send.sender, Send.status, Send.created_at, Send.send_day
        ),
        ["external_userid", "step", "sender", "status", "created_at", "send_day"],
    ).merge(members[["customer_id", "external_userid"]], on="external_userid")
    delivered = sends[sends["status"] == "delivered"]
    got = delivered.groupby("customer_id")["step"].apply(lambda s: sorted(s)).to_dict()
    expected = {
        "after touch 1": ["touch-1"],
        "after touch 3": ["touch-1", "touch-2", "touch-3"],
        "deletes the manager": ["touch-1", "touch-2"],
        "never": ["touch-1", "touch-2", "touch-3", "touch-4"],
        "holdout converts": [],
    }
    for customer, role in roles.items():
        assert got.get(customer, []) == expected[role], (mask(customer), role)
    # Nothing to the holdout, nothing twice, every send on a working day inside the window.
    assert not set(sends["customer_id"]) & set(members.loc[members["holdout"], "customer_id"])
    assert sends.groupby(["customer_id", "step"]).size().max() == 1
    local = pd.to_datetime(sends["created_at"], utc=True).dt.tz_convert(ZONE)
    assert local.dt.weekday.max() < 5
    assert holiday not in set(local.dt.date)
    assert ((local.dt.time >= dt.time(10)) & (local.dt.time <= dt.time(11, 30))).all()
    # The caps: at most 4 a month per customer, 1 a day from the same manager.
    counted = sends[sends["status"] != "skipped"].assign(
        month=lambda f: f["send_day"].map(lambda d: d.strftime("%Y-%m"))
    )
    assert counted.groupby(["customer_id", "month"]).size().max() <= 4
    assert counted.groupby(["customer_id", "sender", "send_day"]).size().max() == 1
    assert not [
        r
        for m in system.sandbox.mass_messages()
        for r in m.get("results", [])
        if r.get("status") == 3
    ]
    # Conversions are attributed to the last delivered touch before them.
    conversions = _frame(
        engine,
        sa.select(Enrollment.customer_id, Conversion.attributed_touch).join(
            Enrollment, Enrollment.id == Conversion.enrollment_id
        ),
        ["customer_id", "touch"],
    ).set_index("customer_id")["touch"]
    for customer, role in roles.items():
        if role == "after touch 1":
            assert conversions[customer] == 1
        if role == "after touch 3":
            assert conversions[customer] == 3
        if role == "holdout converts":
            assert pd.isna(conversions[customer])
    # Uplift is reported with its interval.
    with Session(engine) as session:
        from siyu.tasks.journeys import cohort_uplift

        table = cohort_uplift(session)
    row = table[table["path"] == "payroll-wealth"].iloc[0]
    assert row.holdout_converted >= 1 and row.uplift_low <= row.uplift <= row.uplift_high

    # The cohort's funnel: per touch who was in, who dropped and why, what the ledger did, and
    # the conversions each touch earned; the cohort artifact shows the same table.
    from prefect.artifacts import Artifact

    from siyu.tasks.journeys import funnel_markdown, read_funnel

    with Session(engine) as session:
        cohort = session.scalar(
            sa.select(Cohort.id).where(Cohort.path == "payroll-wealth", Cohort.cohort_day == DAY)
        )
        funnel = read_funnel(session, cohort, "path:payroll-wealth")
    by_touch = funnel.set_index("touch")
    assert by_touch["conversions"].to_dict() == {
        "1": 3,
        "2": 0,
        "3": 3,
        "4": 0,
        "no touch delivered": 1,  # the holdout's
    }
    n = int((~members["holdout"]).sum())
    columns = ["eligible", "dropped converted", "dropped unreachable"]
    assert by_touch.loc["1", columns].tolist() == [n, 0, 0]
    assert by_touch.loc["2", columns].tolist() == [n - 3, 3, 0]
    assert by_touch.loc["3", columns].tolist() == [n - 4, 3, 1]
    assert by_touch.loc["4", columns].tolist() == [n - 7, 7, 1]  # the holdout's conversion too
    reached = delivered.groupby("step").size()
    for touch in ("1", "2", "3", "4"):
        assert by_touch.loc[touch, "delivered"] == reached.get(f"touch-{touch}", 0)
        assert by_touch.loc[touch, "created"] >= by_touch.loc[touch, "delivered"] > 0
    assert funnel_markdown(funnel) in Artifact.get(f"path-cohort-{cohort}").data


def mask(customer: str) -> str:
    return customer[:1] + "****" + customer[-4:]


def test_kill_9_of_a_touch_run_then_the_catch_up_sends_nobody_twice(
    synced, scheduled, prefect_server
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    system = synced
    assert path_enroll(as_of=at(DAY, 9), return_state=True).is_completed()
    with Session(system.engine()) as session:
        cohort = session.scalar(sa.select(Cohort.id).order_by(Cohort.members.desc()).limit(1))
        pairs = session.execute(
            sa.select(Enrollment.cohort_id, Enrollment.userid)
            .where(Enrollment.holdout.is_(False))
            .distinct()
        ).all()
    assert len({u for c, u in pairs if c == cohort}) >= 2
    # WeCom's clock agrees with the run's as-of time: the rerun looks for the lost message there.
    system.sandbox.set_clock(at(DAY, 10).timestamp())
    # The first template's reply is slow: the kill lands with it in flight, outcome unknown.
    system.sandbox.fault(api=MASS_API, latency_ms=3000)
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    cli = [sys.executable, "-m", "siyu.deployments.cli", "path", "touch", str(cohort), "1"]
    cli += ["--at", at(DAY, 10).isoformat()]
    proc = subprocess.Popen(
        cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while system.sandbox.stats()["calls"].get(MASS_API, 0) < 1:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the touch never reached WeCom"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    system.sandbox.clear_faults()

    ran = path_due(until=at(DAY, 10, 30), return_state=True).result()["ran"]
    assert any(name.endswith("touch 1") for name in ran)
    messages = [
        m for m in system.sandbox.mass_messages() if m.get("chat_type", "single") == "single"
    ]
    targets = [r["external_userid"] for m in messages for r in m["results"]]
    assert targets and len(targets) == len(set(targets))  # nobody got touch 1 twice
    # One template per cohort and manager: the lost reply was found, not sent again.
    assert len(messages) == len(pairs)
