"""Game entries and winners by rule: first N correct by time, a seeded lottery, or everyone who played.

Set-based over all groups of an activity at once (pandas): 2 million entries cost a few sorts.
The rules, in order: only members of the group count; only answers inside the round's window;
a member's first answer of a round is their answer (no guessing twice), and a member in two
groups of the activity plays in the one they answered first; ties on time are broken by member
id, a lottery by a hash of (seed, activity, round, member), so a rerun chooses the same winners.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import ActivityLibrary, ActivityScript, EntriesSource
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.schemas.cadence import ANNOUNCED, Activity, ActivityParticipation
from siyu.schemas.ledger import EMPLOYEE_REMINDER, GROUP
from siyu.schemas.models import insert_or_update
from siyu.tasks.cadence import send_alerts
from siyu.tasks.delivery import MessageContent, SendReport, send_batch
from siyu.tasks.quality import mask_customer_id
from siyu.tasks.rewards import grant_wins

ENTRY_COLUMNS: tuple[str, ...] = ("external_userid", "chat_id", "answer", "time")
WINNER_COLUMNS: list[str] = ["chat_id", "member", "round", "rank", "answered_at"]
ANY_ANSWER = "*"  # an answer key that takes every answer (the join hook: playing is enough)


def empty_entries() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in ENTRY_COLUMNS})
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def read_entries(path: str | Path) -> pd.DataFrame:
    """An entries CSV (external_userid, chat_id, answer, time ISO) as a frame; none if absent."""
    path = Path(path)
    if not path.exists():
        return empty_entries()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [c for c in ENTRY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"entries file {path.name} lacks columns {', '.join(missing)}: the export must have "
            f"{', '.join(ENTRY_COLUMNS)}"
        )
    frame = frame[list(ENTRY_COLUMNS)].copy()
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def members_frame(members: dict[str, Iterable[str]]) -> pd.DataFrame:
    """{chat_id: [external_userid, ...]} as a (chat_id, member) frame."""
    rows = [(chat, m) for chat, ms in members.items() for m in ms]
    return pd.DataFrame(rows, columns=["chat_id", "member"], dtype=object)


def lottery_draw(seed: int, activity_key: str, round_: int, members: pd.Series) -> np.ndarray:
    """A number per member, fixed by (seed, activity, round, member): the lottery's order."""
    head = f"{seed}|{activity_key}|{round_}|"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b((head + m).encode(), digest_size=8).digest(), "big")
         for m in members),
        dtype=np.uint64,
        count=len(members),
    )  # fmt: skip


