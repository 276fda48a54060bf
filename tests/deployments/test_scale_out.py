"""Scale-out: two workers on PostgreSQL share the work, hold WeCom's pace, and survive a lost machine.

Production as README's scale section sets it up: a Prefect server on PostgreSQL, siyu's
database on PostgreSQL, `siyu deploy`, two `prefect worker start --pool siyu` with separate
absolute homes and only PREFECT_API_URL. The deployments are run as ops run them (runs of the
deployed deployments); the sandbox is the witness of what reached WeCom and when.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.deployments.recovery import RECOVERY
from tests.deployments import scale_harness as harness
from tests.flows.conftest import System
from tests.flows.test_tag_sync import bound_pairs, expected_tags, tags_by_pair

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHINA = ZoneInfo("Asia/Shanghai")
MARK_TAG = "externalcontact/mark_tag"
MASS = "externalcontact/add_msg_template"
# WeCom's limits as the sandbox enforces them (sliding 60 s) and as the WeComApp block paces
# them, shared by both workers through Prefect's rate limits: below the ~550 calls a minute a
# push makes unpaced here, so the pace is the limit's.
LIMITS = {MARK_TAG: 300}
SILENT_AFTER = timedelta(seconds=45)  # heartbeats every 30 s (the deployments' job variables)
RUN_TIMEOUT = 150.0
# Runs a worker takes at once (`--limit`): fewer than the runs started together below, so
# both workers must take some.
WORKER_LIMIT = 3


def business_day() -> dt.date:
    """A Monday at least a week ahead that is a working day: the touches it schedules stay in
    the future (no worker runs them by itself), while the runs here send as of its 10:00."""
    from siyu.blocks.send_rules import SendRules
    from siyu.tasks.working_days import is_working_day

    day = dt.datetime.now(CHINA).date() + dt.timedelta(days=7)
    day += dt.timedelta(days=(7 - day.weekday()) % 7)
    rules = SendRules()
    while not is_working_day(day, rules):
        day += dt.timedelta(days=7)
    return day


DAY = business_day()


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hour, minute), CHINA)


class Scale:
    """The running cluster and the handful of things the tests do to it."""

    def __init__(self, cluster: harness.Cluster) -> None:
        self.cluster = cluster
        self.sandbox = cluster.sandbox
        export = next(cluster.landing.glob("core_export_*"))
        self.system = System(
            sandbox=cluster.sandbox,
            database_url=cluster.database_url,
            landing=cluster.landing,
            export_path=export,
            seed_dir=cluster.sample_dir / "sandbox_seed",
            home=cluster.shared,
        )

    def run(self, name: str, **parameters: Any) -> Any:
        from prefect.deployments import run_deployment

        return run_deployment(name, parameters=parameters, timeout=0, as_subflow=False)

    def wait(self, runs: list[Any], timeout: float = RUN_TIMEOUT) -> list[Any]:
        """Each run in a final state; fails naming the runs and the workers' last lines."""
        from prefect import get_client

        ids = [r.id for r in runs]
        with get_client(sync_client=True) as client:

            def final() -> list[Any] | None:
                now = [client.read_flow_run(i) for i in ids]
                return now if all(r.state.type.value in harness.FINAL for r in now) else None

            try:
                done = harness.wait_until(final, timeout, "flow runs to finish", every=1)
            except harness.HarnessError:
                states = [(r.name, client.read_flow_run(r.id).state.name) for r in runs]
                pytest.fail(f"runs not finished: {states}\n{self.logs()}")
        bad = [(r.name, r.state.name, r.state.message) for r in done if not r.state.is_completed()]
        assert not bad, f"{bad}\n{self.logs()}"
        return done

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.tail(30)}" for w in self.cluster.workers.values())

    def land_export(self, day: dt.date, *, every: int, factor: float) -> str:
        """Land `day`'s export (assets of every `every`-th customer times `factor`); the tags'
        oracle follows it. Returns the business date the tag sync is run for."""
        self.system.export_path = harness.next_export(
            self.cluster.landing, day.strftime("%Y%m%d"), every=every, factor=factor
        )
        return day.isoformat()

    def wrong_tags(self) -> list[tuple[str, str]]:
        """Bound pairs whose siyu tags in WeCom differ from the oracle of the newest export."""
        export = self.system.export_frame().set_index("customer_id")
        have = tags_by_pair(self.system)
        return [
            pair
            for pair, customer in bound_pairs(self.system).items()
            if have.get(pair, (set(), set()))[0] != expected_tags(export.loc[customer])
        ]

    def last_seq(self) -> int:
        entries = self.sandbox.requests()
        return entries[-1]["seq"] if entries else 0


