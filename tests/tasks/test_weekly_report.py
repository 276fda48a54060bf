"""The weekly report's figures against the database, its charts' Chinese font, its markdown."""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import ConversionPaths
from siyu.blocks.group_cadence import ActivityLibrary
from siyu.schemas.cadence import Activity, ActivityParticipation, GroupHealth, RewardWin
from siyu.schemas.conversion import Cohort, Conversion, Enrollment
from siyu.schemas.ledger import Send
from siyu.schemas.models import Contact, Export
from siyu.tasks.journeys import difference_interval, store_cohorts
from siyu.tasks.rewards import bill_number
from siyu.tasks.weekly_report import (
    MAX_PNG_BYTES,
    RewardBudget,
    chart_labels,
    cjk_font_path,
    last_full_week,
    render_charts,
    report_markdown,
    report_weeks,
    use_cjk_font,
    weekly_figures,
)

ZONE = ZoneInfo("Asia/Shanghai")
MANAGERS = ["mgr001", "mgr002", "mgr003"]
MONDAYS = [dt.date(2026, 11, 2) + dt.timedelta(days=7 * k) for k in range(4)]
REPORT_WEEK = MONDAYS[-1]
PATHS = ["payroll-wealth", "new-customer"]
GROUPS = ["wrSeedChat0001", "wrSeedChat0002", *[f"wrSimChat{g:04d}" for g in range(3, 7)]]
SCRIPTS = {"tue-game": ("quiz", 1), "thu-game": ("dice", 3), "fri-big": ("friday-qa", 4)}
BUDGET = RewardBudget(group_week_fen=20_000, programme_month_fen=5_000_000)
THEMES = {script.name: script.theme for script in ActivityLibrary().scripts}
# Glyph warnings from matplotlib: "Glyph 20195 (...) missing from font(s) DejaVu Sans."
GLYPH_MISSING = r".*Glyph \d+ .*missing from"


def local(day: dt.date, hour: int = 10, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), ZONE)


def lag_minutes(sender: str, touch: int) -> int:
    """mgr001 confirms in 10 minutes, mgr003 in 5 hours, mgr002 slower touch by touch."""
    return {"mgr001": 10, "mgr003": 300}.get(sender, 30 + 30 * touch)


@dataclass
class Month:
    """What the simulated month left besides the database: the AUM of the newest export."""

    aum_now: pd.DataFrame


