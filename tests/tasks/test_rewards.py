"""The reward ledger: budgets before a win, bill numbers made once, payouts paid once across crashes."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import ActivityLibrary, EntriesSource, PayoutAccount
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.blocks.wecom_pay import PayClient
from siyu.schemas.cadence import GRANTED, GROUP_WEEK, OVER_BUDGET, PAID, PROGRAMME_MONTH, RewardWin
from siyu.schemas.models import OutboxEntry
from siyu.tasks.activities import choose_winners, members_frame, run_winners
from siyu.tasks.cadence import ALERT_BATCH, open_activity
from siyu.tasks.rewards import bill_number, budget_check, grant_wins, settle_rewards
from tests.fixtures.sandbox import SEED_CHAT_IDS

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2026, 12, 14, 20, 30, tzinfo=CHINA)


def winners_of(chat: str, members: list[str], round_: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {"chat_id": chat, "member": members, "round": round_, "rank": range(1, len(members) + 1)}
    )


def test_a_bill_number_is_fixed_by_the_win_and_fits_wechat_pay():
    number = bill_number("weekly:tue-game:2026-W50", 0, "wmA")
    assert number == bill_number("weekly:tue-game:2026-W50", 0, "wmA")
    assert number != bill_number("weekly:tue-game:2026-W50", 1, "wmA")
    assert len(number) == 28 and number.isalnum()


def test_budgets_stop_wins_per_group_week_then_per_programme_month():
    wins = pd.DataFrame({"chat_id": ["a", "a", "a", "b", "b"], "amount_fen": [500] * 5})
    reason = budget_check(
        wins,
        group_spent=pd.Series({"a": 500}),
        month_spent=0,
        group_week_budget=1500,
        month_budget=1800,
    )
    assert reason.tolist() == [None, None, GROUP_WEEK, None, PROGRAMME_MONTH]


def test_grant_records_over_budget_unpaid_and_a_rerun_changes_nothing(engine):
    library = ActivityLibrary(group_week_budget_fen=1000)
    script = library.script("quiz")
    winners = winners_of("wrA", ["wm1", "wm2", "wm3"])
    with Session(engine) as session, session.begin():
        report = grant_wins(
            session, winners, script, library, SendRules(), activity_key="k:1", won_at=MONDAY
        )
    assert (report.granted, report.over_budget) == (2, {GROUP_WEEK: 1})
    with Session(engine) as session, session.begin():
        again = grant_wins(
            session, winners, script, library, SendRules(), activity_key="k:1", won_at=MONDAY
        )
    assert (again.granted, again.already) == (0, 3)
    with Session(engine) as session:
        rows = session.scalars(sa.select(RewardWin).order_by(RewardWin.member)).all()
    assert [r.status for r in rows] == [GRANTED, GRANTED, OVER_BUDGET]
    assert rows[2].reason == GROUP_WEEK
    assert {r.billno for r in rows} == {bill_number("k:1", 0, m) for m in ("wm1", "wm2", "wm3")}


def _pay(sandbox) -> tuple[PayClient, WeComClient]:
    account = PayoutAccount(pay_base_url=sandbox.pay_base, wxappid=sandbox.corp_id)
    return PayClient(account), WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)


def _members(sandbox, chat: str) -> list[str]:
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    return [m.userid for m in client.get_group_chat(chat).member_list if m.type == 2]


def test_the_join_hook_pays_players_once_five_working_days_later_a_holiday_moves_it(
    engine, sandbox, seed_dir
):
    sandbox.seed(seed_dir)
    chat = SEED_CHAT_IDS[0]
    members = _members(sandbox, chat)
    played, idle = members[:3], members[3:]
    assert idle, "the seed chat needs members who did not play"
    library = ActivityLibrary()
    script = library.script("join-hook")
    entries = pd.DataFrame(
        {
            "external_userid": played,
            "chat_id": chat,
            "answer": "5",
            "time": pd.Timestamp(MONDAY).tz_convert("UTC"),
        }
    )
    winners, counts = choose_winners(
        entries,
        members_frame({chat: members}),
        script,
        activity_key="hook:2026-W51",
        round_=0,
        opens_at=MONDAY - dt.timedelta(hours=1),
        closes_at=MONDAY + dt.timedelta(hours=1),
    )
    assert sorted(winners["member"]) == sorted(played) and counts["players"] == 3
    # Wednesday 16 December is a bank holiday: five working days from Monday end on Tuesday 22.
    rules = SendRules(holidays=[dt.date(2026, 12, 16)])
    with Session(engine) as session, session.begin():
        grant_wins(
            session, winners, script, library, rules, activity_key="hook:2026-W51", won_at=MONDAY
        )
    pay, wecom = _pay(sandbox)
    monday_21 = dt.datetime(2026, 12, 21, 10, tzinfo=CHINA)
    assert settle_rewards(engine, pay, wecom.convert_to_openid, as_of=monday_21).paid == 0
    tuesday_22 = monday_21 + dt.timedelta(days=1)
    report = settle_rewards(engine, pay, wecom.convert_to_openid, as_of=tuesday_22)
    assert (report.paid, report.paid_fen) == (3, 1500)
    assert settle_rewards(engine, pay, wecom.convert_to_openid, as_of=tuesday_22).paid == 0
    paid_to = sorted(p["external_userid"] for p in sandbox.payouts())
    assert paid_to == sorted(played)  # idle members get nothing, players once each


def test_a_lost_payout_reply_is_reconciled_never_paid_twice(engine, sandbox, seed_dir):
    sandbox.seed(seed_dir)
    chat = SEED_CHAT_IDS[0]
    members = _members(sandbox, chat)[:4]
    library = ActivityLibrary()
    with Session(engine) as session, session.begin():
        grant_wins(session, winners_of(chat, members), library.script("quiz"), library, SendRules(),
                   activity_key="k:lost", won_at=MONDAY)  # fmt: skip
    sandbox.fault(
        api="mmpaymkttransfers/sendworkwxredpack", drop_connection=True, after_effect=True, times=1
    )
    pay, wecom = _pay(sandbox)
    report = settle_rewards(
        engine, pay, wecom.convert_to_openid, as_of=MONDAY, in_flight_seconds=0.2
    )
    assert report.paid == 4 and report.reconciled == 1
    assert len(sandbox.payouts()) == 4


KILLER = textwrap.dedent(
    """
    import datetime as dt, os, signal, sys
    from siyu.blocks.group_cadence import PayoutAccount
    from siyu.blocks.wecom import WeComClient
    from siyu.blocks.wecom_pay import PayClient
    from siyu.schemas.database import make_engine
    from siyu.tasks.rewards import settle_rewards

    url, api_base, pay_base, corp, secret, kill_after, as_of = sys.argv[1:]
    calls = []
    original = PayClient.send_redpack

    def send_then_die(self, **kwargs):
        paid = original(self, **kwargs)
        calls.append(1)
        if len(calls) == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # the payout is made, its outcome never recorded
        return paid

    PayClient.send_redpack = send_then_die
    pay = PayClient(PayoutAccount(pay_base_url=pay_base, wxappid=corp))
    wecom = WeComClient(api_base, corp, secret)
    as_of = dt.datetime.fromisoformat(as_of)
    settle_rewards(make_engine(url), pay, wecom.convert_to_openid, as_of=as_of)
    """
)


def test_every_winner_is_paid_once_across_a_kill_9_in_the_middle_of_a_settlement(
    engine, database_url, sandbox, seed_dir, tmp_path
):
    sandbox.seed(seed_dir)
    chats = {chat: _members(sandbox, chat) for chat in SEED_CHAT_IDS}
    library = ActivityLibrary()
    with Session(engine) as session, session.begin():
        for chat, members in chats.items():
            grant_wins(session, winners_of(chat, members), library.script("quiz"), library,
                       SendRules(), activity_key="k:kill", won_at=MONDAY)  # fmt: skip
    # A member of both groups wins once a round.
    wins = len({m for members in chats.values() for m in members})
    script = tmp_path / "settle_and_die.py"
    script.write_text(KILLER)
    done = subprocess.run(
        [sys.executable, str(script), database_url, sandbox.api_base, sandbox.pay_base,
         sandbox.corp_id, sandbox.secret, "5", "2026-12-14T21:00:00+08:00"],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(sandbox.payouts()) == 5
    pay, wecom = _pay(sandbox)
    as_of = dt.datetime(2026, 12, 14, 21, 5, tzinfo=CHINA)
    report = settle_rewards(engine, pay, wecom.convert_to_openid, as_of=as_of, in_flight_seconds=0)
    assert report.reconciled == 1  # the payout the kill left unrecorded is found, not repeated
    payouts = sandbox.payouts()
    assert len(payouts) == wins == len({p["mch_billno"] for p in payouts})
    with Session(engine) as session:
        statuses = session.scalars(sa.select(RewardWin.status)).all()
    assert statuses == [PAID] * wins


@pytest.mark.parametrize("rule", ["first_correct", "lottery"])
def test_winners_are_chosen_the_same_on_a_rerun(rule):
    library = ActivityLibrary()
    script = library.script("quiz").model_copy(update={"winner_rule": rule, "winners_per_round": 2})
    members = [f"wm{i}" for i in range(6)]
    t0 = pd.Timestamp("2026-12-15T12:00:00Z")
    entries = pd.DataFrame(
        {"external_userid": members, "chat_id": "wrA", "answer": "b", "time": [t0] * 6}
    )
    args = dict(
        activity_key="k",
        round_=0,
        opens_at=t0 - pd.Timedelta("1h"),
        closes_at=t0 + pd.Timedelta("1h"),
    )
    first, _ = choose_winners(entries, members_frame({"wrA": members}), script, **args)
    second, _ = choose_winners(
        entries.sample(frac=1, random_state=3), members_frame({"wrA": members}), script, **args
    )
    assert first["member"].tolist() == second["member"].tolist()
    assert len(first) == 2


def test_a_payout_over_the_customers_daily_limit_waits_for_the_next_day_same_bill_number(
    engine, sandbox, seed_dir
):
    sandbox.seed(seed_dir)
    sandbox.config(redpack_daily_count=1)
    member = _members(sandbox, SEED_CHAT_IDS[0])[0]
    library = ActivityLibrary()
    with Session(engine) as session, session.begin():
        for key in ("k:one", "k:two"):
            grant_wins(session, winners_of(SEED_CHAT_IDS[0], [member]), library.script("quiz"),
                       library, SendRules(), activity_key=key, won_at=MONDAY)  # fmt: skip
    pay, wecom = _pay(sandbox)
    sandbox.set_clock(MONDAY.timestamp(), frozen=True)
    first = settle_rewards(engine, pay, wecom.convert_to_openid, as_of=MONDAY)
    assert (first.paid, first.later) == (1, {"SENDNUM_LIMIT": 1})
    tuesday = MONDAY + dt.timedelta(days=1)
    sandbox.set_clock(tuesday.timestamp(), frozen=True)
    second = settle_rewards(engine, pay, wecom.convert_to_openid, as_of=tuesday)
    assert second.paid == 1
    with Session(engine) as session:
        bills = session.scalars(sa.select(RewardWin.billno).where(RewardWin.status == PAID)).all()
    assert sorted(p["mch_billno"] for p in sandbox.payouts()) == sorted(bills)


def test_the_join_hook_run_pays_new_members_who_played_and_no_one_else(
    engine, sandbox, seed_dir, tmp_path
):
    sandbox.seed(seed_dir)
    chat = SEED_CHAT_IDS[0]
    old_members = _members(sandbox, chat)
    newcomers = [m for m in _members(sandbox, SEED_CHAT_IDS[1]) if m not in old_members][:2]
    joined_at = (MONDAY - dt.timedelta(days=2)).timestamp()
    sandbox.group_activity(
        [{"chat_id": chat, "kind": "join", "userid": m, "at": joined_at} for m in newcomers]
    )
    library = ActivityLibrary()
    script = library.script("join-hook")
    key = "hook:2026-W51"
    announce = open_activity(engine, key, script, [chat], asked_at=MONDAY)
    source = EntriesSource(landing_dir=str(tmp_path))
    played = [newcomers[0], old_members[0]]  # one newcomer played, the other did not
    at = MONDAY + dt.timedelta(minutes=5)
    lines = [f"{m},{chat},go,{at.isoformat()}" for m in played]
    Path(source.path_for(key, 0)).write_text(
        "external_userid,chat_id,answer,time\n" + "\n".join(lines) + "\n"
    )
    client = WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    )
    rules = SendRules(holidays=[dt.date(2026, 12, 16)])
    report = run_winners(engine, client, library=library, entries=source, rules=rules, key=key,
                         as_of=announce)  # fmt: skip
    assert report.winners == 1 and report.rewards["granted"] == 1
    pay, wecom = _pay(sandbox)
    monday_21 = dt.datetime(2026, 12, 21, 10, tzinfo=CHINA)
    assert settle_rewards(engine, pay, wecom.convert_to_openid, as_of=monday_21).paid == 0
    paid = settle_rewards(
        engine, pay, wecom.convert_to_openid, as_of=monday_21 + dt.timedelta(days=1)
    )
    assert paid.paid == 1
    assert [p["external_userid"] for p in sandbox.payouts()] == [newcomers[0]]


def _alerts(engine) -> dict[str, dict]:
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OutboxEntry.key, OutboxEntry.payload).where(OutboxEntry.batch == ALERT_BATCH)
        ).all()
    return dict(rows)


def test_over_budget_and_80_percent_of_a_budget_are_alerted_once_with_the_grant(engine):
    library = ActivityLibrary(group_week_budget_fen=1_000, programme_month_budget_fen=2_400)
    script = library.script("quiz")  # 5 yuan a winner
    with Session(engine) as session, session.begin():
        # wrA: 2 wins paid (100 % of its week), 1 over; wrB: 1 win (50 %): 1,500 fen of 2,400.
        first = grant_wins(session, pd.concat([winners_of("wrA", ["wm1", "wm2", "wm3"]),
                                               winners_of("wrB", ["wm4"])]),
                           script, library, SendRules(), activity_key="k:1", won_at=MONDAY)  # fmt: skip
    assert first.alerts == 2
    alerts = _alerts(engine)
    assert sorted(alerts) == ["alert:budget-80:group:wrA:2026-W51", "alert:over-budget:k:1"]
    over = alerts["alert:over-budget:k:1"]
    assert over["event"] == "siyu.rewards.over-budget"
    assert over["resource"] == "siyu.group-cadence.activity.k:1"
    assert over["body"]["wins_over_budget"] == 1 and over["body"]["by_budget"] == {GROUP_WEEK: 1}
    assert over["body"]["subject"] and over["body"]["next_step"]
    with Session(engine) as session, session.begin():
        # A rerun alerts nothing; wrB's second win takes the month past 80 % (2,000 of 2,400).
        grant_wins(session, winners_of("wrA", ["wm1", "wm2", "wm3"]), script, library,
                   SendRules(), activity_key="k:1", won_at=MONDAY)  # fmt: skip
        grant_wins(session, winners_of("wrB", ["wm5"]), script, library, SendRules(),
                   activity_key="k:2", won_at=MONDAY)  # fmt: skip
    alerts = _alerts(engine)
    assert sorted(alerts) == [
        "alert:budget-80:group:wrA:2026-W51", "alert:budget-80:group:wrB:2026-W51",
        "alert:budget-80:month:2026-12", "alert:over-budget:k:1",
    ]  # fmt: skip
    month = alerts["alert:budget-80:month:2026-12"]["body"]
    assert (month["spent_fen"], month["budget_fen"], month["scope"]) == (
        2_000,
        2_400,
        "programme_month",
    )
    text = str(alerts)
    assert not any(m in text for m in ("wm1", "wm2", "wm3", "wm4", "wm5"))


def test_a_once_per_member_script_is_won_once_whichever_day_and_its_pay_day_follows_the_play(
    engine,
):
    library = ActivityLibrary()
    hook = library.script("join-hook")
    played = pd.Timestamp(MONDAY.replace(hour=11))
    monday = winners_of("wrA", ["wm1", "wm2"]).assign(answered_at=played)
    rules = SendRules(holidays=[dt.date(2026, 12, 16)])
    drawn_tuesday = MONDAY + dt.timedelta(days=1)  # the day's hook is drawn the morning after
    with Session(engine) as session, session.begin():
        first = grant_wins(session, monday, hook, library, rules, activity_key="hook:d1",
                           won_at=drawn_tuesday)  # fmt: skip
    tuesday = winners_of("wrA", ["wm1", "wm3"]).assign(answered_at=played + pd.Timedelta("1D"))
    with Session(engine) as session, session.begin():
        second = grant_wins(session, tuesday, hook, library, rules, activity_key="hook:d2",
                            won_at=drawn_tuesday + dt.timedelta(days=1))  # fmt: skip
    assert (first.granted, second.granted, second.once_only) == (2, 1, 1)
    with Session(engine) as session:
        due = dict(session.execute(sa.select(RewardWin.member, RewardWin.pay_due)).tuples().all())
    # Monday's plays: five working days with Wednesday off end Tuesday 22; Tuesday's: Wednesday 23.
    assert due == {"wm1": dt.date(2026, 12, 22), "wm2": dt.date(2026, 12, 22),
                   "wm3": dt.date(2026, 12, 23)}  # fmt: skip
