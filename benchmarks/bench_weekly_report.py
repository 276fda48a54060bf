"""Benchmark the weekly report at bank scale: 1,000,000 contacts and a month of paths and groups.

Builds a SQLite file in a temp dir: contacts over five weeks across 200 managers, 20 % of the
customers in weekly cohorts of five paths with three touches each (sends with msgids,
confirmations and deliveries), conversions, 5,000 groups' health checks, three activities a
week with participation, and reward wins. Then times each figure of `weekly_figures`, the
charts and the markdown, and prints the rows each query brought back: they must stay bounded
by weeks x managers x paths, not grow with customers.

    python -m benchmarks.bench_weekly_report [--customers 1000000] [--managers 200] [--groups 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.cadence import Activity, ActivityParticipation, GroupHealth, RewardWin
from siyu.schemas.conversion import Cohort, Conversion, Enrollment
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import Send
from siyu.schemas.models import Contact, Export
from siyu.tasks import weekly_report as wr

ZONE = ZoneInfo("Asia/Shanghai")
REPORT_WEEK = dt.date(2026, 11, 23)
MONDAYS = [REPORT_WEEK - dt.timedelta(days=7 * k) for k in range(3, -1, -1)]
PATHS = [("asset-recovery", "资产唤回"), ("payroll-wealth", "代发稳健理财"),
         ("high-asset-invest", "高净值投资"), ("wealth-news", "理财持有资讯"),
         ("new-customer", "新客礼遇")]  # fmt: skip
CHUNK = 50_000


def _insert(session: Session, model: Any, frame: pd.DataFrame) -> None:
    table = model.__table__
    # NaT and NaN become NULL (siyu's timestamp type refuses a naive NaT).
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for start in range(0, len(records), CHUNK):
        session.execute(table.insert(), records[start : start + CHUNK])


def _utc(local: pd.Series) -> list[dt.datetime | None]:
    utc = local.dt.tz_convert("UTC").dt.floor("us")
    return [None if pd.isna(t) else t.to_pydatetime() for t in utc]


def build(session: Session, customers: int, managers: int, groups: int, seed: int = 7) -> dict:
    """The month's records, inserted in bulk; returns the row counts per table."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-10-26 09:00", tz=ZONE)
    span = pd.Timedelta(days=35).total_seconds()
    added = start + pd.to_timedelta(rng.uniform(0, span, customers), unit="s")
    left = pd.Series(added + pd.Timedelta(days=3)).where(rng.random(customers) < 0.03)
    contacts = pd.DataFrame(
        {
            "userid": [f"m{i % managers:03d}" for i in range(customers)],
            "external_userid": [f"wm{i:010d}" for i in range(customers)],
            "customer_id": [f"C{i:010d}" if i % 10 else None for i in range(customers)],
            "added_at": _utc(pd.Series(added)),
            "left_at": _utc(left),
            "reachable": True,
            "seen_at": _utc(pd.Series(added)),
        }
    )
    _insert(session, Contact, contacts)
    _insert(
        session,
        Export,
        pd.DataFrame(
            {
                "file_name": [f"core_{d:%Y%m%d}.csv" for d in pd.date_range("2026-10-31", periods=31)],
                "checksum": [f"{i:064d}" for i in range(31)],
                "export_date": [d.date() for d in pd.date_range("2026-10-31", periods=31)],
                "status": "synced",
                "report": [{"pairs_changed": 900, "tags_added": 1200, "tags_removed": 300}] * 31,
                "created_at": dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
            }
        ),
    )  # fmt: skip

    members = contacts[contacts["customer_id"].notna()].sample(frac=0.2, random_state=seed)
    members = members.reset_index(drop=True)
    cohort_rows, keys = [], []
    for k, monday in enumerate(MONDAYS):
        for p, (path, title) in enumerate(PATHS):
            cohort_rows.append(
                {"id": len(cohort_rows) + 1, "path": path, "title": title, "cohort_day": monday,
                 "cohort_month": f"{monday:%Y-%m}", "path_version": "v1", "members": 0,
                 "holdout": 0, "created_at": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}
            )  # fmt: skip
            keys.append((k, p))
    _insert(session, Cohort, pd.DataFrame(cohort_rows))
    members["cohort_id"] = rng.integers(1, len(cohort_rows) + 1, len(members))
    members["holdout"] = rng.random(len(members)) < 0.1
    converted = rng.random(len(members)) < np.where(members["holdout"], 0.1, 0.3)
    cohort_day = members["cohort_id"].map({c["id"]: c["cohort_day"] for c in cohort_rows})
    offsets = pd.to_timedelta(rng.integers(1, 14, len(members)), unit="D")
    converted_on = (pd.to_datetime(cohort_day) + offsets).dt.date
    members["id"] = np.arange(1, len(members) + 1)
    _insert(
        session,
        Enrollment,
        pd.DataFrame(
            {
                "id": members["id"], "cohort_id": members["cohort_id"],
                "customer_id": members["customer_id"], "userid": members["userid"],
                "external_userid": members["external_userid"], "holdout": members["holdout"],
                "status": np.where(converted, "converted", "active"),
                "base_export_date": cohort_day, "base_aum": rng.uniform(0, 500_000, len(members)),
                "entered_on": cohort_day,
            }
        ),
    )  # fmt: skip
    won = members[converted]
    touch = rng.integers(0, 4, len(won))
    _insert(
        session,
        Conversion,
        pd.DataFrame(
            {
                "enrollment_id": won["id"], "cohort_id": won["cohort_id"],
                "converted_on": converted_on[converted],
                "attributed_touch": [None if t == 0 or h else int(t) for t, h in zip(touch, won["holdout"], strict=True)],
                "holdout": won["holdout"],
            }
        ),
    )  # fmt: skip

    treated = members[~members["holdout"]]
    sends = []
    for t in (1, 2, 3):
        day = treated["cohort_id"].map({c["id"]: c["cohort_day"] for c in cohort_rows})
        day = pd.to_datetime(day) + pd.Timedelta(days=2 * (t - 1))
        created = (day + pd.Timedelta(hours=10)).dt.tz_localize(ZONE)
        lag = pd.to_timedelta(10 + (treated["userid"].str[1:].astype(int) % 5) * 60, unit="m")
        status = rng.choice(["delivered", "failed", "skipped", "created"], len(treated),
                            p=[0.75, 0.05, 0.1, 0.1])  # fmt: skip
        confirmed = (created + lag).where(np.isin(status, ["delivered", "failed"]))
        sends.append(
            pd.DataFrame(
                {
                    "target_kind": "customer", "target_id": treated["external_userid"],
                    "programme": "path:" + treated["cohort_id"].astype(str),
                    "step": f"touch-{t}", "period": day.dt.strftime("%Y-%m-%d"),
                    "sender": treated["userid"], "channel": "mass_template", "status": status,
                    "playbook": "paths", "playbook_version": "v1",
                    "msgid": np.where(status == "skipped", None,
                                      "msg-" + treated["cohort_id"].astype(str) + f"-{t}-" + treated["userid"]),
                    "planned_at": _utc(created), "created_at": _utc(created.where(status != "skipped")),
                    "confirmed_at": _utc(confirmed),
                    "delivered_at": _utc(confirmed.where(status == "delivered")),
                    "settled_at": _utc(confirmed.where(np.isin(status, ["delivered", "failed"]))),
                    "send_day": day.dt.date, "send_month": day.dt.strftime("%Y-%m"),
                }
            )
        )  # fmt: skip
    send_frame = pd.concat(sends, ignore_index=True)
    _insert(session, Send, send_frame)

    chats = [f"wrBench{g:06d}" for g in range(groups)]
    days = [d.date() for d in pd.date_range("2026-10-26", "2026-11-29", freq="3D")]
    health = pd.DataFrame(
        [(c, f"m{g % managers:03d}", d) for g, c in enumerate(chats) for d in days],
        columns=["chat_id", "owner", "day"],
    )
    health["members"] = rng.integers(0, 300, len(health))
    health["joins_week"] = rng.integers(0, 10, len(health))
    health["leaves_week"] = rng.integers(0, 10, len(health))
    health["participation"] = rng.uniform(0, 0.6, len(health))
    health["dying"] = health["participation"] < 0.1
    _insert(session, GroupHealth, health)

    activities, participation, wins = [], [], []
    for monday in [dt.date(2026, 10, 26), *MONDAYS]:
        week = wr.iso_week(monday)
        for slot, script, weekday in (("tue-game", "quiz", 1), ("thu-game", "dice", 3),
                                      ("fri-big", "friday-qa", 4)):  # fmt: skip
            key = f"weekly:{slot}:{week}"
            asked = dt.datetime.combine(monday + dt.timedelta(days=weekday), dt.time(20), ZONE)
            activities.append(
                {"key": key, "cadence": "weekly", "slot": slot, "week": week, "script": script,
                 "chat_ids": {"chat_ids": []}, "asked_at": asked, "announce_at": asked,
                 "status": "announced", "created_at": asked}
            )  # fmt: skip
            members_in = rng.integers(50, 300, groups)
            players = (members_in * rng.uniform(0, 0.6, groups)).astype(int)
            participation.append(
                pd.DataFrame({"activity_key": key, "chat_id": chats, "day": asked.date(),
                              "members": members_in, "players": players, "correct": players // 2})
            )  # fmt: skip
            for r in range(2):
                wins.append(
                    pd.DataFrame({
                        "activity_key": key, "round": r, "member": [f"wm{g:010d}" for g in range(groups)],
                        "chat_id": chats, "script": script, "amount_fen": 500,
                        "billno": [f"R{key}{r}{g}"[-28:] for g in range(groups)],
                        "status": rng.choice(["paid", "granted", "over_budget", "failed"], groups,
                                             p=[0.7, 0.2, 0.05, 0.05]),
                        "week": week, "month": f"{asked:%Y-%m}", "won_at": asked,
                        "pay_due": asked.date(),
                    })
                )  # fmt: skip
    _insert(session, Activity, pd.DataFrame(activities))
    _insert(session, ActivityParticipation, pd.concat(participation, ignore_index=True))
    win_frame = pd.concat(wins, ignore_index=True)
    win_frame["billno"] = [f"R{i:027d}" for i in range(len(win_frame))]
    _insert(session, RewardWin, win_frame)
    session.commit()
    return {
        "contacts": len(contacts), "enrollments": len(members), "conversions": int(converted.sum()),
        "sends": len(send_frame), "group_health": len(health),
        "participation": sum(len(p) for p in participation), "reward_wins": len(win_frame),
    }  # fmt: skip


def _timed(name: str, fn: Callable[[], Any], out: dict) -> Any:
    began = time.perf_counter()
    value = fn()
    out[name] = round(time.perf_counter() - began, 3)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--managers", type=int, default=200)
    parser.add_argument("--groups", type=int, default=5_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        url = f"sqlite:///{Path(work) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        began = time.perf_counter()
        with Session(engine) as session:
            counts = build(session, args.customers, args.managers, args.groups)
        print(f"built in {time.perf_counter() - began:.1f} s: {counts}")
        seconds: dict[str, float] = {}
        weeks = wr.report_weeks(REPORT_WEEK, 4)
        budget = wr.RewardBudget(20_000, 5_000_000)
        with Session(engine) as session:
            aum_now = pd.DataFrame(
                session.execute(sa.select(Enrollment.customer_id, Enrollment.base_aum)).all(),
                columns=["customer_id", "aum"],
            )
            rows = {}
            for name, fn in (
                ("customers", lambda: wr.customer_figures(session, weeks)),
                ("tags", lambda: wr.tag_figures(session, weeks)),
                ("touches", lambda: wr.touch_figures(session, weeks)),
                ("conversions", lambda: wr.conversion_figures(session, weeks)),
                ("uplift", lambda: wr.uplift_figures(session, weeks)),
                ("aum", lambda: wr.aum_figures(session, weeks, aum_now)),
                ("groups", lambda: wr.group_figures(session, weeks)),
                ("participation", lambda: wr.participation_figures(session, weeks)),
                ("rewards", lambda: wr.reward_figures(session, weeks, budget)),
            ):
                rows[name] = len(_timed(name, fn, seconds))
            figures = _timed(
                "weekly_figures (all)",
                lambda: wr.weekly_figures(session, REPORT_WEEK, 4, aum_now=aum_now, budget=budget),
                seconds,
            )
        charts = _timed("render_charts", lambda: wr.render_charts(figures), seconds)
        markdown = _timed("report_markdown", lambda: wr.report_markdown(figures, charts), seconds)
        engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("rows per figure:", rows)
    print("seconds:", seconds)
    print(f"charts: {len(charts)}, largest PNG {max(len(c) for c in charts.values()):,} bytes; "
          f"markdown {len(markdown):,} characters; peak RSS {peak_mb:,.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
