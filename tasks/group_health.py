"""Group health (daily): members, joins and leaves a week, participation per activity, who is dying.

A group is dying when its participation (players / members of its activities) stays under the
threshold for the given number of weeks running, or it loses more than the given share of its
members in a week; the thresholds are data on the cadence template. Leaves are what the member
list lost: last week's members plus this week's joins minus today's. The day's dying groups are
alerted to ops once (`siyu.groups.dying`: masked ids, names and owners of the groups, no members).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import HealthThresholds
from siyu.blocks.wecom import WeComClient
from siyu.blocks.wecom.groups import STATISTIC_MAX_OWNERS
from siyu.schemas.cadence import ActivityParticipation, GroupHealth
from siyu.schemas.models import insert_or_update
from siyu.tasks.cadence import CadenceAlert, queue_alerts, send_alerts
from siyu.tasks.rewards import mask_chat_id

CHINA = ZoneInfo("Asia/Shanghai")
LOW_PARTICIPATION, HEAVY_LOSS = "low_participation", "heavy_loss"
HEALTH_COLUMNS = [
    "chat_id", "owner", "day", "members", "joins_week", "leaves_week", "participation", "dying",
    "reason",
]  # fmt: skip


def group_snapshot(client: WeComClient, chat_ids: Iterable[str]) -> pd.DataFrame:
    """(chat_id, owner, name, member, join_time) of every customer in each group now."""
    rows = []
    for chat in chat_ids:
        group = client.get_group_chat(chat, need_name=False)
        rows.extend(
            (chat, group.owner, group.name, m.userid, m.join_time)
            for m in group.member_list
            if m.type == 2
        )
        if not any(m.type == 2 for m in group.member_list):
            rows.append((chat, group.owner, group.name, None, None))
    return pd.DataFrame(rows, columns=["chat_id", "owner", "name", "member", "join_time"])


def weekly_participation(participation: pd.DataFrame, day: dt.date, weeks: int) -> pd.DataFrame:
    """Per group and week back (0 = the 7 days to `day`), the mean of players / members."""
    if participation.empty:
        return pd.DataFrame(columns=["chat_id", "week_back", "share"])
    frame = participation.copy()
    age = frame["day"].map(lambda d: (day - d).days)
    frame["week_back"] = age // 7
    frame = frame[(age >= 0) & (frame["week_back"] < weeks) & (frame["members"] > 0)]
    frame["share"] = frame["players"] / frame["members"]
    return frame.groupby(["chat_id", "week_back"])["share"].mean().reset_index()


def assess(
    snapshot: pd.DataFrame,
    previous_members: pd.Series,
    participation: pd.DataFrame,
    day: dt.date,
    thresholds: HealthThresholds,
) -> pd.DataFrame:
    """One health row per group (HEALTH_COLUMNS)."""
    week_start = dt.datetime.combine(
        day - dt.timedelta(days=6), dt.time(), tzinfo=CHINA
    ).timestamp()
    present = snapshot.dropna(subset=["member"])
    members = present.groupby("chat_id").size()
    joins = present[present["join_time"] >= week_start].groupby("chat_id").size()
    owners = snapshot.drop_duplicates("chat_id").set_index("chat_id")["owner"]
    out = pd.DataFrame({"owner": owners})
    out["members"] = members.reindex(out.index).fillna(0).astype(int)
    out["joins_week"] = joins.reindex(out.index).fillna(0).astype(int)
    before = previous_members.reindex(out.index)
    leaves = (before + out["joins_week"] - out["members"]).clip(lower=0)
    out["leaves_week"] = leaves.fillna(0).astype(int)
    weekly = weekly_participation(participation, day, thresholds.weeks_low)
    shares = weekly.pivot_table(index="chat_id", columns="week_back", values="share")
    shares = shares.reindex(index=out.index, columns=range(thresholds.weeks_low))
    out["participation"] = shares[0]
    low = (shares < thresholds.min_participation).all(axis=1) & shares.notna().all(axis=1)
    loss = (out["leaves_week"] / before) > thresholds.max_weekly_loss
    loss = loss.fillna(False) & before.gt(0).fillna(False)
    out["dying"] = low | loss
    out["reason"] = None
    out.loc[low, "reason"] = LOW_PARTICIPATION
    out.loc[loss & ~low, "reason"] = HEAVY_LOSS
    out["day"] = day
    return out.reset_index(names="chat_id")[HEALTH_COLUMNS]


def _previous_members(session: Session, day: dt.date) -> pd.Series:
    rows = session.execute(
        sa.select(GroupHealth.chat_id, GroupHealth.members).where(
            GroupHealth.day == day - dt.timedelta(days=7)
        )
    )
    return pd.Series(dict(list(rows.tuples())), dtype="float64")


def _participation(session: Session, day: dt.date, weeks: int) -> pd.DataFrame:
    since = day - dt.timedelta(days=7 * weeks)
    rows = session.execute(
        sa.select(
            ActivityParticipation.chat_id,
            ActivityParticipation.day,
            ActivityParticipation.members,
            ActivityParticipation.players,
        ).where(ActivityParticipation.day > since, ActivityParticipation.day <= day)
    )
    return pd.DataFrame(rows.tuples(), columns=["chat_id", "day", "members", "players"])


def message_activity(client: WeComClient, owners: list[str], day: dt.date) -> pd.DataFrame:
    """Per owner, yesterday's groupchat/statistic figures (messages, members who spoke)."""
    yesterday = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(), tzinfo=CHINA)
    begin = int(yesterday.timestamp())
    rows = []
    for start in range(0, len(owners), STATISTIC_MAX_OWNERS):
        for item in client.iter_group_chat_statistics(
            owner_userids=owners[start : start + STATISTIC_MAX_OWNERS], day_begin_time=begin
        ):
            rows.append(
                (item.owner, item.data.msg_total, item.data.member_has_msg, item.data.chat_has_msg)
            )
    return pd.DataFrame(rows, columns=["owner", "msg_total", "member_has_msg", "chat_has_msg"])


