"""The group cadence end to end against the sandbox: slots, games, winners, payouts, health, four weeks."""

from __future__ import annotations

import datetime as dt
import json
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
    GroupOverride,
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
from siyu.schemas.cadence import (
    GRANTED,
    GROUP_WEEK,
    PAID,
    Activity,
    ProductPlacement,
    RewardWin,
)
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import COUNTED_STATUSES, Send
from siyu.schemas.settings import Settings
from siyu.tasks.activities import run_winners
from siyu.tasks.cadence import PAUSED_BY_OPS, occurrences
from siyu.tasks.rewards import mask_chat_id
from tests.flows.conftest import read_run
from tests.tasks.test_rewards import KILLER

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2026, 11, 2, tzinfo=CHINA)  # ISO week 2026-W45; no holiday for 4 weeks
TUESDAY = MONDAY + dt.timedelta(days=1)
WEDNESDAY = MONDAY + dt.timedelta(days=2)


def seed_and_point_siyu_at(sandbox, seed_dir, database_url: str, monkeypatch) -> None:
    """The sandbox seeded with a sample, siyu's WeCom, payouts and database set to it, migrated."""
    sandbox.seed(seed_dir)
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setenv("SIYU_WECOM_BASE_URL", sandbox.api_base)
    monkeypatch.setenv("SIYU_WECOM_CORP_ID", sandbox.corp_id)
    monkeypatch.setenv("SIYU_WECOM_SECRET", sandbox.secret)
    monkeypatch.setenv("SIYU_PAY_BASE_URL", sandbox.pay_base)
    upgrade(database_url)


@pytest.fixture
def cadence_system(prefect_server, sandbox, database_url, siyu_home, monkeypatch, tmp_path):
    """20 groups of 3 owners in the sandbox, siyu pointed at it, a product calendar saved."""
    sample = generate(
        SampleSpec(customers=900, groups=20, managers=3, seed=5, export_date=dt.date(2026, 10, 31)),
        tmp_path / "sample",
    )
    seed_and_point_siyu_at(sandbox, sample.seed_dir, database_url, monkeypatch)
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
        ActivityLibrary().save(BLOCK_NAME, overwrite=True)


