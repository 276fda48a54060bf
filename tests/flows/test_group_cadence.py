"""The group cadence end to end against the sandbox: slots, games, winners, payouts, health, four weeks."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.environment import BLOCK_NAME
from siyu.blocks.group_cadence import (
    ActivityLibrary,
    CadenceTemplate,
    EntriesSource,
    ProductCalendar,
    Promotion,
)
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.flows.group_cadence import (
    activity_winners,
    cadence_due,
    group_cadence,
    group_health,
    rewards_settle,
)
from siyu.sandbox.sample import SampleSpec, generate
from siyu.schemas.cadence import GRANTED, PAID, Activity, ProductPlacement, RewardWin
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import COUNTED_STATUSES, Send
from siyu.schemas.settings import Settings
from siyu.tasks.activities import run_winners
from siyu.tasks.cadence import occurrences
from tests.tasks.test_rewards import KILLER

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2026, 11, 2, tzinfo=CHINA)  # ISO week 2026-W45; no holiday for 4 weeks
TUESDAY = MONDAY + dt.timedelta(days=1)
WEDNESDAY = MONDAY + dt.timedelta(days=2)


@pytest.fixture
def cadence_system(prefect_server, sandbox, database_url, siyu_home, monkeypatch, tmp_path):
    """20 groups of 3 owners in the sandbox, siyu pointed at it, a product calendar saved."""
    sample = generate(
        SampleSpec(customers=900, groups=20, managers=3, seed=5, export_date=dt.date(2026, 10, 31)),
        tmp_path / "sample",
    )
    sandbox.seed(sample.seed_dir)
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setenv("SIYU_WECOM_BASE_URL", sandbox.api_base)
    monkeypatch.setenv("SIYU_WECOM_CORP_ID", sandbox.corp_id)
    monkeypatch.setenv("SIYU_WECOM_SECRET", sandbox.secret)
    monkeypatch.setenv("SIYU_PAY_BASE_URL", sandbox.pay_base)
    upgrade(database_url)
    calendar = ProductCalendar(
        rotation_days=7,
        promotions=[
            Promotion(id="card", title="信用卡", content="新户礼", start=MONDAY.date(),
                      end=MONDAY.date() + dt.timedelta(days=27), priority=3),
            Promotion(id="fund", title="基金", content="定投", start=MONDAY.date(),
                      end=MONDAY.date() + dt.timedelta(days=27), priority=2),
            Promotion(id="deposit", title="存款", content="加息", start=MONDAY.date(),
                      end=MONDAY.date() + dt.timedelta(days=27), priority=1),
            Promotion(id="expired", title="旧活动", content="-", start=dt.date(2026, 1, 1),
                      end=dt.date(2026, 2, 1), priority=9),
        ],
    )  # fmt: skip
    calendar.save(BLOCK_NAME, overwrite=True)
    engine = make_engine(database_url)
    try:
        yield sandbox, engine
    finally:
        engine.dispose()
        ProductCalendar(promotions=[]).save(BLOCK_NAME, overwrite=True)
        CadenceTemplate().save(BLOCK_NAME, overwrite=True)


def entries_source() -> EntriesSource:
    return EntriesSource(landing_dir=str(Settings.from_env().landing_dir / "entries"))


def answer(sandbox, engine, key: str, *, participation: float | None = None, only=None) -> None:
    """Members answer every round of activity `key` in the sandbox, written where siyu reads."""
    with Session(engine) as session:
        activity = session.scalar(sa.select(Activity).where(Activity.key == key))
    script = ActivityLibrary().script(activity.script)
    chat_ids = [c for c in activity.chat_ids["chat_ids"] if only is None or c in only]
    for round_, question in enumerate(script.questions):
        opens = activity.asked_at + dt.timedelta(minutes=script.window_minutes * round_)
        request = dict(
            chat_ids=chat_ids, question_id=f"{key}:{round_}", correct_answer=question.answer,
            path=entries_source().path_for(key, round_), options=question.options or ["x"],
            start_at=opens.timestamp(), window_seconds=script.window_minutes * 60 - 1,
            seed=round_, record_messages=False,
        )  # fmt: skip
        if participation is not None:
            request["participation"] = participation
        sandbox.group_answers(**request)


def test_a_slot_reminds_each_owner_once_with_all_their_groups_and_rotates_products(cadence_system):
    sandbox, engine = cadence_system
    at = MONDAY.replace(hour=10)
    sandbox.set_clock(at.timestamp(), frozen=True)
    state = group_cadence(slot="mon-post", as_of=at, return_state=True)
    report = state.result()
    assert report["groups"] == 20 and report["owners"] == 3
    assert report["sends"]["calls"] == {"message/send": 3}  # bounded by owners, not groups
    assert report["products"] == {"card": 20}
    messages = sandbox.app_messages()
    assert len(messages) == 3
    # Wednesday's post rotates to the next product; a rerun of Monday sends nothing more.
    group_cadence(slot="mon-post", as_of=at)
    assert len(sandbox.app_messages()) == 3
    wed = group_cadence(slot="wed-post", as_of=WEDNESDAY.replace(hour=10), return_state=True)
    assert wed.result()["products"] == {"fund": 20}
    with Session(engine) as session:
        rows = session.execute(sa.select(Send.step, Send.period, Send.status)).all()
    assert Counter(rows) == {("mon-post", "2026-W45", "delivered"): 20,
                             ("wed-post", "2026-W45", "delivered"): 20}  # fmt: skip


def test_a_dry_run_sends_and_records_nothing(cadence_system):
    sandbox, engine = cadence_system
    at = MONDAY.replace(hour=10)
    state = group_cadence(slot="mon-post", as_of=at, dry_run=True, return_state=True)
    assert state.result()["sends"]["plan"]["fits"] == 20
    assert sandbox.app_messages() == []
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Send)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(ProductPlacement)) == 0


def test_a_game_chooses_winners_after_the_delay_and_pays_them_once(cadence_system):
    sandbox, engine = cadence_system
    at = TUESDAY.replace(hour=20)
    sandbox.set_clock(at.timestamp(), frozen=True)
    report = group_cadence(slot="tue-game", as_of=at, return_state=True).result()
    key = report["activity"]
    assert dt.datetime.fromisoformat(report["announce_at"]) == at + dt.timedelta(minutes=50)
    answer(sandbox, engine, key)
    announce = at + dt.timedelta(minutes=50)
    won = activity_winners(activity=key, as_of=announce, return_state=True).result()
    assert won["winners"] == 20 * 5 and won["rewards"]["granted"] == 100
    assert all("****" in m for masked in won["winners_masked"].values() for m in masked)
    again = activity_winners(activity=key, as_of=announce, return_state=True).result()
    assert again["rewards"]["already"] == 100
    paid = rewards_settle(as_of=announce, in_flight_seconds=0.5, return_state=True).result()
    assert paid["paid"] == 100
    assert len(sandbox.payouts()) == 100
    health = group_health(date=at.date(), return_state=True).result()
    assert health["groups"] == 20 and health["dying"] == []


# A month on the sandbox's clock costs minutes: it runs on SQLite; PostgreSQL's ledger, outbox and
# claims are proven by the shorter flow tests that run on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_four_weeks_of_the_default_template_over_20_groups(cadence_system, database_url, tmp_path):
    """The Done-when of the cadence: every slot once, rotation, winners, payouts once, quota, dying."""
    sandbox, engine = cadence_system
    # Monday's and Friday's posts go as group mass templates: 8 wanted in November, 4 allowed.
    template = CadenceTemplate()
    template.slots = [
        s.model_copy(update={"delivery": "mass_template"})
        if s.name in ("mon-post", "fri-post")
        else s
        for s in template.slots
    ]
    template.save(BLOCK_NAME, overwrite=True)
    library = ActivityLibrary()
    start = MONDAY - dt.timedelta(minutes=1)
    end = MONDAY + dt.timedelta(days=28)
    schedule = occurrences(template, start, end)
    quiet_chat: str | None = None
    killed = False
    for at, slot in schedule:
        sandbox.set_clock(at.timestamp(), frozen=True)
        cadence_due(until=at + dt.timedelta(minutes=1), since=start, in_flight_seconds=0)
        if not slot.activity:
            continue
        with Session(engine) as session:
            activity = session.scalar(sa.select(Activity).where(Activity.slot == slot.name,
                                                                Activity.asked_at == at))  # fmt: skip
        chat_ids = activity.chat_ids["chat_ids"]
        quiet_chat = quiet_chat or chat_ids[-1]
        # The quiet group stops answering after its first week.
        talking = [c for c in chat_ids if c != quiet_chat or at < MONDAY + dt.timedelta(days=7)]
        answer(sandbox, engine, activity.key, only=set(talking))
        announce = activity.announce_at
        sandbox.set_clock(announce.timestamp(), frozen=True)
        if not killed and at >= MONDAY + dt.timedelta(days=10):
            # Week 2's Thursday game: winners granted, then the settlement is killed -9 after
            # 20 payouts; the next catch-up reconciles the unrecorded one and pays the rest.
            client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret,
                                 agent_id=sandbox.agent_id)  # fmt: skip
            run_winners(engine, client, library=library, entries=entries_source(),
                        rules=SendRules(), key=activity.key, as_of=announce)  # fmt: skip
            script = tmp_path / "settle_and_die.py"
            script.write_text(KILLER)
            paid_before = len(sandbox.payouts())
            done = subprocess.run(
                [sys.executable, str(script), database_url, sandbox.api_base, sandbox.pay_base,
                 sandbox.corp_id, sandbox.secret, "20", announce.isoformat()],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode < 0, done.stderr
            assert len(sandbox.payouts()) == paid_before + 20
            killed = True
        cadence_due(until=announce + dt.timedelta(minutes=1), since=start, in_flight_seconds=0)
    assert killed

    with Session(engine) as session:
        sends = session.execute(sa.select(Send.target_id, Send.step, Send.period, Send.channel,
                                          Send.status, Send.send_month)).all()  # fmt: skip
        wins = session.scalars(sa.select(RewardWin)).all()
        activities = session.scalars(sa.select(Activity)).all()
        placements = session.execute(
            sa.select(ProductPlacement.chat_id, ProductPlacement.promotion_id)
        ).all()
    slot_names = {s.name for s in template.slots}
    # Every group gets each slot once a week, four weeks.
    served = Counter((t, step, period) for t, step, period, *_ in sends if step in slot_names)
    assert len(served) == 20 * 6 * 4 and set(served.values()) == {1}
    # The group quota: never more than 4 mass templates a group a month.
    mass = Counter(
        (t, m) for t, _, _, ch, st, m in sends if ch == "mass_template" and st in COUNTED_STATUSES
    )
    assert mass and max(mass.values()) <= 4
    # Posts rotate through the in-window products; the expired one never shows.
    by_group: dict[str, set[str]] = {}
    for chat, pid in placements:
        by_group.setdefault(chat, set()).add(pid)
    assert all(products == {"card", "fund", "deposit"} for products in by_group.values())
    # Announcements came after the delay; winners by the scripts' rules.
    assert len(activities) == 12
    for activity in activities:
        script = library.script(activity.script)
        delay = dt.timedelta(
            minutes=script.window_minutes * len(script.questions) + script.announce_delay_minutes
        )
        assert activity.announce_at - activity.asked_at == delay
        assert activity.announced_at >= activity.announce_at
    per_activity_group = Counter((w.activity_key, w.chat_id, w.round) for w in wins)
    assert max(per_activity_group.values()) <= 5
    # Every winner paid exactly once, across the kill.
    payouts = sandbox.payouts()
    assert {w.status for w in wins} == {PAID}
    assert sorted(p["mch_billno"] for p in payouts) == sorted(w.billno for w in wins)
    # Budgets were never exceeded.
    spent = Counter()
    for w in wins:
        spent[(w.chat_id, w.week)] += w.amount_fen
    assert max(spent.values()) <= library.group_week_budget_fen
    # The group that stopped answering is found dying; the others are not.
    sandbox.set_clock((end - dt.timedelta(hours=12)).timestamp(), frozen=True)
    health = group_health(date=(end - dt.timedelta(days=1)).date(), return_state=True).result()
    assert health["messages"]  # groupchat/statistic per owner
    assert health["dying"] == [quiet_chat]
    assert GRANTED not in {w.status for w in wins}


def test_next_weeks_slot_runs_are_scheduled_runs_each_carrying_its_slot(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from siyu.deployments.specs import DEPLOYMENTS

    spec = next(s for s in DEPLOYMENTS if s.full_name == "group-cadence/weekly")
    deployment_id = spec.to_runner_deployment().apply()
    now = dt.datetime.now(CHINA)
    with get_client(sync_client=True) as client:
        try:
            reply = client._client.post(
                f"/deployments/{deployment_id}/schedule",
                json={"start_time": now.isoformat(),
                      "end_time": (now + dt.timedelta(days=7)).isoformat(), "max_runs": 50},
            )  # fmt: skip
            reply.raise_for_status()
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        finally:
            client.delete_deployment(deployment_id)
    scheduled = sorted((r.expected_start_time, r.parameters["slot"]) for r in runs)
    assert {slot for _, slot in scheduled} == {s.name for s in CadenceTemplate().slots}
    assert len(scheduled) == 6
    assert all(r.state.is_scheduled() for r in runs)


def test_the_cli_runs_a_slot_dry_and_help_names_every_cadence_command(cadence_system, capsys):
    from siyu.deployments.cli import build_parser, main

    assert main(["cadence", "slot", "mon-post", "--at", "2026-11-02T10:00", "--dry-run"]) == 0
    assert "20 groups of 3 owners" in capsys.readouterr().out
    parser = build_parser()
    for args in (["cadence", "due", "--until", "2026-11-02T10:00"], ["activity", "winners", "k"],
                 ["rewards", "settle"], ["groups", "health", "--date", "20261102"]):  # fmt: skip
        assert parser.parse_args(args).handler is not None


def test_a_slot_run_by_hand_for_one_group_leaves_the_others_to_the_catch_up(cadence_system):
    sandbox, engine = cadence_system
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    first = sorted(ref.chat_id for ref in client.iter_group_chats())[0]
    at = TUESDAY.replace(hour=20)
    sandbox.set_clock(at.timestamp(), frozen=True)
    one = group_cadence(slot="tue-game", as_of=at, chat_ids=[first], return_state=True).result()
    assert one["groups"] == 1
    done = cadence_due(until=at + dt.timedelta(minutes=1), since=at - dt.timedelta(minutes=1),
                       return_state=True).result()  # fmt: skip
    assert done["slots"] == [f"tue-game@{at.isoformat()}"]
    with Session(engine) as session:
        steps = session.scalars(sa.select(Send.target_id).where(Send.step == "tue-game")).all()
        activity = session.scalar(sa.select(Activity))
    assert len(steps) == len(set(steps)) == 20
    assert len(activity.chat_ids["chat_ids"]) == 20
