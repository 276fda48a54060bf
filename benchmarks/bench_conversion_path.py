"""Benchmark the conversion path: enrol a 100,000-customer cohort across 50 managers, run a touch.

Compute only, on a SQLite file in a temp dir (the flows add one Prefect task run per step, the
same for 10 customers or 100,000): choosing entrants and the holdout, writing the cohorts,
reading the members back, picking touch 2's variants from touch 1's ledger rows, planning and
queuing the sends (ledger + outbox in one transaction), and evaluating every goal on the next
export. Prints seconds per phase and the WeCom calls the touch would make (one per sender,
variant and 10,000 customers), which must equal the templates queued.

    python -m benchmarks.bench_conversion_path [--customers 100000] [--managers 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import ConversionPath, ConversionPaths, EntryCondition, EntryRule
from siyu.blocks.send_rules import SendRules
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import CUSTOMER, DELIVERED, Send
from siyu.schemas.models import OutboxEntry
from siyu.tasks.delivery import MASS_API, MAX_SINGLE_TARGETS, MessageContent, queue_plan
from siyu.tasks.journeys import (
    active_customer_ids,
    choose_entrants,
    evaluate_goals,
    read_contacts,
    read_members,
    split_eligible,
    step_status,
    store_cohorts,
    touch2_variants,
    touch_contents,
    uplift,
)
from siyu.tasks.ledger import ledger_counts
from siyu.tasks.quota import plan_sends

ZONE = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 12, 1)  # a Tuesday
FLAGS = ("payroll", "holds_wealth", "holds_fund", "holds_insurance", "holds_loan")


def customers(n: int, managers: int, seed: int = 7) -> pd.DataFrame:
    """n payroll customers without wealth products, spread over `managers` managers."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:010d}" for i in range(n)],
            "userid": [f"m{i % managers:03d}" for i in range(n)],
            "external_userid": [f"wm{i:012d}" for i in range(n)],
            "aum": rng.uniform(0, 180_000, n).round(2),
            "aum_peak": rng.uniform(0, 90_000, n).round(2),
            "holds_credit_card": False,
            "days_since_added": 60,
        }
    )
    for flag in FLAGS:
        frame[flag] = flag == "payroll"
    return frame


