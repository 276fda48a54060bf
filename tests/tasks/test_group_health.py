"""Group health: joins and leaves a week, participation, and dying by the thresholds as data."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import HealthThresholds
from siyu.blocks.wecom import WeComClient
from siyu.schemas.cadence import ActivityParticipation, GroupHealth
from siyu.tasks.group_health import HEAVY_LOSS, LOW_PARTICIPATION, assess, check_health
from tests.fixtures.sandbox import SEED_CHAT_IDS

CHINA = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 12, 20)


def snapshot(chat: str, members: int, joined_this_week: int = 0) -> pd.DataFrame:
    recent = dt.datetime.combine(DAY, dt.time(9), tzinfo=CHINA).timestamp()
    old = recent - 30 * 86_400
    times = [recent] * joined_this_week + [old] * (members - joined_this_week)
    return pd.DataFrame({"chat_id": chat, "owner": "mgr", "member": [f"{chat}-{i}" for i in range(members)],
                         "join_time": times})  # fmt: skip


def participation(chat: str, shares: list[tuple[int, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(chat, DAY - dt.timedelta(days=back), 100, int(share * 100)) for back, share in shares],
        columns=["chat_id", "day", "members", "players"],
    )


def test_low_participation_two_weeks_running_or_a_heavy_loss_is_dying():
    snap = pd.concat([snapshot("quiet", 100), snapshot("leaky", 70, joined_this_week=5),
                      snapshot("fine", 100, joined_this_week=10), snapshot("new", 100)])  # fmt: skip
    previous = pd.Series({"quiet": 100, "leaky": 100, "fine": 95})
    part = pd.concat([
        participation("quiet", [(1, 0.05), (3, 0.08), (9, 0.02)]),
        participation("leaky", [(1, 0.5), (8, 0.5)]),
        participation("fine", [(1, 0.05), (8, 0.4)]),  # one low week is not two
        participation("new", [(1, 0.01)]),  # no second week yet
    ])  # fmt: skip
    health = assess(snap, previous, part, DAY, HealthThresholds()).set_index("chat_id")
    assert health.loc["quiet", "reason"] == LOW_PARTICIPATION
    assert health.loc["leaky", "reason"] == HEAVY_LOSS
    assert health.loc["leaky", "leaves_week"] == 35 and health.loc["leaky", "joins_week"] == 5
    assert not health.loc["fine", "dying"] and not health.loc["new", "dying"]
    assert health["dying"].sum() == 2
    # Thresholds are data: a lower bar keeps the quiet group alive.
    lenient = assess(snap, previous, part, DAY, HealthThresholds(min_participation=0.01))
    assert lenient.set_index("chat_id").loc["quiet", "dying"] == False  # noqa: E712


def test_health_is_read_from_the_groups_and_stored_per_day(engine, sandbox, seed_dir):
    sandbox.seed(seed_dir)
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    with Session(engine) as session, session.begin():
        session.add(ActivityParticipation(activity_key="k", chat_id=SEED_CHAT_IDS[0], day=DAY,
                                          members=10, players=0, correct=0))  # fmt: skip
    health = check_health(engine, client, SEED_CHAT_IDS, day=DAY, thresholds=HealthThresholds())
    assert sorted(health["chat_id"]) == sorted(SEED_CHAT_IDS)
    assert (health["members"] > 0).all()
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(GroupHealth)) == 2