def simulate_month(session: Session, seed: int = 7) -> Month:
    """A month of siyu's own records, Oct 26 to Nov 30 (a little outside the four weeks too).

    Contacts added and lost, daily tag syncs (one blocked), four weekly cohorts of two paths
    stored by journeys.store_cohorts, three touches each with confirmations and deliveries,
    conversions attributed to touches (and in the holdout), group health, three activities a
    week with participation, reward wins paid, granted, over budget and failed.
    """
    rng = np.random.default_rng(seed)
    start = local(dt.date(2026, 10, 26), 9)
    contacts = []
    for i in range(90):
        added = start + dt.timedelta(hours=9 * i)
        contacts.append(
            Contact(
                userid=MANAGERS[i % 3],
                external_userid=f"wmSim{i:04d}",
                customer_id=None if i % 5 == 0 else f"C{i:08d}",
                added_at=added,
                left_at=added + dt.timedelta(days=5) if i % 11 == 0 else None,
                reachable=i % 11 != 0,
                seen_at=added,
            )
        )
    session.add_all(contacts)
    for day in (dt.date(2026, 10, 31) + dt.timedelta(days=d) for d in range(31)):
        session.add(
            Export(
                file_name=f"core_{day:%Y%m%d}.csv",
                checksum=f"{day:%Y%m%d}".ljust(64, "0"),
                export_date=day,
                status="synced",
                report={"pairs_changed": day.day, "tags_added": 2 * day.day,
                        "tags_removed": day.day % 3},
            )
        )  # fmt: skip
    session.add(
        Export(
            file_name="core_20261110_bad.csv",
            checksum="b" * 64,
            export_date=dt.date(2026, 11, 10),
            status="blocked",
            report={"pairs_changed": 999, "tags_added": 999, "tags_removed": 999},
        )
    )
    session.flush()

    bound = [c for c in contacts if c.customer_id and c.left_at is None]
    playbooks = ConversionPaths()
    slices = np.array_split(np.arange(len(bound)), len(MONDAYS) * len(PATHS))
    aum_now = []
    for n, rows in enumerate(slices):
        day = MONDAYS[n // len(PATHS)] + dt.timedelta(days=n % 2)
        path = PATHS[n % len(PATHS)]
        members = [bound[int(i)] for i in rows]
        entrants = pd.DataFrame(
            {
                "customer_id": [m.customer_id for m in members],
                "userid": [m.userid for m in members],
                "external_userid": [m.external_userid for m in members],
                "holdout": [j % 4 == 3 for j in range(len(members))],
                "path": path,
                "aum": [10_000.0 * (int(i) + 1) for i in rows],
            }
        )
        (cohort_id,) = store_cohorts(
            session, entrants, playbooks, day, export_date=day, export_checksum=None
        )
        enrolled = session.execute(
            sa.select(Enrollment.id, Enrollment.customer_id, Enrollment.userid,
                      Enrollment.external_userid, Enrollment.holdout, Enrollment.base_aum)
            .where(Enrollment.cohort_id == cohort_id)
        ).all()  # fmt: skip
        for e in enrolled:
            converts = rng.random() < (0.2 if e.holdout else 0.45)
            aum_now.append((e.customer_id, e.base_aum + (5_000.0 if converts else 0.0)))
            touches = [] if e.holdout else [1, 2, 3]
            for touch in touches:
                send_day = day + dt.timedelta(days=2 * (touch - 1))
                created = local(send_day, 10, touch)
                confirmed = created + dt.timedelta(minutes=lag_minutes(e.userid, touch))
                status = rng.choice(
                    ["delivered", "failed", "skipped", "created"], p=[0.7, 0.1, 0.1, 0.1]
                )
                send = Send(
                    target_kind="customer",
                    target_id=e.external_userid,
                    programme=f"path:{path}",
                    step=f"touch-{touch}",
                    period=day.isoformat(),
                    sender=e.userid,
                    channel="mass_template",
                    status=str(status),
                    playbook="conversion-paths",
                    playbook_version="v1",
                    planned_at=local(send_day, 9),
                    send_day=send_day,
                    send_month=f"{send_day:%Y-%m}",
                )
                if status != "skipped":
                    send.msgid = f"msg-{cohort_id}-{touch}-{e.userid}"
                    send.created_at = created
                else:
                    send.reason = "month_cap"
                    send.settled_at = local(send_day, 9)
                if status in ("delivered", "failed"):
                    send.confirmed_at = confirmed
                    send.settled_at = confirmed + dt.timedelta(minutes=1)
                if status == "delivered":
                    send.delivered_at = confirmed + dt.timedelta(minutes=1)
                if status == "failed":
                    send.reason = "not_a_contact"
                session.add(send)
            if converts:
                on = day + dt.timedelta(days=int(rng.integers(1, 12)))
                touch = None if e.holdout else rng.choice([1, 2, 3, 0])
                session.add(
                    Conversion(
                        enrollment_id=e.id,
                        cohort_id=cohort_id,
                        converted_on=on,
                        attributed_touch=int(touch) if touch else None,
                        holdout=bool(e.holdout),
                    )
                )
                session.execute(
                    sa.update(Enrollment)
                    .where(Enrollment.id == e.id)
                    .values(status="converted", exited_on=on, exit_reason="converted")
                )

    for k, monday in enumerate([dt.date(2026, 10, 26), *MONDAYS]):
        week = f"{monday.isocalendar()[0]}-W{monday.isocalendar()[1]:02d}"
        for g, chat in enumerate(GROUPS):
            for offset in (0, 3, 6):
                members = 0 if (g == 5 and k >= 3 and offset == 6) else 200 - 10 * g - k
                participation = float(rng.uniform(0.05, 0.5))
                if g == 4 and k >= 2:
                    participation = 0.0  # nobody plays any more: dead
                session.add(
                    GroupHealth(
                        chat_id=chat,
                        owner=MANAGERS[g % 3],
                        day=monday + dt.timedelta(days=offset),
                        members=members,
                        joins_week=int(rng.integers(0, 9)),
                        leaves_week=int(rng.integers(0, 9)),
                        participation=participation,
                        dying=bool((g == 1 and k >= 2) or (g == 3 and offset == 3)),
                        reason="low_participation" if g == 1 else None,
                    )
                )
        for slot, (script, weekday) in SCRIPTS.items():
            key = f"weekly:{slot}:{week}"
            asked = local(monday + dt.timedelta(days=weekday), 20)
            chats = GROUPS[: 4 + k % 3]
            session.add(
                Activity(
                    key=key, cadence="weekly", slot=slot, week=week, script=script,
                    chat_ids={"chat_ids": chats}, asked_at=asked,
                    announce_at=asked + dt.timedelta(minutes=50), status="announced",
                )
            )  # fmt: skip
            for g, chat in enumerate(chats):
                members = 100 + g
                players = int(rng.integers(0, members))
                session.add(
                    ActivityParticipation(
                        activity_key=key, chat_id=chat, day=asked.date(), members=members,
                        players=players, correct=int(rng.integers(0, players + 1)),
                    )
                )  # fmt: skip
                for r, status in enumerate(["paid", "paid", "granted", "over_budget", "failed"]):
                    if rng.random() < 0.3:
                        continue
                    member = f"wmSim{(g * 7 + r) % 90:04d}"
                    session.add(
                        RewardWin(
                            activity_key=key, round=r, member=member, chat_id=chat,
                            script=script, amount_fen=1000 if script == "friday-qa" else 500,
                            billno=bill_number(key, r, member), status=status,
                            reason="group_week_budget" if status == "over_budget" else None,
                            week=week, month=f"{asked:%Y-%m}", won_at=asked,
                            pay_due=asked.date() + dt.timedelta(days=7),
                        )
                    )  # fmt: skip
    session.commit()
    return Month(pd.DataFrame(aum_now, columns=["customer_id", "aum"]))


# -- the oracle: the same figures read the plain way, whole tables into pandas ----------------------


def table(session: Session, model) -> pd.DataFrame:
    t = model.__table__
    result = session.execute(sa.select(t))
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def week_of_day(day) -> str | None:
    if day is None or pd.isna(day):
        return None
    day = day.astimezone(ZONE).date() if isinstance(day, dt.datetime) else day
    for w in report_weeks(REPORT_WEEK, 4):
        if w.monday <= day <= w.sunday:
            return w.label
    return None


def check_customers(figures, session) -> None:
    contacts = table(session, Contact)
    for w in report_weeks(REPORT_WEEK, 4):
        for manager in MANAGERS:
            mine = contacts[contacts["userid"] == manager]
            row = figures.customers.query("week == @w.label and manager == @manager").iloc[0]
            bound = mine[
                mine["customer_id"].notna()
                & (mine["added_at"] < w.end)
                & (mine["left_at"].isna() | (mine["left_at"] >= w.end))
            ]
            assert row["bound"] == len(bound)
            assert row["added"] == sum(week_of_day(a) == w.label for a in mine["added_at"])
            assert row["left"] == sum(week_of_day(a) == w.label for a in mine["left_at"])


def check_tags(figures, session) -> None:
    exports = table(session, Export)
    synced = exports[exports["status"] == "synced"]
    for row in figures.tags.itertuples():
        mine = synced[synced["export_date"].map(week_of_day) == row.week]
        assert row.syncs == len(mine) == 7
        assert row.pairs_changed == sum(r["pairs_changed"] for r in mine["report"])
        assert row.tags_added == sum(r["tags_added"] for r in mine["report"])
        assert row.tags_removed == sum(r["tags_removed"] for r in mine["report"])


def check_touches(figures, session) -> None:
    sends = table(session, Send)
    sends["day_week"] = sends["send_day"].map(week_of_day)
    sends["confirmed_week"] = sends["confirmed_at"].map(week_of_day)
    sends["delivered_week"] = sends["delivered_at"].map(week_of_day)
    sends["settled_week"] = sends["settled_at"].map(week_of_day)
    expected_rows = 0
    for w in figures.weeks:
        for manager in MANAGERS:
            mine = sends[sends["sender"] == manager]
            found = figures.touches.query("week == @w and manager == @manager")
            planned = mine[(mine["day_week"] == w) & ~mine["status"].isin(["deferred", "skipped"])]
            confirmed = mine[mine["confirmed_week"] == w]
            if found.empty:
                assert planned.empty and confirmed.empty
                continue
            expected_rows += 1
            row = found.iloc[0]
            assert row["planned"] == len(planned)
            assert row["skipped"] == ((mine["day_week"] == w) & (mine["status"] == "skipped")).sum()
            assert row["confirmed"] == len(confirmed)
            assert (
                row["delivered"]
                == ((mine["delivered_week"] == w) & (mine["status"] == "delivered")).sum()
            )
            assert (
                row["failed"] == ((mine["settled_week"] == w) & (mine["status"] == "failed")).sum()
            )
            lags = (confirmed["confirmed_at"] - confirmed["created_at"]).dt.total_seconds() / 60
            if lags.empty:
                assert pd.isna(row["median_lag_minutes"])
            else:
                assert row["median_lag_minutes"] == pytest.approx(lags.median(), abs=0.05)
    assert expected_rows == len(figures.touches) > 0
    lag = figures.touches.dropna(subset=["median_lag_minutes"]).groupby("manager")[
        "median_lag_minutes"
    ]
    assert set(lag.min()[["mgr001", "mgr003"]]) | set(lag.max()[["mgr001", "mgr003"]]) == {10, 300}


def check_conversions(figures, session) -> None:
    conversions = table(session, Conversion).merge(
        table(session, Cohort)[["id", "path", "title"]].rename(columns={"id": "cohort_id"})
    )
    conversions["week"] = conversions["converted_on"].map(week_of_day)
    conversions["touch"] = conversions["attributed_touch"].fillna(0).astype(int)
    inside = conversions[conversions["week"].notna()]
    assert len(inside) < len(conversions)  # some converted after the four weeks
    got = figures.conversions.set_index(["week", "path", "touch"])
    expected = inside.groupby(["week", "path", "touch"]).agg(
        converted=("holdout", lambda h: int((~h.astype(bool)).sum())),
        holdout_converted=("holdout", lambda h: int(h.astype(bool).sum())),
    )
    assert (
        got[["converted", "holdout_converted"]]
        .sort_index()
        .equals(expected.astype("int64").sort_index())
    )
    assert set(figures.conversions["title"]) == {"代发稳健理财", "新客礼遇"}
    assert (inside["holdout"] & inside["attributed_touch"].notna()).sum() == 0

    members = table(session, Enrollment).merge(
        table(session, Cohort)[["id", "path", "cohort_day"]].rename(columns={"id": "cohort_id"})
    )
    members["week"] = members["cohort_day"].map(week_of_day)
    for row in figures.uplift.itertuples():
        mine = members[(members["week"] == row.week) & (members["path"] == row.path)]
        treated, held = mine[~mine["holdout"]], mine[mine["holdout"]]
        x1, x2 = (treated["status"] == "converted").sum(), (held["status"] == "converted").sum()
        assert (row.treated, row.treated_converted, row.holdout, row.holdout_converted) == (
            len(treated), x1, len(held), x2,
        )  # fmt: skip
        interval = difference_interval(int(x1), len(treated), int(x2), len(held))
        assert (row.uplift, row.uplift_low, row.uplift_high) == pytest.approx(interval)
        assert row.uplift_low <= row.uplift <= row.uplift_high
    assert len(figures.uplift) == len(MONDAYS) * len(PATHS)


def check_aum(figures, session, aum_now: pd.DataFrame | None) -> None:
    conversions = table(session, Conversion)
    treated = conversions[~conversions["holdout"].astype(bool)]
    members = table(session, Enrollment).merge(
        treated[["enrollment_id", "converted_on"]], left_on="id", right_on="enrollment_id"
    )
    members["week"] = members["converted_on"].map(week_of_day)
    for row in figures.aum.itertuples():
        mine = members[members["week"] == row.week].merge(
            table(session, Cohort)[["id", "path"]].rename(columns={"id": "cohort_id"})
        )
        mine = mine[mine["path"] == row.path]
        assert row.converted == len(mine)
        assert row.aum_before == pytest.approx(mine["base_aum"].sum())
        if aum_now is None:
            assert row.aum_after is None or pd.isna(row.aum_after)
        else:
            after = aum_now.set_index("customer_id").loc[mine["customer_id"], "aum"].sum()
            assert row.aum_after == pytest.approx(after)
            assert row.aum_after == pytest.approx(row.aum_before + 5_000 * row.converted)


def check_groups(figures, session) -> None:
    health = table(session, GroupHealth)
    health["week"] = health["day"].map(week_of_day)
    last = health.dropna(subset=["week"]).sort_values("day").groupby(["week", "chat_id"]).tail(1)
    for row in figures.groups.itertuples():
        mine = last[last["week"] == row.week]
        dead = (mine["members"] == 0) | (mine["participation"] == 0)
        assert row.groups == len(mine) == len(GROUPS)
        assert row.dead == dead.sum()
        assert row.dying == (~dead & mine["dying"]).sum()
        assert row.active == row.groups - row.dead - row.dying
    last_week = figures.groups.iloc[-1]
    assert (last_week["dead"], last_week["dying"]) == (2, 1)  # one emptied, one silent; one low


def check_participation(figures, session) -> None:
    rows = table(session, ActivityParticipation).merge(
        table(session, Activity)[["key", "week", "script"]], left_on="activity_key", right_on="key"
    )
    rows = rows[rows["week"].isin(figures.weeks)]
    expected = rows.groupby(["week", "script"]).agg(
        groups=("chat_id", "size"), members=("members", "sum"), players=("players", "sum"),
        correct=("correct", "sum"),
    )  # fmt: skip
    got = figures.participation.set_index(["week", "script"])
    assert (
        got[["groups", "members", "players", "correct"]]
        .sort_index()
        .equals(expected.astype("int64").sort_index())
    )
    assert (got["activities"] == 1).all()
    assert set(got["title"]) <= {"理财知识", "猜骰子", "周五抢答", "quiz", "dice", "friday-qa"}
    assert got["participation"].to_numpy() == pytest.approx(
        (got["players"] / got["members"]).to_numpy(), abs=1e-4
    )


def check_rewards(figures, session) -> None:
    wins = table(session, RewardWin)
    for row in figures.rewards.itertuples():
        mine = wins[wins["week"] == row.week]
        assert row.paid_fen == mine.loc[mine["status"] == "paid", "amount_fen"].sum()
        assert row.granted_fen == mine.loc[mine["status"] == "granted", "amount_fen"].sum()
        assert row.over_budget == (mine["status"] == "over_budget").sum()
        assert row.failed == (mine["status"] == "failed").sum()
        assert row.budget_fen == mine["chat_id"].nunique() * BUDGET.group_week_fen
        november = wins[(wins["month"] == "2026-11") & (wins["status"] == "paid")]
        assert row.month_paid_fen == november["amount_fen"].sum()
        assert row.month_budget_fen == BUDGET.programme_month_fen


def check_figures(figures, session, aum_now: pd.DataFrame | None) -> None:
    """Every figure of the report against the database, read independently."""
    assert figures.weeks == ["2026-W45", "2026-W46", "2026-W47", "2026-W48"]
    check_customers(figures, session)
    check_tags(figures, session)
    check_touches(figures, session)
    check_conversions(figures, session)
    check_aum(figures, session, aum_now)
    check_groups(figures, session)
    check_participation(figures, session)
    check_rewards(figures, session)


@pytest.fixture
def month(engine):
    with Session(engine) as session:
        simulated = simulate_month(session)
    with Session(engine) as session:
        yield session, simulated


def test_every_figure_of_a_simulated_month_agrees_with_the_database(month) -> None:
    session, simulated = month
    figures = weekly_figures(
        session, REPORT_WEEK, 4, aum_now=simulated.aum_now, budget=BUDGET, script_titles=THEMES
    )
    check_figures(figures, session, simulated.aum_now)


def test_without_an_export_the_aum_after_is_left_out_and_said(month) -> None:
    session, _ = month
    figures = weekly_figures(session, REPORT_WEEK + dt.timedelta(days=3), 4, budget=BUDGET)
    assert figures.week_start == REPORT_WEEK  # any day of the week reports that week
    check_aum(figures, session, None)
    assert any("AUM after" in note for note in figures.notes)


def test_an_empty_database_gives_zeros_not_errors(engine) -> None:
    with Session(engine) as session:
        figures = weekly_figures(session, REPORT_WEEK, 2)
    assert figures.weeks == ["2026-W47", "2026-W48"]
    assert figures.groups["groups"].tolist() == [0, 0]
    assert figures.tags["syncs"].tolist() == [0, 0]
    assert figures.conversions.empty and figures.touches.empty
    charts = render_charts(figures)
    assert "data:image/png;base64," in report_markdown(figures, charts)


def test_the_default_week_is_the_last_full_week_in_beijing() -> None:
    # Monday 2026-11-30 00:30 in Beijing is still Sunday in UTC: the last full week is W48.
    assert last_full_week(dt.datetime(2026, 11, 29, 16, 30, tzinfo=dt.UTC)) == REPORT_WEEK
    assert last_full_week(dt.datetime(2026, 11, 29, 15, 30, tzinfo=dt.UTC)) == MONDAYS[2]


def test_the_charts_font_covers_every_chinese_label(month) -> None:
    from matplotlib.ft2font import FT2Font

    session, simulated = month
    figures = weekly_figures(
        session, REPORT_WEEK, 4, aum_now=simulated.aum_now, budget=BUDGET, script_titles=THEMES
    )
    name = use_cjk_font()
    path = cjk_font_path()
    assert path is not None and "CJK" in name
    font = FT2Font(str(path))
    texts = chart_labels(figures) + ["新增客户", "绑定客户", "确认时长中位数", "社群活跃衰退沉寂",
                                     "奖励发放与预算", "转化客户资产万元", "第1触达", "未触达", "其他", "最慢的客户经理"]  # fmt: skip
    chinese = {ch for text in texts for ch in text if ord(ch) > 0x2E80}
    assert {"代", "发", "稳", "健", "理", "财", "骰", "抢"} <= chinese
    missing = sorted(ch for ch in chinese if font.get_char_index(ord(ch)) == 0)
    assert missing == []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=GLYPH_MISSING)
        charts = render_charts(figures)
    assert set(charts) == {"customers", "touches", "conversions", "uplift", "aum", "groups",
                           "rewards"}  # fmt: skip
    for png in charts.values():
        assert png.startswith(b"\x89PNG") and len(png) < MAX_PNG_BYTES


def test_a_font_without_chinese_is_caught_by_the_glyph_check() -> None:
    """The check above has teeth: DejaVu alone draws 代发 as boxes and matplotlib warns."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title("代发稳健理财", fontfamily="DejaVu Sans")
    with warnings.catch_warnings(), pytest.raises(UserWarning, match=GLYPH_MISSING):
        warnings.filterwarnings("error", message=GLYPH_MISSING)
        fig.canvas.draw()
    plt.close(fig)


def test_the_markdown_embeds_the_charts_and_names_no_customer(month) -> None:
    session, simulated = month
    figures = weekly_figures(
        session, REPORT_WEEK, 4, aum_now=simulated.aum_now, budget=BUDGET, script_titles=THEMES
    )
    charts = render_charts(figures)
    markdown = report_markdown(figures, charts)
    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(images) == len(charts)
    assert markdown.startswith("# Weekly report 2026-W48 (2026-11-23 to 2026-11-29)")
    assert "代发稳健理财" in markdown and "mgr003" in markdown
    text = markdown + json.dumps(figures.tables(), ensure_ascii=False)
    assert not re.search(r"C\d{8}|wmSim\d{4}", text)  # no customer id, no external userid
    assert len(markdown) < 1_000_000