def playbooks() -> ConversionPaths:
    """The default paths with everyone matching payroll-wealth (one cohort of n)."""
    block = ConversionPaths()
    paths: list[ConversionPath] = []
    for path in block.paths:
        if path.name != "payroll-wealth":
            path.active = False
        else:
            path.entry = EntryRule(all_of=[EntryCondition(field="payroll", op="is_true")])
        paths.append(path)
    return ConversionPaths(paths=paths, products=block.products)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--managers", type=int, default=50)
    args = parser.parse_args()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        books, rules = playbooks(), SendRules(known_until=dt.date(2027, 12, 31))
        base = customers(args.customers, args.managers)

        start = time.perf_counter()
        with Session(engine) as session, session.begin():
            entrants = choose_entrants(
                base,
                books,
                pd.DataFrame(columns=["customer_id", "tag"]),
                active_customer_ids(session),
                DAY,
            )
            timings["enrol: choose entrants + holdout"] = time.perf_counter() - start
            mid = time.perf_counter()
            (cohort_id,) = store_cohorts(
                session, entrants, books, DAY, export_date=DAY, export_checksum="bench"
            )
            timings["enrol: write cohort + enrollments"] = time.perf_counter() - mid

        # Touch 1 went out yesterday to most: its delivered rows are what touch 2 reads.
        path = books.path("payroll-wealth")
        with Session(engine) as session, session.begin():
            treated = entrants[~entrants["holdout"]]
            delivered = treated.sample(frac=0.8, random_state=1)
            session.execute(
                sa.insert(Send),
                [
                    {
                        "target_kind": CUSTOMER,
                        "target_id": x,
                        "programme": path.programme,
                        "step": "touch-1",
                        "period": DAY.isoformat(),
                        "sender": u,
                        "channel": "mass_template",
                        "priority": 100,
                        "status": DELIVERED,
                        "playbook": path.programme,
                        "playbook_version": path.version(),
                        "planned_at": dt.datetime(2026, 12, 1, 10, tzinfo=ZONE),
                        "delivered_at": dt.datetime(2026, 12, 1, 11, tzinfo=ZONE),
                        "send_day": DAY,
                        "send_month": "2026-12",
                    }
                    for x, u in zip(delivered["external_userid"], delivered["userid"], strict=True)
                ],
            )

        as_of = dt.datetime(2026, 12, 3, 10, 0, tzinfo=ZONE)
        start = time.perf_counter()
        with Session(engine) as session, session.begin():
            members = read_members(session, cohort_id=cohort_id)
            split = split_eligible(
                members,
                read_contacts(session).pipe(
                    lambda c: (
                        c
                        if len(c)
                        else members[["userid", "external_userid"]].assign(
                            reachable=True, left_at=None
                        )
                    )
                ),
                base["customer_id"],
            )
            eligible = split.eligible
            first = step_status(
                session,
                path.programme,
                DAY.isoformat(),
                "touch-1",
                eligible["external_userid"].tolist(),
            )
            variants = touch2_variants(
                eligible["external_userid"].isin(first["target_id"]).to_numpy(),
                np.zeros(len(eligible), dtype=bool),
            )
            timings["touch 2: members, drops, variants"] = time.perf_counter() - start
            wanted = pd.DataFrame(
                {
                    "target_kind": CUSTOMER,
                    "target_id": eligible["external_userid"],
                    "sender": eligible["userid"],
                    "channel": "mass_template",
                    "programme": path.programme,
                    "step": "touch-2",
                    "period": DAY.isoformat(),
                    "wanted_at": pd.Timestamp(as_of),
                    "variant": variants,
                }
            )
            mid = time.perf_counter()
            counts = ledger_counts(session, wanted, as_of=as_of, rules=rules)
            plan = plan_sends(wanted, rules, as_of, counts)
            timings["touch 2: ledger counts + plan"] = time.perf_counter() - mid
            contents = {
                k: MessageContent(text=c.text, attachments=c.attachments)
                for k, c in touch_contents(path, 2, books.products).items()
            }
            mid = time.perf_counter()
            queue_plan(
                session,
                plan,
                lambda _p, _s, _per, v: contents[v],
                playbook=path.programme,
                version=path.version(),
                export_checksum="bench",
            )
            timings["touch 2: reserve + outbox (one transaction)"] = time.perf_counter() - mid
            templates = session.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxEntry)
                .where(OutboxEntry.kind == MASS_API)
            )
        fits = plan.fits.groupby(["sender", "variant"]).size()
        expected = int(sum(-(-n // MAX_SINGLE_TARGETS) for n in fits))

        start = time.perf_counter()
        with Session(engine) as session:
            members = read_members(session, cohort_id=cohort_id)
        export = base.assign(holds_wealth=np.random.default_rng(3).random(len(base)) < 0.1)
        outcomes = evaluate_goals(members, export, books, DAY + dt.timedelta(days=5))
        table = uplift(
            members.assign(converted=members["enrollment_id"].isin(outcomes["enrollment_id"]))[
                ["path", "cohort_month", "holdout", "converted"]
            ]
        )
        timings["goals on the next export + uplift"] = time.perf_counter() - start
        engine.dispose()

    print(f"conversion path, {args.customers:,} customers, {args.managers} managers (SQLite)")
    for name, seconds in timings.items():
        print(f"  {name:<46} {seconds:7.2f} s")
    print(
        f"  members {len(members):,}, holdout {int(members['holdout'].sum()):,}, "
        f"touch 2 fits {len(plan.fits):,}, conversions {len(outcomes):,}"
    )
    print(
        f"  WeCom calls for touch 2: {templates} templates queued, {expected} expected "
        f"(per sender and variant, at most {MAX_SINGLE_TARGETS:,} customers each)"
    )
    print(
        f"  uplift: {table.iloc[0]['uplift']:+.4f} "
        f"[{table.iloc[0]['uplift_low']:+.4f}, {table.iloc[0]['uplift_high']:+.4f}]"
    )
    assert templates == expected


if __name__ == "__main__":
    main()