def check_health(
    engine: sa.Engine,
    client: WeComClient,
    chat_ids: list[str],
    *,
    day: dt.date,
    thresholds: HealthThresholds,
) -> pd.DataFrame:
    """Assess every group for `day`, store it and alert ops of the dying ones.

    A rerun of the day keeps the first answer and alerts nothing more.
    """
    snapshot = group_snapshot(client, chat_ids)
    with Session(engine) as session:
        previous = _previous_members(session, day)
        participation = _participation(session, day, thresholds.weeks_low)
    health = assess(snapshot, previous, participation, day, thresholds)
    records = [
        {**row, "participation": None if pd.isna(row["participation"]) else float(row["participation"]),
         "dying": bool(row["dying"])}
        for row in health.to_dict(orient="records")
    ]  # fmt: skip
    names = snapshot.drop_duplicates("chat_id").set_index("chat_id")["name"]
    alert = dying_alert(health, names, day)
    if records:
        with Session(engine) as session, session.begin():
            insert = insert_or_update(engine.dialect.name, GroupHealth).on_conflict_do_nothing()
            session.execute(insert, records)
            if alert is not None:
                queue_alerts(session, [alert])
    send_alerts(engine)
    return health


def dying_alert(health: pd.DataFrame, names: pd.Series, day: dt.date) -> CadenceAlert | None:
    """The day's one alert listing the dying groups (masked id, name, owner, why); None if none."""
    dying = health[health["dying"]]
    if dying.empty:
        return None
    reasons = dying["reason"].value_counts()
    listed = [
        {"group": mask_chat_id(chat), "name": str(names.get(chat, "") or ""), "owner": owner,
         "reason": reason, "members": int(members)}
        for chat, owner, reason, members in zip(
            dying["chat_id"], dying["owner"], dying["reason"], dying["members"], strict=True
        )
    ][:50]  # fmt: skip
    why = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in reasons.items())
    return CadenceAlert(
        key=f"dying:{day.isoformat()}",
        event="siyu.groups.dying",
        resource=f"siyu.group-cadence.health.{day.isoformat()}",
        subject=f"{len(dying)} of {len(health)} customer groups are dying on {day}: {why}",
        next_step=(
            "give each a fresh activity or its owner's personal post this week, and ask the owner "
            "why members stopped playing or left (group-health artifact has the list)"
        ),
        details={
            "day": day.isoformat(), "dying": len(dying), "groups": len(health),
            "by_reason": {str(r): int(n) for r, n in reasons.items()}, "dying_groups": listed,
        },
    )  # fmt: skip
