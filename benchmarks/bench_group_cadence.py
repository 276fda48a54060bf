"""Benchmark the group cadence: a slot for 10,000 groups of 50 owners, winners from 2 million entries, wins granted.

Runs on a SQLite file in a temp dir with a stand-in WeCom client that answers at once and counts
the calls: the point is siyu's compute and how calls grow (with owners, not groups). Payouts are
not made: their pace is WeChat Pay's limit (1,800 a minute), printed as the time it implies.

    python -m benchmarks.bench_group_cadence [--groups 10000] [--owners 50] [--entries 2000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import ActivityLibrary, CadenceTemplate, ProductCalendar, Promotion
from siyu.blocks.send_rules import SendRules
from siyu.schemas.database import make_engine, upgrade
from siyu.tasks.activities import choose_winners
from siyu.tasks.cadence import run_slot
from siyu.tasks.rewards import grant_wins, queue_due_payouts

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2026, 12, 14, 10, tzinfo=CHINA)
TUESDAY_GAME = dt.datetime(2026, 12, 15, 20, tzinfo=CHINA)


class CountingClient:
    """Answers app messages and mass templates at once; counts every call by API."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def send_app_message(self, touser: Any, *, msgtype: str, content: dict[str, Any]) -> Any:
        self.calls["message/send"] += 1
        return SimpleNamespace(msgid=f"app{self.calls['message/send']}", invalid_users=lambda: [])

    def add_msg_template(self, **kwargs: Any) -> Any:
        self.calls["externalcontact/add_msg_template"] += 1
        return SimpleNamespace(
            msgid=f"mass{self.calls['externalcontact/add_msg_template']}", fail_list=[]
        )


def roster(groups: int, owners: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "chat_id": [f"wr{i:08d}" for i in range(groups)],
            "owner": [f"mgr{i % owners:03d}" for i in range(groups)],
            "name": "",
        }
    )


def bench_slot(engine: Any, groups: int, owners: int) -> None:
    calendar = ProductCalendar(
        promotions=[
            Promotion(id=f"p{i}", title=f"产品{i}", content="内容", start=dt.date(2026, 12, 1),
                      end=dt.date(2026, 12, 31), priority=i)
            for i in range(5)
        ]
    )  # fmt: skip
    client = CountingClient()
    started = time.perf_counter()
    report = run_slot(
        engine, client, template=CadenceTemplate(), calendar=calendar, library=ActivityLibrary(),
        rules=SendRules(), slot_name="mon-post", as_of=MONDAY, roster=roster(groups, owners),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(
        f"slot mon-post: {report.groups} groups of {report.owners} owners in {seconds:.2f} s; "
        f"calls {dict(client.calls)}; ledger {report.sends.get('ledger')}"
    )


def bench_winners(engine: Any, groups: int, entries: int) -> None:
    rng = np.random.default_rng(3)
    per_group = entries // groups
    members_per_group = int(per_group * 1.5)
    chats = np.repeat([f"wr{i:08d}" for i in range(groups)], members_per_group)
    member_ids = np.array([f"wm{i:09d}" for i in range(groups * members_per_group)], dtype=object)
    members = pd.DataFrame({"chat_id": chats, "member": member_ids})
    pick = rng.choice(len(members), size=groups * per_group, replace=False)
    frame = pd.DataFrame(
        {
            "external_userid": member_ids[pick],
            "chat_id": chats[pick],
            "answer": rng.choice(np.array(["a", "b", "c"], dtype=object), size=len(pick)),
            "time": pd.Timestamp(TUESDAY_GAME)
            + pd.to_timedelta(rng.integers(0, 2700, len(pick)), "s"),
        }
    )
    library = ActivityLibrary(programme_month_budget_fen=10**10)
    script = library.script("quiz")
    started = time.perf_counter()
    winners, counts = choose_winners(
        frame, members, script, activity_key="weekly:tue-game:2026-W51", round_=0,
        opens_at=TUESDAY_GAME, closes_at=TUESDAY_GAME + dt.timedelta(minutes=45),
    )  # fmt: skip
    chosen = time.perf_counter() - started
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        granted = grant_wins(session, winners, script, library, SendRules(),
                             activity_key="weekly:tue-game:2026-W51", won_at=TUESDAY_GAME)  # fmt: skip
    granting = time.perf_counter() - started
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        due, queued = queue_due_payouts(session, TUESDAY_GAME + dt.timedelta(hours=1))
    queueing = time.perf_counter() - started
    print(
        f"winners: {counts['entries']:,} entries, {counts['correct']:,} correct -> "
        f"{len(winners):,} winners in {chosen:.2f} s; granted {granted.granted:,} in "
        f"{granting:.2f} s; {queued:,} payouts queued in {queueing:.2f} s; paying them at "
        f"1,800 a minute takes {queued / 1800:.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--entries", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        bench_slot(engine, args.groups, args.owners)
        bench_winners(engine, args.groups, args.entries)
        engine.dispose()


if __name__ == "__main__":
    main()
