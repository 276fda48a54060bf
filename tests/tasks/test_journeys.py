"""The conversion path's set logic: entry, holdout, due times, variants, goals, attribution, uplift."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from siyu.blocks.conversion_paths import (
    DEFAULT_PATHS,
    ConversionPaths,
    Goal,
    GoalCondition,
)
from siyu.blocks.send_rules import SendRules
from siyu.tasks.journeys import (
    attribute,
    choose_entrants,
    difference_interval,
    evaluate_goals,
    flow_run_name,
    holdout_mask,
    product_variants,
    split_eligible,
    touch2_variants,
    touch_due_times,
    uplift,
)

ZONE = ZoneInfo("Asia/Shanghai")
NO_TAGS = pd.DataFrame({"customer_id": [], "tag": []})


def _customers(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(n)],
            "userid": "m1",
            "external_userid": [f"wm{i}" for i in range(n)],
            "aum": [1_000.0, 300_000.0, 30_000.0, 80_000.0][:n],
            "aum_peak": [1_000.0, 300_000.0, 150_000.0, 90_000.0][:n],
            "payroll": [False, True, True, True][:n],
            "holds_wealth": [False, False, False, True][:n],
            "holds_fund": False,
            "holds_insurance": False,
            "holds_loan": False,
            "holds_credit_card": False,
            "days_since_added": [30, 30, 30, 30][:n],
        }
    )


def _path(name: str):
    return next(p for p in DEFAULT_PATHS if p.name == name)


def test_a_customer_enters_the_highest_priority_path_it_matches_and_only_when_in_none() -> None:
    playbooks = ConversionPaths()
    customers = _customers()
    entrants = choose_entrants(
        customers, playbooks, NO_TAGS, pd.Series(["C000003"]), dt.date(2026, 12, 1)
    )
    chosen = dict(zip(entrants["customer_id"], entrants["path"], strict=True))
    # C000002 matches asset-recovery (peak 150k, 30k now) and payroll-wealth: recovery is higher.
    assert chosen["C000002"] == "asset-recovery"
    assert chosen["C000001"] == "payroll-wealth"
    assert "C000000" not in chosen  # matches nothing
    assert "C000003" not in chosen  # already in a path


def test_an_entry_rule_over_a_tag() -> None:
    playbooks = ConversionPaths()
    path = playbooks.paths[0]
    path.entry.all_of[0].field = None
    path.entry.all_of[0].tag = "历史资产10万以上"
    path.entry.all_of = path.entry.all_of[:1]
    tags = pd.DataFrame({"customer_id": ["C000000"], "tag": ["历史资产10万以上"]})
    entrants = choose_entrants(
        _customers(), playbooks, tags, pd.Series([], dtype=object), dt.date(2026, 12, 1)
    )
    assert entrants.loc[entrants["path"] == path.name, "customer_id"].tolist() == ["C000000"]


def test_the_holdout_is_stable_and_about_its_share() -> None:
    ids = pd.Series([f"C{i:08d}" for i in range(20_000)])
    first = holdout_mask(ids, "payroll-wealth", "2026-12", 0.10)
    again = holdout_mask(ids.iloc[::-1].reset_index(drop=True), "payroll-wealth", "2026-12", 0.10)
    assert np.array_equal(first, again[::-1])
    assert 0.09 < first.mean() < 0.11
    other_month = holdout_mask(ids, "payroll-wealth", "2027-01", 0.10)
    assert not np.array_equal(first, other_month)


def test_touches_fall_in_the_window_on_working_days_and_skip_holidays() -> None:
    rules = SendRules(holidays=[dt.date(2026, 12, 10)], known_until=dt.date(2027, 12, 31))
    path = _path("payroll-wealth")
    # Tuesday 2026-12-01, enrolled at 07:30 before the window opens.
    due = touch_due_times(
        path, dt.date(2026, 12, 1), rules, dt.datetime(2026, 12, 1, 7, 30, tzinfo=ZONE)
    )
    local = [d.astimezone(ZONE) for d in due]
    assert [d.date() for d in local] == [
        dt.date(2026, 12, 1),
        dt.date(2026, 12, 3),
        dt.date(2026, 12, 11),  # day 9 is the 10th, a holiday
        dt.date(2026, 12, 21),
    ]
    assert all(d.time() == dt.time(10, 0) for d in local)


def test_touch_one_after_the_window_closed_moves_to_the_next_working_day() -> None:
    rules = SendRules(known_until=dt.date(2027, 12, 31))
    due = touch_due_times(
        _path("new-customer"),
        dt.date(2026, 12, 4),  # a Friday
        rules,
        dt.datetime(2026, 12, 4, 14, 0, tzinfo=ZONE),
    )
    assert due[0].astimezone(ZONE) == dt.datetime(2026, 12, 7, 10, 0, tzinfo=ZONE)
    inside = dt.datetime(2026, 12, 4, 10, 40, tzinfo=ZONE)
    due = touch_due_times(_path("new-customer"), dt.date(2026, 12, 4), rules, inside)
    assert due[0] == inside


def test_the_flow_run_name_reads_for_ops() -> None:
    assert (
        flow_run_name(_path("payroll-wealth"), dt.date(2026, 12, 1), 2)
        == "代发稳健理财 · 2026-12-01 cohort · touch 2"
    )


def test_touch_two_follows_touch_one() -> None:
    delivered = np.array([False, True, True, False])
    interested = np.array([True, True, False, False])
    assert touch2_variants(delivered, interested).tolist() == [
        "repeat",
        "detailed_plan",
        "follow_up",
        "repeat",
    ]


def test_touches_three_and_four_offer_other_fitting_products() -> None:
    playbooks = ConversionPaths()
    members = _customers()
    tags = pd.DataFrame(
        {"customer_id": ["C000001", "C000001"], "tag": ["代发工资客户", "资产20万-100万"]}
    )
    day = dt.date(2026, 12, 10)
    third = product_variants(members, tags, playbooks.products, day)
    assert third[1] == "product:stable-wealth"
    assert third[0] == "product:credit-card"  # no tag: the product for everyone
    fourth = product_variants(members, tags, playbooks.products, day, avoid=pd.Series(third))
    assert fourth[1] == "product:fund-portfolio"
    assert fourth[0] == "general"  # nothing else fits


def _members(**columns) -> pd.DataFrame:
    base = {
        "enrollment_id": [1, 2, 3],
        "customer_id": ["C1", "C2", "C3"],
        "path": "new-customer",
        "entered_on": dt.date(2026, 12, 1),
        "base_export_date": "2026-12-01",
        "base_aum": 0.0,
        "base_holds_wealth": False,
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_end_when_all_conditions_hold() -> None:
    """A goal of two conditions ends the path only when both hold, never on one of them."""
    playbooks = ConversionPaths()
    path = playbooks.path("new-customer")
    path.goal = Goal(
        conditions=[
            GoalCondition(kind="turns_true", field="holds_wealth"),
            GoalCondition(kind="rises_by_amount", field="aum", value=10_000),
        ]
    )
    export = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "holds_wealth": [True, True, False],  # C2 buys but adds no assets; C3 the reverse
            "aum": [20_000.0, 500.0, 50_000.0],
        }
    )
    outcomes = evaluate_goals(_members(), export, playbooks, dt.date(2026, 12, 5))
    assert outcomes.to_dict("records") == [{"enrollment_id": 1, "outcome": "converted"}]


def test_the_entry_export_never_converts_and_the_window_expires() -> None:
    playbooks = ConversionPaths()
    export = pd.DataFrame(
        {"customer_id": ["C1", "C2", "C3"], "holds_wealth": True, "aum": 50_000.0}
    )
    same_day = evaluate_goals(_members(), export, playbooks, dt.date(2026, 12, 1))
    assert same_day.empty
    late = evaluate_goals(
        _members(), export.assign(holds_wealth=False), playbooks, dt.date(2027, 1, 10)
    )
    assert set(late["outcome"]) == {"expired"}


def test_conversion_is_attributed_to_the_last_touch_delivered_before_it() -> None:
    conversions = pd.DataFrame(
        {
            "external_userid": ["wm1", "wm2", "wm3"],
            "programme": "path:p",
            "period": "2026-12-01",
            "converted_on": [dt.date(2026, 12, 4), dt.date(2026, 12, 15), dt.date(2026, 12, 2)],
        }
    )
    delivered = pd.DataFrame(
        {
            "target_id": ["wm1", "wm1", "wm2", "wm2", "wm2"],
            "programme": "path:p",
            "period": "2026-12-01",
            "step": ["touch-1", "touch-2", "touch-1", "touch-2", "touch-3"],
            "delivered_on": [
                dt.date(2026, 12, 1),
                dt.date(2026, 12, 7),  # after wm1's conversion: not its cause
                dt.date(2026, 12, 1),
                dt.date(2026, 12, 3),
                dt.date(2026, 12, 11),
            ],
        }
    )
    assert attribute(conversions, delivered).tolist() == [1, 3, pd.NA]


def test_dropped_members_are_counted_by_reason() -> None:
    members = pd.DataFrame(
        {
            "enrollment_id": [1, 2, 3, 4, 5],
            "customer_id": ["C1", "C2", "C3", "C4", "C5"],
            "userid": "m1",
            "external_userid": ["w1", "w2", "w3", "w4", "w5"],
            "holdout": [False, False, False, False, True],
            "status": ["active", "converted", "active", "active", "active"],
        }
    )
    contacts = pd.DataFrame(
        {
            "userid": "m1",
            "external_userid": ["w1", "w2", "w3", "w4", "w5"],
            "reachable": [True, True, False, True, True],
            "left_at": [None, None, None, None, None],
        }
    )
    split = split_eligible(members, contacts, pd.Series(["C1", "C2", "C3", "C5"]))
    assert split.eligible["customer_id"].tolist() == ["C1"]
    assert split.dropped == {"converted": 1, "closed": 0, "unreachable": 1, "left": 1}
    assert split.holdout == 1


def test_uplift_has_a_95_percent_interval_around_the_difference() -> None:
    members = pd.DataFrame(
        {
            "path": "p",
            "cohort_month": "2026-12",
            "holdout": [False] * 900 + [True] * 100,
            "converted": [True] * 180 + [False] * 720 + [True] * 10 + [False] * 90,
        }
    )
    table = uplift(members)
    row = table.iloc[0]
    assert (row.treated, row.treated_converted, row.holdout, row.holdout_converted) == (
        900,
        180,
        100,
        10,
    )
    assert abs(row.uplift - 0.10) < 1e-9
    assert row.uplift_low < 0.10 < row.uplift_high
    assert row.uplift_low > 0  # 20 % against 10 % on these counts is clear of zero
    assert difference_interval(1, 1, 0, 0) is None


def test_the_funnel_counts_each_touch_and_the_conversions_it_earned() -> None:
    from siyu.tasks.journeys import FUNNEL_COLUMNS, funnel_markdown, touch_funnel

    reports = {
        1: {
            "eligible": 5,
            "dropped": {"converted": 0, "unreachable": 0, "left": 0},
            "holdout": 1,
            "plan": {"fits": 4, "deferred": 0, "skipped": 1, "skipped:month_cap": 1},
        },
        2: {
            "eligible": 3,
            "dropped": {"converted": 1, "unreachable": 1, "left": 0},
            "holdout": 1,
            "plan": {"fits": 2, "deferred": 1, "deferred:day_cap": 1},
        },
    }
    t = pd.Timestamp("2026-12-01T02:00Z")
    sends = pd.DataFrame(
        [
            ("touch-1", "delivered", None, t, None),  # the result came before the confirmation
            ("touch-1", "delivered", None, t, t),
            ("touch-1", "confirmed", None, t, t),
            ("touch-1", "failed", "expired", t, None),
            ("touch-1", "skipped", "month_cap", None, None),
            ("touch-2", "created", None, t, None),
            ("touch-2", "delivered", None, t, t),
            ("touch-2", "deferred", "day_cap", None, None),
        ],
        columns=["step", "status", "reason", "created_at", "confirmed_at"],
    )
    attributed = pd.Series([1, 1, 2, None], dtype="Float64")
    funnel = touch_funnel(reports, sends, attributed).set_index("touch")
    assert list(funnel.reset_index().columns) == FUNNEL_COLUMNS
    one, two, three = funnel.loc["1"], funnel.loc["2"], funnel.loc["3"]
    assert (one["eligible"], one["holdout"], one["planned"]) == (5, 1, 4)
    assert (one["created"], one["confirmed"], one["delivered"]) == (4, 3, 2)
    assert one["skipped"] == "1 (month_cap 1)"
    assert one["failed"] == "1 (expired 1)"
    assert one["conversions"] == 2
    assert (two["dropped converted"], two["dropped unreachable"]) == (1, 1)
    assert (two["created"], two["confirmed"], two["delivered"]) == (2, 1, 1)
    assert two["deferred"] == "1 (day_cap 1)"
    assert two["conversions"] == 1
    # A touch that has not run shows no eligibility, and nothing in the ledger.
    assert pd.isna(three["eligible"]) and three["delivered"] == 0 and three["conversions"] == 0
    assert funnel.loc["no touch delivered", "conversions"] == 1
    table = funnel_markdown(funnel.reset_index())
    assert "| 1 | 5 | 0 | 0 | 0 | 1 | 4 |" in table
    assert "| 3 | – |" in table


def test_a_paused_plan_skips_what_would_go_and_keeps_the_planners_own_skips() -> None:
    from siyu.schemas.ledger import SKIPPED
    from siyu.tasks.journeys import PAUSED_BY_OPS, paused_plan
    from siyu.tasks.quota import LedgerCounts, plan_sends

    rules = SendRules()
    as_of = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)
    wanted = pd.DataFrame(
        {
            "target_kind": "customer",
            "target_id": ["wm1", "wm2", "wm3"],
            "sender": "m1",
            "channel": "mass_template",
            "programme": "path:payroll-wealth",
            "step": "touch-1",
            "period": "2026-12-01",
            # wm3's touch is wanted tomorrow: deferred, not due.
            "wanted_at": [pd.Timestamp(as_of)] * 2 + [pd.Timestamp(as_of + dt.timedelta(days=1))],
        }
    )
    existing = pd.DataFrame(
        [("customer", "wm2", "path:payroll-wealth", "touch-1", "2026-12-01", 7, "delivered")],
        columns=["target_kind", "target_id", "programme", "step", "period", "ledger_id", "status"],
    )
    counts = LedgerCounts(
        month=LedgerCounts.empty().month, day=LedgerCounts.empty().day, existing=existing
    )
    plan = plan_sends(wanted, rules, as_of, counts)
    assert len(plan.fits) == 1 and len(plan.deferred) == 1
    paused = paused_plan(plan)
    assert paused.fits.empty and paused.deferred.empty
    reasons = paused.skipped.set_index("target_id")["reason"].to_dict()
    assert reasons == {"wm1": PAUSED_BY_OPS, "wm2": "already_planned", "wm3": PAUSED_BY_OPS}
    assert (paused.skipped["status"] == SKIPPED).all()
    assert paused.summary()["skipped:" + PAUSED_BY_OPS] == 2


def test_members_dropped_earlier_count_by_their_reason_not_as_closed() -> None:
    members = pd.DataFrame(
        {
            "enrollment_id": [1, 2, 3, 4],
            "customer_id": ["C1", "C2", "C3", "C4"],
            "userid": "m1",
            "external_userid": ["w1", "w2", "w3", "w4"],
            "holdout": False,
            "status": ["active", "dropped", "dropped", "expired"],
            "exit_reason": [None, "unreachable", "left", "expired"],
        }
    )
    contacts = pd.DataFrame(
        {
            "userid": "m1",
            "external_userid": ["w1", "w2", "w3", "w4"],
            "reachable": [True, False, True, True],
            "left_at": [None, None, None, None],
        }
    )
    split = split_eligible(members, contacts, pd.Series(["C1", "C2", "C4"]))
    assert split.eligible["customer_id"].tolist() == ["C1"]
    assert split.dropped == {"converted": 0, "closed": 1, "unreachable": 1, "left": 1}