def _configure_server(cluster: harness.Cluster) -> None:
    """What ops set on the deployed server for this run: WeCom's limits, a quicker dead-run
    detection (the test cannot wait 90 s twice), crash recovery, a product calendar."""
    from prefect.automations import Automation

    from siyu.blocks.environment import BLOCK_NAME
    from siyu.blocks.group_cadence import ProductCalendar, Promotion
    from siyu.blocks.wecom import WeComApp, ensure_rate_limits
    from siyu.deployments import alerts
    from siyu.deployments.recovery import ensure_recovery

    app = WeComApp.load(BLOCK_NAME)
    assert app.shared_pacing, "siyu deploy must save the WeCom App with shared pacing"
    app.api_rate_limits = dict(LIMITS)
    app.save(BLOCK_NAME, overwrite=True)
    ensure_rate_limits(app)
    Automation.read(name=alerts.CRASH_DETECTION).delete()
    alerts.crash_detection_automation(SILENT_AFTER).create()
    ensure_recovery()
    ProductCalendar(
        rotation_days=7,
        promotions=[
            Promotion(id="card", title="信用卡", content="新户礼", start=DAY, end=DAY, priority=1)
        ],
    ).save(BLOCK_NAME, overwrite=True)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    """The cluster after its first day's morning: contacts synced, tags synced, cohorts enrolled."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("scale")
    with (
        harness.cluster(
            root,
            customers=400,
            business_date=DAY.strftime("%Y%m%d"),
            worker_limit=WORKER_LIMIT,
            sandbox_config={"rate_limits": dict(LIMITS)},
        ) as cluster,
        temporary_settings(updates={PREFECT_API_URL: cluster.api_url}),
    ):
        _configure_server(cluster)
        scale = Scale(cluster)
        scale.sandbox.set_clock(at(8).timestamp())
        scale.wait([scale.run("contacts-sync/hourly")])
        scale.wait([scale.run("tag-sync/daily", business_date=DAY.isoformat())])
        scale.wait([scale.run("path-enroll/daily", as_of=at(8, 30).isoformat())])
        yield scale


def _cohorts(database_url: str) -> list[int]:
    from siyu.schemas.conversion import Cohort
    from siyu.schemas.database import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(sa.select(Cohort.id).order_by(Cohort.id)))
    finally:
        engine.dispose()


def _bound_contacts(database_url: str) -> int:
    from siyu.schemas.database import make_engine
    from siyu.schemas.models import Contact

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            query = sa.select(sa.func.count()).where(Contact.customer_id.is_not(None))
            return session.scalar(query.select_from(Contact))
    finally:
        engine.dispose()


def _within_limits(sandbox: Any) -> dict[str, int]:
    """The busiest 60 s of every API the sandbox limits, and any 45009 it had to answer."""
    busiest = {
        api: harness.busiest_minute([e["at"] for e in sandbox.requests(api)]) for api in LIMITS
    }
    print(f"busiest 60 s per limited API: {busiest} (limits {LIMITS})")
    for api, limit in LIMITS.items():
        assert busiest[api] <= limit, f"{api}: {busiest[api]} calls in one minute > {limit}"
    refused = {api: codes for api, codes in sandbox.stats()["errors"].items() if "45009" in codes}
    assert not refused, f"WeCom answered 'frequency out of limit': {refused}"
    return busiest


def test_two_workers_share_the_day_and_send_everything_once(scale: Scale) -> None:
    sandbox = scale.sandbox
    # The first day's runs bound the contacts the seed says match, and tagged them all.
    assert _bound_contacts(scale.cluster.database_url) == len(bound_pairs(scale.system))
    assert scale.wrong_tags() == []
    cohorts = _cohorts(scale.cluster.database_url)
    assert cohorts, "path-enroll entered nobody: the touches below would test nothing"

    # The next export moves a third of the customers up a tier; its tag sync, every cohort's
    # first touch and Monday's post run at once.
    business_date = scale.land_export(DAY + dt.timedelta(days=1), every=3, factor=6.0)
    moved = set(scale.wrong_tags())
    assert moved, "the new export should move some contacts' tags"
    since = scale.last_seq()
    runs = [scale.run("tag-sync/daily", business_date=business_date)]
    runs += [
        scale.run("path-touch/cohort-touch", cohort=c, touch=1, as_of=at(10).isoformat())
        for c in cohorts
    ]
    runs.append(scale.run("group-cadence/weekly", slot="mon-post", as_of=at(10).isoformat()))
    assert len(runs) > WORKER_LIMIT
    done = scale.wait(runs)

    # Work split: a worker takes at most WORKER_LIMIT at once, so both took some.
    workers = {run.name: scale.cluster.worker_of(run.id) for run in done}
    assert set(workers.values()) == {"worker-a", "worker-b"}, workers

    # Contacts match on both: every bound pair carries exactly the new export's tags.
    assert scale.wrong_tags() == []
    # Each moved pair's change reached WeCom once, no other pair was touched; each customer
    # got the touch once.
    marked = Counter(harness.pair_of(e) for e in harness.mark_tag_calls(sandbox, since))
    assert set(marked) == moved
    assert max(marked.values()) == 1, marked.most_common(3)
    messages = [e for e in sandbox.requests(MASS, since=since) if not e["errcode"]]
    assert messages, "the touches created no mass message"
    sent = Counter(
        (e["params"]["sender"], customer)
        for e in messages
        for customer in e["params"]["external_userid"]
    )
    assert max(sent.values()) == 1, sent.most_common(3)
    # Monday's post reminded each group owner once (one app message per owner and text).
    posts = Counter(
        (user, json.dumps(m["content"], ensure_ascii=False, sort_keys=True))
        for m in sandbox.app_messages()
        for user in m["touser"]
    )
    assert posts and max(posts.values()) == 1, posts.most_common(3)
    # WeCom's pace held across both workers.
    _within_limits(sandbox)


def test_a_killed_worker_costs_no_manual_step_and_nothing_twice(scale: Scale) -> None:
    from prefect import get_client

    sandbox = scale.sandbox
    # The day after, half the customers' assets drop: a long push of tier changes.
    business_date = scale.land_export(DAY + dt.timedelta(days=2), every=2, factor=0.1)
    wrong_before = set(scale.wrong_tags())
    assert wrong_before, "the new export should move some contacts' tags"
    # Slow WeCom down so the push is still going when its machine is lost.
    sandbox.fault(api=MARK_TAG, latency_ms=1000)
    since = scale.last_seq()
    started = scale.run("tag-sync/daily", business_date=business_date)
    harness.wait_until(
        lambda: len(harness.mark_tag_calls(sandbox, since)) >= 5, 120, "the push to start"
    )
    with get_client(sync_client=True) as client:
        pid = int(str(client.read_flow_run(started.id).infrastructure_pid).rsplit(":", 1)[-1])
        lost = scale.cluster.worker_running(pid)
        assert lost, f"no worker runs the flow run's process {pid}"
        scale.cluster.workers[lost].kill_machine()
        sandbox.clear_faults()

        crashed = harness.wait_until(
            lambda: (run := client.read_flow_run(started.id)).state.is_crashed() and run,
            SILENT_AFTER.total_seconds() + 90,
            "the silent run to be marked Crashed",
        )
        assert "heartbeats" in crashed.state.message

        deployment = client.read_deployment_by_name("tag-sync/daily")

        def rerun() -> Any:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
            made = [r for r in runs if r.created_by and r.created_by.type == "AUTOMATION"]
            return made[0] if made else None

        again = harness.wait_until(rerun, 60, "the automatic rerun to start")
    (finished,) = scale.wait([again])
    survivor = ({"worker-a", "worker-b"} - {lost}).pop()
    assert scale.cluster.worker_of(finished.id) == survivor
    assert finished.parameters == crashed.parameters
    assert finished.created_by.display_value == RECOVERY

    # Everything the export moved is in WeCom now, and no pair was marked twice across the crash.
    assert scale.wrong_tags() == []
    marked = Counter(harness.pair_of(e) for e in harness.mark_tag_calls(sandbox, since))
    assert set(marked) == wrong_before, (len(marked), len(wrong_before))
    assert max(marked.values()) == 1, marked.most_common(3)
    _within_limits(sandbox)
    _ops_hear_of(scale, crashed)


def _ops_hear_of(scale: Scale, crashed: Any) -> None:
    """The crash reaches the ops robot the way alerts go: the ops-alerts deployment posts what
    it reads from Prefect's events (batched). Where the deployment table has no such deployment
    yet, the crash must at least be the event it will read."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from siyu.deployments.specs import DEPLOYMENTS
    from siyu.tasks.ops_alerts import ALERT_FLOW

    with get_client(sync_client=True) as client:
        events = client.read_events(
            limit=50,
            filter=EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.Crashed"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{crashed.id}"]),
            ),
        ).events
    assert events, "the crash left no prefect.flow-run.Crashed event for the alerts to read"
    alerting = [spec for spec in DEPLOYMENTS if spec.flow_name == ALERT_FLOW]
    if alerting:
        # One look, not the scheduled run's minutes of listening.
        scale.wait([scale.run(alerting[0].full_name, listen_seconds=0)])
        posted = harness.dump(scale.sandbox.webhook_posts())
        assert crashed.name in posted or "tag-sync" in posted, posted
