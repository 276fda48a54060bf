"""A contact bound by contacts-sync enters its path the same day: a run of path-enroll, once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.flows.contacts_sync import ENROLL_DEPLOYMENT, contacts_sync
from siyu.flows.conversion_path import TOUCH_DEPLOYMENT, path_enroll, path_touch
from siyu.flows.tag_sync import tag_sync
from siyu.schemas.conversion import SCHEDULED, Cohort, Enrollment, TouchRun
from siyu.schemas.ledger import Send
from siyu.schemas.models import Contact
from siyu.tasks.journeys import holdout_mask
from tests.flows.conftest import DAY

ZONE = ZoneInfo("Asia/Shanghai")
NEW_CONTACT = "wmNEWCONTACT000000000000000001"


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), ZONE)


@pytest.fixture
def deployed(prefect_server):
    """path-enroll and path-touch as the deployment table makes them (the daily cron left out,
    so the test server's scheduler adds no runs of its own); removed afterwards."""
    from prefect.client.orchestration import get_client

    from siyu.deployments.specs import DEPLOYMENTS

    ids = {}
    for full_name in (ENROLL_DEPLOYMENT, TOUCH_DEPLOYMENT):
        spec = next(s for s in DEPLOYMENTS if s.full_name == full_name)
        ids[full_name] = spec.model_copy(update={"schedules": ()}).to_runner_deployment().apply()
    yield ids
    with get_client(sync_client=True) as client:
        for deployment_id in ids.values():
            client.delete_deployment(deployment_id)


def runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def execute(flow_run_id, prefect_server: str) -> None:
    """Run a flow run as a worker or `serve()` does: Prefect's engine in its own process."""
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    done = subprocess.run(
        [sys.executable, "-m", "prefect.engine", str(flow_run_id)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def a_customer_without_a_contact(system) -> pd.Series:
    """A payroll customer without wealth products (so payroll-wealth is their path), whom no
    manager has as a contact yet, and who is not in the path's holdout."""
    export = system.export_frame()
    follows = system.follows()
    known = {m for mobiles in follows["remark_mobiles"].dropna() for m in list(mobiles)}
    free = export[
        ~export["mobile"].isin(known)
        & (export["payroll"] == "是")
        & (export["holds_wealth"] == "否")
        & (pd.to_numeric(export["aum_peak"]) < 100_000)
    ].reset_index(drop=True)
    treated = ~holdout_mask(free["customer_id"], "payroll-wealth", "2026-11", 0.10)
    return free[treated].iloc[0]


def add_contact(system, tmp_path: Path, customer: pd.Series, manager: str, added: dt.datetime):
    """The customer adds `manager` on WeCom; the manager notes their mobile in the remark."""
    seed = tmp_path / "new-contact"
    seed.mkdir()
    row = {
        "external_userid": NEW_CONTACT,
        "name": "新客户",
        "type": 1,
        "gender": 0,
        "unionid": "oNEWCONTACT0000000000000001",
        "userid": manager,
        "remark": "",
        "description": "",
        "createtime": int(added.timestamp()),
        "remark_mobiles": [customer["mobile"]],
        "add_way": 1,
        "state": "",
        "tag_ids": [],
    }
    pq.write_table(pa.Table.from_pylist([row]), seed / "follows.parquet")
    system.sandbox.seed(seed)


def count(engine, model) -> int:
    with Session(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_a_contact_bound_by_contacts_sync_enters_its_cohort_the_same_day_and_only_once(
    system, deployed, prefect_server, tmp_path
) -> None:
    engine = system.engine()
    system.sandbox.set_clock(at(7).timestamp())
    assert contacts_sync(as_of=at(7), return_state=True).is_completed()
    assert tag_sync(business_date=DAY, return_state=True).is_completed()
    assert path_enroll(as_of=at(7, 30), return_state=True).is_completed()
    with Session(engine) as session:
        cohort = session.scalar(
            sa.select(Cohort).where(Cohort.path == "payroll-wealth", Cohort.cohort_day == DAY)
        )
        members_before = cohort.members
    system.sandbox.set_clock(at(10).timestamp())
    assert path_touch(cohort=cohort.id, touch=1, as_of=at(10), return_state=True).is_completed()
    enrolments = runs_of(deployed[ENROLL_DEPLOYMENT])
    assert enrolments == []  # the daily enrolment above ran in-process, not as a deployment run

    # 10:40: a customer adds a manager; the hourly contacts sync sees it.
    customer = a_customer_without_a_contact(system)
    added = at(10, 40)
    system.sandbox.set_clock(added.timestamp())
    add_contact(system, tmp_path, customer, "mgr002", added)
    state = contacts_sync(as_of=added, return_state=True)
    assert state.is_completed()
    assert state.result()["newly_bound"] == 1
    assert "new contacts · 2026-11-24 10:40" in state.message
    with Session(engine) as session:
        bound = session.scalar(
            sa.select(Contact.customer_id).where(Contact.external_userid == NEW_CONTACT)
        )
    assert bound == customer["customer_id"]

    # It asked path-enroll, as a run of its deployment (one at a time), for new contacts only.
    (run,) = runs_of(deployed[ENROLL_DEPLOYMENT])
    assert run.name == "new contacts · 2026-11-24 10:40"
    assert run.parameters["new_contacts"] is True
    assert dt.datetime.fromisoformat(run.parameters["as_of"]) == added
    assert run.state.is_scheduled()
    assert customer["customer_id"] not in run.parameters.values()  # no customer id in Prefect
    execute(run.id, prefect_server)
    (run,) = runs_of(deployed[ENROLL_DEPLOYMENT])
    assert run.state.is_completed(), run.state.message

    # Enrolled in the day's payroll cohort, beside this morning's members; touch 1 due at once.
    with Session(engine) as session:
        enrolled = session.execute(
            sa.select(Enrollment.cohort_id, Enrollment.entered_on, Enrollment.holdout).where(
                Enrollment.customer_id == customer["customer_id"]
            )
        ).all()
        assert enrolled == [(cohort.id, DAY, False)]
        assert session.get(Cohort, cohort.id).members == members_before + 1
        touch_one = session.scalar(
            sa.select(TouchRun).where(TouchRun.cohort_id == cohort.id, TouchRun.touch == 1)
        )
        assert touch_one.status == SCHEDULED and touch_one.due_at == added
        touch_run_id = touch_one.flow_run_id
    scheduled = {str(r.id): r for r in runs_of(deployed[TOUCH_DEPLOYMENT])}
    assert scheduled[touch_run_id].name == "代发稳健理财 · 2026-11-24 cohort · touch 1"
    assert scheduled[touch_run_id].state.is_scheduled()
    assert scheduled[touch_run_id].expected_start_time == added

    # That touch reaches the newcomer only: this morning's members had touch 1 already. (Run
    # here at its due time: a scheduled touch run takes its time from the clock it starts at.)
    sends_before = count(engine, Send)
    assert path_touch(cohort=cohort.id, touch=1, as_of=added, return_state=True).is_completed()
    with Session(engine) as session:
        new_rows = session.execute(
            sa.select(Send.target_id, Send.step, Send.status).where(Send.id > sends_before)
        ).all()
    assert new_rows == [(NEW_CONTACT, "touch-1", "created")]

    # Rebinding what is bound enrols nobody: another contacts sync, a tag sync, and the sync
    # after it bind nothing new and ask for no enrolment; nobody is ever enrolled twice.
    enrolled_count = count(engine, Enrollment)
    system.sandbox.set_clock(at(11).timestamp())
    again = contacts_sync(as_of=at(11), return_state=True)
    assert again.result()["newly_bound"] == 0 and again.result()["enrolment"] is None
    assert tag_sync(business_date=DAY, return_state=True).is_completed()
    assert contacts_sync(as_of=at(12), return_state=True).result()["newly_bound"] == 0
    assert len(runs_of(deployed[ENROLL_DEPLOYMENT])) == 1
    assert path_enroll(as_of=at(12), new_contacts=True, return_state=True).is_completed()
    next_day = path_enroll(as_of=at(7, 30, DAY + dt.timedelta(days=1)), return_state=True)
    assert next_day.is_completed()
    assert count(engine, Enrollment) == enrolled_count
    with Session(engine) as session:
        per_customer = session.execute(
            sa.select(Enrollment.customer_id, sa.func.count()).group_by(Enrollment.customer_id)
        ).all()
    assert max(n for _, n in per_customer) == 1
