"""The weekly management report (Monday 09:00 Beijing time; by hand for any week): charts and tables."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State
from sqlalchemy.orm import Session

from siyu.blocks.environment import BLOCK_NAME, Environment, load_environment
from siyu.blocks.group_cadence import ActivityLibrary
from siyu.blocks.wecom import WeComError, WeComUnavailable
from siyu.flows.conversion_path import newest_accepted_export
from siyu.tasks.export import ExportRefused
from siyu.tasks.weekly_report import (
    TABLES,
    RewardBudget,
    WeeklyFigures,
    dying_groups,
    last_full_week,
    render_charts,
    report_markdown,
    report_weeks,
    week_monday,
    weekly_figures,
)

ZONE = ZoneInfo("Asia/Shanghai")
ARTIFACT_KEY = "weekly-report"
# Results hold nothing personal, but nothing here needs to be cached or persisted either.
STEP: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}


def _library(name: str = BLOCK_NAME) -> ActivityLibrary:
    """The saved Activity Library (budgets, script themes); its defaults when none is saved."""
    try:
        return ActivityLibrary.load(name)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        return ActivityLibrary()


@task(name="read-aum-now", **STEP)
def read_aum_now(env: Environment, day: dt.date) -> pd.DataFrame | None:
    """customer_id, aum of the newest accepted export up to `day`; None when there is none."""
    try:
        export = newest_accepted_export(env, day)
    except (ExportRefused, FileNotFoundError, RuntimeError) as exc:
        get_run_logger().warning(
            "the newest accepted export could not be read (%s): the report shows AUM at entry "
            "only - restore the file in the landing directory and rerun weekly-report",
            exc,
        )
        return None
    return None if export is None else export.frame[["customer_id", "aum"]]


@task(name="weekly-figures", **STEP)
def compute_figures(
    env: Environment,
    week_start: dt.date,
    weeks: int,
    aum_now: pd.DataFrame | None,
    library: ActivityLibrary,
) -> tuple[WeeklyFigures, pd.DataFrame]:
    """The report's figures, and the groups dying or dead at the end of its week."""
    budget = RewardBudget(library.group_week_budget_fen, library.programme_month_budget_fen)
    themes = {script.name: script.theme for script in library.scripts if script.theme}
    engine = env.database.get_engine()
    try:
        with Session(engine) as session:
            figures = weekly_figures(
                session, week_start, weeks, aum_now=aum_now, budget=budget, script_titles=themes
            )
            dying = dying_groups(session, report_weeks(week_start, 1)[0])
    finally:
        engine.dispose()
    return figures, dying


@task(name="group-names", **STEP)
def name_groups(env: Environment, dying: pd.DataFrame) -> pd.DataFrame:
    """The dying groups with their names from WeCom (the chat id when WeCom cannot say)."""
    names: dict[str, str] = {}
    if not dying.empty:
        with env.wecom.get_client() as client:
            for chat_id in dying["chat_id"]:
                try:
                    names[chat_id] = client.get_group_chat(chat_id, need_name=False).name
                except WeComUnavailable as exc:
                    get_run_logger().warning("group names unavailable from WeCom: %s", exc)
                    break
                except WeComError as exc:  # e.g. a group dissolved since its health check
                    get_run_logger().warning("no name for group %s: %s", chat_id, exc)
    return dying.assign(name=[names.get(c) or c for c in dying["chat_id"]])


@flow(name="weekly-report", persist_result=False)
def weekly_report(
    week_of: dt.date | None = None, at: dt.datetime | None = None, weeks: int = 4
) -> State:
    """The weekly management report: customers, tags, touches, conversions and uplift, AUM,
    groups, participation and rewards, week over week, as one markdown artifact with charts
    and one table artifact per figure.

    Args:
        week_of: Any day of the week to report (YYYY-MM-DD); empty means the last full week
            (Monday to Sunday, Beijing time) before `at`.
        at: The time the report is made for (ISO); empty means now in Asia/Shanghai.
        weeks: How many weeks the report compares, ending with the reported one (1-12).
    """
    if not 1 <= weeks <= 12:
        raise ValueError(f"weeks must be 1 to 12, not {weeks}: the report compares up to 12")
    now = at or dt.datetime.now(ZONE)
    if now.tzinfo is None:
        now = now.replace(tzinfo=ZONE)
    monday = week_monday(week_of) if week_of else last_full_week(now)
    env = load_environment()
    sunday = monday + dt.timedelta(days=6)
    aum_now = read_aum_now(env, min(sunday, now.astimezone(ZONE).date()))
    figures, dying = compute_figures(env, monday, weeks, aum_now, _library())
    dying = name_groups(env, dying)
    charts = render_charts(figures)
    week = figures.weeks[-1]
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=report_markdown(figures, charts, dying),
        description=f"Weekly report {week}: charts and figures, week over week",
    )
    tables = figures.tables()
    for name in TABLES:
        create_table_artifact(
            key=f"{ARTIFACT_KEY}-{name}",
            table=tables[name] or [{"week": week, "note": "nothing this period"}],
            description=f"Weekly report {week}: {name}",
        )
    return Completed(
        message=f"weekly report {week} ({', '.join(figures.weeks)}): {len(charts)} charts",
        data={"week": week, "weeks": figures.weeks, "tables": tables},
    )
