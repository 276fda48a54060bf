"""The join hook as a flow: newcomers who play win once, paid five working days later; no one else."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.environment import BLOCK_NAME
from siyu.blocks.group_cadence import EntriesSource
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.flows.group_cadence import join_hook, rewards_settle
from siyu.sandbox.sample import SampleSpec, generate
from siyu.schemas.cadence import PAID, ActivityParticipation, RewardWin
from siyu.schemas.database import make_engine
from siyu.schemas.settings import Settings
from tests.flows.test_group_cadence import seed_and_point_siyu_at

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2026, 12, 14, tzinfo=CHINA)
HOLIDAY = dt.date(2026, 12, 16)  # a bank holiday on the Wednesday: five working days end Tue 22


@pytest.fixture
def hook_system(prefect_server, sandbox, database_url, siyu_home, monkeypatch, tmp_path):
    """4 groups of 2 owners whose members all joined weeks ago; a holiday saved in the rules."""
    sample = generate(
        SampleSpec(customers=300, groups=4, managers=2, seed=8, export_date=dt.date(2026, 10, 31)),
        tmp_path / "sample",
    )
    seed_and_point_siyu_at(sandbox, sample.seed_dir, database_url, monkeypatch)
    SendRules(holidays=[HOLIDAY]).save(BLOCK_NAME, overwrite=True)
    engine = make_engine(database_url)
    try:
        yield sandbox, engine
    finally:
        engine.dispose()
        SendRules().save(BLOCK_NAME, overwrite=True)


def play(key: str, chat: str, plays: list[tuple[str, dt.datetime]]) -> None:
    """The join game's answers of one day, landed where siyu reads them (the form's export)."""
    source = EntriesSource(landing_dir=str(Settings.from_env().landing_dir / "entries"))
    path = Path(source.path_for(key, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{member},{chat},go,{at.isoformat()}" for member, at in plays]
    path.write_text("external_userid,chat_id,answer,time\n" + "\n".join(lines) + "\n")


def test_newcomers_who_play_are_paid_once_five_working_days_later_and_no_one_else(hook_system):
    sandbox, engine = hook_system
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    chats = sorted(ref.chat_id for ref in client.iter_group_chats())
    chat = chats[0]
    old = [m.userid for m in client.get_group_chat(chat).member_list if m.type == 2]
    newcomers = [
        m.userid
        for other in chats[1:]
        for m in client.get_group_chat(other).member_list
        if m.type == 2 and m.userid not in old
    ][:2]
    player, idle = newcomers
    joined = MONDAY.replace(hour=10)
    sandbox.group_activity(
        [
            {"chat_id": chat, "kind": "join", "userid": m, "at": joined.timestamp()}
            for m in newcomers
        ]
    )

    opened = join_hook(as_of=MONDAY.replace(hour=9), return_state=True).result()
    assert opened["groups"] == 4
    monday_key = opened["opened"][-1]
    assert monday_key.endswith("2026-12-14")
    # The newcomer plays; the other newcomer does not; an old member plays too.
    play(monday_key, chat, [(player, joined + dt.timedelta(minutes=5)),
                            (old[0], joined + dt.timedelta(minutes=6))])  # fmt: skip

    tuesday = join_hook(as_of=MONDAY + dt.timedelta(days=1, hours=9), return_state=True).result()
    drawn = {d["activity"]: d for d in tuesday["drawn"]}
    assert (drawn[monday_key]["winners"], drawn[monday_key]["granted"]) == (1, 1)
    assert sum(d["granted"] for d in tuesday["drawn"]) == 1
    # The winner plays again on Tuesday: the hook is won once.
    tuesday_key = tuesday["opened"][-1]
    play(tuesday_key, chat, [(player, MONDAY + dt.timedelta(days=1, hours=11))])
    wednesday_at = MONDAY + dt.timedelta(days=2, hours=9)
    wednesday = join_hook(as_of=wednesday_at, return_state=True).result()
    assert [(d["activity"], d["granted"], d["won_before"]) for d in wednesday["drawn"]] == [
        (tuesday_key, 0, 1)
    ]
    assert join_hook(as_of=wednesday_at, return_state=True).result()["drawn"] == []

    # Five working days from Monday, the Wednesday holiday skipped: Tuesday 22 December.
    monday_21 = dt.datetime(2026, 12, 21, 10, tzinfo=CHINA)
    sandbox.set_clock(monday_21.timestamp(), frozen=True)
    assert rewards_settle(as_of=monday_21, return_state=True).result()["paid"] == 0
    tuesday_22 = monday_21 + dt.timedelta(days=1)
    sandbox.set_clock(tuesday_22.timestamp(), frozen=True)
    assert rewards_settle(as_of=tuesday_22, return_state=True).result()["paid"] == 1
    assert rewards_settle(as_of=tuesday_22, return_state=True).result()["paid"] == 0
    assert [p["external_userid"] for p in sandbox.payouts()] == [player]
    with Session(engine) as session:
        wins = session.scalars(sa.select(RewardWin)).all()
        hooked = session.scalar(
            sa.select(sa.func.count())
            .select_from(ActivityParticipation)
            .where(ActivityParticipation.activity_key.like("%join-hook%"))
        )
    assert [(w.member, w.status, w.pay_due) for w in wins] == [
        (player, PAID, dt.date(2026, 12, 22))
    ]
    assert idle not in {w.member for w in wins}
    assert hooked == 0  # the hook is no game: it counts in no group's participation