@pytest.fixture
def siyu_events(prefect_server, monkeypatch):
    """The siyu.* events this test emits, captured on their way to the Prefect test server.

    Prefect's own test client records every event and passes it on to the server.
    """
    from prefect.events.clients import AssertingPassthroughEventsClient
    from prefect.events.worker import EventsWorker

    AssertingPassthroughEventsClient.reset()
    worker = EventsWorker.instance(AssertingPassthroughEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

    def read() -> list:
        worker.wait_until_empty()
        return [
            event
            for client in AssertingPassthroughEventsClient.all
            for event in getattr(client, "events", [])
            if event.event.startswith("siyu.")
        ]

    try:
        yield read
    finally:
        worker.drain()
        AssertingPassthroughEventsClient.reset()


def follows_the_alert_contract(event) -> bool:
    """What the ops-robot automations need: a siyu.* name, a one-line subject and next step."""
    payload = event.payload
    return (
        event.event.startswith("siyu.")
        and event.resource.id.startswith("siyu.group-cadence.")
        and bool(payload.get("subject")) and "\n" not in payload["subject"]
        and bool(payload.get("next_step")) and "\n" not in payload["next_step"]
    )  # fmt: skip


def chat_ids_of(sandbox) -> list[str]:
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    return sorted(ref.chat_id for ref in client.iter_group_chats())


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
    run = read_run(state)
    assert run.name.endswith(" · dry run") and "dry-run" in run.tags


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
        told = session.execute(
            sa.select(Send.target_id, Send.step, Send.period, Send.planned_at).where(
                Send.step.like("%-winners")
            )
        ).all()
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
        # Each group was told its winners once, no earlier than the announcement time.
        announced = [t for t in told if (t.step, t.period) == (f"{activity.slot}-winners",
                                                               activity.week)]  # fmt: skip
        assert sorted(t.target_id for t in announced) == sorted(activity.chat_ids["chat_ids"])
        assert all(_aware(t.planned_at) >= _aware(activity.announce_at) for t in announced)
        # Winners by the script's rule, recomputed here from the simulated entries.
        for round_, question in enumerate(script.questions):
            expected = expected_winners(activity, script, round_, question.answer)
            got = {(w.chat_id, w.member) for w in wins
                   if w.activity_key == activity.key and w.round == round_}  # fmt: skip
            if script.winner_rule == "lottery":
                assert got <= expected["correct"] and len(got) == expected["lottery_size"]
            else:
                assert got == expected["first"]
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
    month_spent = Counter()
    for w in wins:
        month_spent[w.month] += w.amount_fen
    assert max(month_spent.values()) <= library.programme_month_budget_fen
    # The group that stopped answering is found dying; the others are not.
    sandbox.set_clock((end - dt.timedelta(hours=12)).timestamp(), frozen=True)
    health = group_health(date=(end - dt.timedelta(days=1)).date(), return_state=True).result()
    assert health["messages"]  # groupchat/statistic per owner
    assert health["dying"] == [quiet_chat]
    assert GRANTED not in {w.status for w in wins}


def _aware(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def expected_winners(activity, script, round_: int, key: str) -> dict:
    """The test's own reading of one round's entries file: who should win by the script's rule.

    A member's first answer inside the round's window counts (in the group answered first);
    first_correct takes the earliest correct answers of each group, ties by member id; a
    lottery draws among the correct answers of each group.
    """
    import pandas as pd

    path = entries_source().path_for(activity.key, round_)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    opens = _aware(activity.asked_at) + dt.timedelta(minutes=script.window_minutes * round_)
    closes = opens + dt.timedelta(minutes=script.window_minutes)
    frame = frame[(frame["time"] >= opens) & (frame["time"] <= closes)]
    frame = frame[frame["chat_id"].isin(activity.chat_ids["chat_ids"])]
    first = frame.sort_values(["time", "external_userid", "chat_id"]).drop_duplicates(
        "external_userid"
    )
    correct = first[first["answer"].str.strip().str.lower() == key.strip().lower()]
    ranked = correct.sort_values(["chat_id", "time", "external_userid"])
    top = ranked.groupby("chat_id").head(script.winners_per_round)
    return {
        "first": set(zip(top["chat_id"], top["external_userid"], strict=True)),
        "correct": set(zip(correct["chat_id"], correct["external_userid"], strict=True)),
        "lottery_size": int(
            correct.groupby("chat_id").size().clip(upper=script.winners_per_round).sum()
        ),
    }


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


def test_over_budget_wins_and_a_week_past_80_percent_alert_ops_once(cadence_system, siyu_events):
    sandbox, engine = cadence_system
    # 5 winners of 5 yuan a group against a 20-yuan week: 4 paid (100 % of it), 1 unpaid.
    ActivityLibrary(group_week_budget_fen=2_000).save(BLOCK_NAME, overwrite=True)
    at = TUESDAY.replace(hour=20)
    sandbox.set_clock(at.timestamp(), frozen=True)
    slot = group_cadence(slot="tue-game", as_of=at, schedule_winners=False, return_state=True)
    key = slot.result()["activity"]
    answer(sandbox, engine, key)
    announce = at + dt.timedelta(minutes=50)
    won = activity_winners(activity=key, as_of=announce, return_state=True).result()
    assert won["rewards"]["granted"] == 80 and won["rewards"]["over_budget"] == {GROUP_WEEK: 20}
    activity_winners(activity=key, as_of=announce)  # a rerun alerts nothing more
    events = siyu_events()
    assert all(follows_the_alert_contract(e) for e in events)
    over = [e for e in events if e.event == "siyu.rewards.over-budget"]
    assert len(over) == 1
    assert over[0].resource.id == f"siyu.group-cadence.activity.{key}"
    assert over[0].payload["wins_over_budget"] == 20 and over[0].payload["week"] == "2026-W45"
    assert over[0].payload["by_budget"] == {GROUP_WEEK: 20}
    assert over[0].payload["unpaid_fen"] == 20 * 500
    eighty = [e for e in events if e.event == "siyu.rewards.budget-80"]
    assert len(eighty) == len({e.resource.id for e in eighty}) == 20  # once per group and week
    assert {e.payload["scope"] for e in eighty} == {"group_week"}
    assert {e.payload["group"] for e in eighty} == {mask_chat_id(c) for c in chat_ids_of(sandbox)}
    # No member's id travels in an alert.
    with Session(engine) as session:
        members = set(session.scalars(sa.select(RewardWin.member)))
    text = json.dumps([e.payload for e in events], ensure_ascii=False)
    assert members and not any(m in text for m in members)


def test_a_group_that_loses_members_is_dying_and_ops_are_alerted_once_a_day(
    cadence_system, siyu_events
):
    sandbox, engine = cadence_system
    day = WEDNESDAY.date()
    group_health(date=day - dt.timedelta(days=7))  # last week's member counts
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    leaky = chat_ids_of(sandbox)[3]
    group = client.get_group_chat(leaky)
    members = [m.userid for m in group.member_list if m.type == 2]
    gone = members[: len(members) // 3 + 1]  # a third left this week: over the 20 % bar
    at = WEDNESDAY.replace(hour=8).timestamp()
    sandbox.group_activity(
        [{"chat_id": leaky, "kind": "leave", "userid": m, "at": at} for m in gone]
    )
    health = group_health(date=day, return_state=True).result()
    assert health["dying"] == [leaky]
    group_health(date=day)  # a rerun of the day alerts nothing more
    dying = [e for e in siyu_events() if e.event == "siyu.groups.dying"]
    assert len(dying) == 1 and follows_the_alert_contract(dying[0])
    assert dying[0].resource.id == f"siyu.group-cadence.health.{day.isoformat()}"
    payload = dying[0].payload
    assert (payload["dying"], payload["groups"], payload["by_reason"]) == (1, 20, {"heavy_loss": 1})
    assert payload["dying_groups"] == [
        {"group": mask_chat_id(leaky), "name": group.name, "owner": group.owner,
         "reason": "heavy_loss", "members": len(members) - len(gone)}
    ]  # fmt: skip
    assert not any(m in json.dumps(payload, ensure_ascii=False) for m in members)


def test_a_template_with_group_tags_serves_only_the_groups_carrying_them(cadence_system):
    sandbox, _ = cadence_system
    chats = chat_ids_of(sandbox)
    tagged = {"北区": chats[:3], "南区": chats[3:5], "旧群": ["wrNotAGroup*"]}
    at = MONDAY.replace(hour=10)
    CadenceTemplate(group_tags=["北区", "南区"], tagged_groups=tagged).save(
        BLOCK_NAME, overwrite=True
    )
    report = group_cadence(slot="mon-post", as_of=at, dry_run=True, return_state=True).result()
    assert report["groups"] == 5
    CadenceTemplate(group_tags=["旧群"], tagged_groups=tagged).save(BLOCK_NAME, overwrite=True)
    none = group_cadence(slot="mon-post", as_of=at, dry_run=True, return_state=True).result()
    assert none["groups"] == 0


def test_a_paused_group_gets_every_slot_recorded_skipped_and_nothing_else(cadence_system):
    sandbox, engine = cadence_system
    paused = chat_ids_of(sandbox)[0]
    CadenceTemplate(overrides=[GroupOverride(chat_id=paused, paused=True)]).save(
        BLOCK_NAME, overwrite=True
    )
    post_at, game_at = MONDAY.replace(hour=10), TUESDAY.replace(hour=20)
    sandbox.set_clock(post_at.timestamp(), frozen=True)
    post = group_cadence(slot="mon-post", as_of=post_at, return_state=True).result()
    assert (post["groups"], post["paused"]) == (19, 1)
    sandbox.set_clock(game_at.timestamp(), frozen=True)
    game = group_cadence(
        slot="tue-game", as_of=game_at, schedule_winners=False, return_state=True
    ).result()
    group_cadence(slot="mon-post", as_of=post_at)  # a rerun records nothing twice
    with Session(engine) as session:
        rows = session.execute(
            sa.select(Send.step, Send.status, Send.reason).where(Send.target_id == paused)
        ).all()
        others = session.scalars(sa.select(Send.status).where(Send.target_id != paused)).all()
        activity = session.scalar(sa.select(Activity).where(Activity.key == game["activity"]))
        placed = session.scalars(
            sa.select(ProductPlacement.chat_id).where(ProductPlacement.chat_id == paused)
        ).all()
    assert sorted(rows) == [
        ("mon-post", "skipped", PAUSED_BY_OPS),
        ("tue-game", "skipped", PAUSED_BY_OPS),
    ]
    assert len(others) == 2 * 19 and set(others) == {"delivered"}
    assert paused not in activity.chat_ids["chat_ids"] and placed == []
    # The catch-up counts the slot as run: nothing is sent to the paused group later.
    done = cadence_due(until=game_at + dt.timedelta(minutes=1), since=post_at - dt.timedelta(minutes=1),
                       return_state=True).result()  # fmt: skip
    assert done["slots"] == []