def valid_entries(
    entries: pd.DataFrame,
    members: pd.DataFrame,
    *,
    opens_at: dt.datetime,
    closes_at: dt.datetime,
) -> pd.DataFrame:
    """Each member's first in-window answer, members of the group only; one group a member.

    Ids are factorized once, sorted, so that the order (time, member id, chat id) and the
    membership test are integer operations over millions of entries.
    """
    in_window = (entries["time"] >= opens_at) & (entries["time"] <= closes_at)
    frame = entries[in_window].rename(columns={"external_userid": "member"})
    n = len(frame)
    if n == 0:
        return frame.reset_index(drop=True)
    member_codes, _ = pd.factorize(
        pd.concat([frame["member"], members["member"]], ignore_index=True), sort=True
    )
    chat_codes, chats = pd.factorize(
        pd.concat([frame["chat_id"], members["chat_id"]], ignore_index=True), sort=True
    )
    width = np.int64(len(chats) + 1)
    pairs = member_codes.astype(np.int64) * width + chat_codes
    known = np.sort(pairs[n:])
    at = np.minimum(np.searchsorted(known, pairs[:n]), max(len(known) - 1, 0))
    is_member = known[at] == pairs[:n] if len(known) else np.zeros(n, dtype=bool)
    entry_member, entry_chat = member_codes[:n], chat_codes[:n]
    times = frame["time"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    candidates = np.flatnonzero(is_member)
    order = candidates[
        np.lexsort((entry_chat[candidates], entry_member[candidates], times[candidates]))
    ]
    # The first row of each member in (time, member, chat) order is their answer.
    _, first = np.unique(entry_member[order], return_index=True)
    return frame.iloc[order[np.sort(first)]].reset_index(drop=True)


def is_correct(answers: pd.Series, key: str) -> pd.Series:
    """Answers matching the key (case and spaces ignored); the key * takes every answer."""
    if key == ANY_ANSWER:
        return pd.Series(True, index=answers.index)
    return answers.astype(str).str.strip().str.lower() == key.strip().lower()


def choose_winners(
    entries: pd.DataFrame,
    members: pd.DataFrame,
    script: ActivityScript,
    *,
    activity_key: str,
    round_: int,
    opens_at: dt.datetime,
    closes_at: dt.datetime,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Winners of one round in every group (WINNER_COLUMNS), and counts (entries, players, correct)."""
    question = script.questions[round_ % len(script.questions)] if script.questions else None
    key = question.answer if question is not None else ANY_ANSWER
    played = valid_entries(entries, members, opens_at=opens_at, closes_at=closes_at)
    right = played[is_correct(played["answer"], key)].copy()
    counts = {"entries": len(entries), "players": len(played), "correct": len(right)}
    if right.empty:
        return pd.DataFrame(columns=WINNER_COLUMNS), counts
    if script.winner_rule == "lottery":
        right["draw"] = lottery_draw(script.seed, activity_key, round_, right["member"])
        order = ["chat_id", "draw", "member"]
    else:  # first_correct and all_players: earliest first, ties by member id
        order = ["chat_id", "time", "member"]
    right = right.sort_values(order, kind="mergesort")
    right["rank"] = right.groupby("chat_id").cumcount() + 1
    limit = len(right) if script.winner_rule == "all_players" else script.winners_per_round
    won = right[right["rank"] <= limit]
    winners = pd.DataFrame(
        {
            "chat_id": won["chat_id"].to_numpy(),
            "member": won["member"].to_numpy(),
            "round": round_,
            "rank": won["rank"].to_numpy(),
            "answered_at": won["time"].to_numpy(),
        }
    )
    return winners.reset_index(drop=True), counts


# -- the winners run: entries of every group -> winners -> reward ledger -> announcement ---------


@dataclass
class WinnersReport:
    """What one winners run did (counts only; winners masked)."""

    activity: str
    groups: int = 0
    entries: int = 0
    players: int = 0
    correct: int = 0
    winners: int = 0
    winners_masked: dict[str, list[str]] = field(default_factory=dict)  # chat -> masked ids
    rewards: dict[str, Any] = field(default_factory=dict)
    announcement: dict[str, Any] = field(default_factory=dict)
    already_announced: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_members(client: WeComClient, chat_ids: Iterable[str]) -> pd.DataFrame:
    """(chat_id, member, join_time) of the customers in each group now (groupchat/get each)."""
    rows = [
        (chat, m.userid, m.join_time)
        for chat in chat_ids
        for m in client.get_group_chat(chat, need_name=False).member_list
        if m.type == 2
    ]
    frame = pd.DataFrame(rows, columns=["chat_id", "member", "join_time"])
    return frame.astype({"chat_id": object, "member": object})


def eligible_members(
    members: pd.DataFrame, script: ActivityScript, asked_at: dt.datetime
) -> pd.DataFrame:
    """The members who may win: all of them, or (the join hook) those who joined lately."""
    if script.joined_within_days is None or "join_time" not in members.columns:
        return members
    since = (asked_at - dt.timedelta(days=script.joined_within_days)).timestamp()
    return members[members["join_time"] >= since]


def run_winners(
    engine: sa.Engine,
    client: WeComClient,
    *,
    library: ActivityLibrary,
    entries: EntriesSource,
    rules: SendRules,
    key: str,
    as_of: dt.datetime,
    members: pd.DataFrame | None = None,
    send: Callable[..., SendReport] = send_batch,
) -> WinnersReport:
    """Choose the winners of activity `key` from its entries, grant their rewards, announce them.

    A rerun chooses the same winners (the rules are deterministic), grants nothing twice and
    sends no second announcement (the ledger holds it). The join hook is paid without an
    announcement, and its daily activity is no game: it counts in no group's participation.
    Alerts the grant queued (budgets) go to ops at the end.
    """
    with Session(engine) as session:
        activity = session.scalar(sa.select(Activity).where(Activity.key == key))
        if activity is None:
            raise LookupError(f"no activity {key!r}: run its slot first (siyu cadence slot)")
        session.expunge(activity)
    script = library.script(activity.script)
    chats = list(activity.chat_ids["chat_ids"])
    report = WinnersReport(activity=key, groups=len(chats))
    if members is None:
        members = group_members(client, chats)
    members = eligible_members(members, script, activity.asked_at)
    window = dt.timedelta(minutes=script.window_minutes)
    all_winners: list[pd.DataFrame] = []
    played_parts: list[pd.DataFrame] = []
    for round_ in range(max(len(script.questions), 1)):
        opens = activity.asked_at + window * round_
        frame = read_entries(entries.path_for(key, round_))
        winners, counts = choose_winners(
            frame, members, script, activity_key=key, round_=round_, opens_at=opens,
            closes_at=opens + window,
        )  # fmt: skip
        report.entries += counts["entries"]
        report.correct += counts["correct"]
        all_winners.append(winners)
        played_parts.append(
            valid_entries(frame, members, opens_at=opens, closes_at=opens + window)[
                ["chat_id", "member"]
            ]
        )
    winners = pd.concat(all_winners, ignore_index=True)
    played = pd.concat(played_parts, ignore_index=True).drop_duplicates()
    report.players = len(played.drop_duplicates("member"))
    report.winners = len(winners)
    report.winners_masked = {
        chat: [mask_customer_id(m) for m in rows["member"]]
        for chat, rows in winners.groupby("chat_id", sort=True)
    }
    day = as_of.astimezone(activity.asked_at.tzinfo or dt.UTC).date()
    size = members.groupby("chat_id").size()
    players = played.groupby("chat_id").size()
    correct = winners.groupby("chat_id").size()
    with Session(engine) as session, session.begin():
        report.rewards = grant_wins(
            session, winners, script, library, rules, activity_key=key, won_at=as_of
        ).as_dict()
        rows = [
            {"activity_key": key, "chat_id": chat, "day": day, "members": int(size.get(chat, 0)),
             "players": int(players.get(chat, 0)), "correct": int(correct.get(chat, 0))}
            for chat in chats
        ]  # fmt: skip
        if rows and script.kind != "join_hook":
            insert = insert_or_update(engine.dialect.name, ActivityParticipation)
            session.execute(insert.on_conflict_do_nothing(), rows)
        report.already_announced = activity.status == ANNOUNCED
        session.execute(
            sa.update(Activity)
            .where(Activity.key == key)
            .values(
                status=ANNOUNCED, entries=report.entries, correct=report.correct,
                winners=report.winners, announced_at=activity.announced_at or as_of,
            )
        )  # fmt: skip
    send_alerts(engine)
    if script.kind == "join_hook":
        return report
    owners = _owners(client, chats)
    wanted, contents = announcement_sends(
        key, activity.cadence, activity.slot, activity.week, owners, report.winners_masked, as_of
    )
    if len(wanted):
        report.announcement = send(
            engine, client, wanted, contents, rules=rules, as_of=as_of,
            playbook=f"cadence:{activity.cadence}", version=script.name,
        ).as_dict()  # fmt: skip
    return report


def _owners(client: WeComClient, chats: list[str]) -> dict[str, str]:
    return {chat: client.get_group_chat(chat, need_name=False).owner for chat in chats}


def announcement_sends(
    key: str,
    cadence: str,
    slot: str,
    week: str,
    owners: dict[str, str],
    winners_masked: dict[str, list[str]],
    as_of: dt.datetime,
) -> tuple[pd.DataFrame, dict[str, MessageContent]]:
    """One reminder per owner: each group's winners (masked) to announce in the group."""
    chats = sorted(owners)
    wanted = pd.DataFrame(
        {
            "target_kind": GROUP,
            "target_id": chats,
            "sender": [owners[c] for c in chats],
            "channel": EMPLOYEE_REMINDER,
            "programme": f"cadence:{cadence}",
            "step": f"{slot}-winners",
            "period": week,
            "wanted_at": as_of,
            "variant": [f"owner:{owners[c]}" for c in chats],
        }
    )
    contents: dict[str, MessageContent] = {}
    for owner in sorted(set(owners.values())):
        lines = [
            f"{chat}：{'、'.join(winners_masked.get(chat, [])) or '本轮无人答对'}"
            for chat in chats
            if owners[chat] == owner
        ]
        contents[f"owner:{owner}"] = MessageContent(
            text=f"活动{key}中奖名单（奖励将自动发放）：\n" + "\n".join(lines),
            instruction="请在各群公布本次活动的中奖名单，发送后无需回复。",
        )
    return wanted, contents
