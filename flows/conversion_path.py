"""The four-touch conversion path: `path-enroll` (daily), `path-touch` (scheduled), `path-due`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Failed, State
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import INTRO, ConversionPath, ConversionPaths
from siyu.blocks.environment import BLOCK_NAME, Environment, load_environment
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.flows.sends_track import load_send_rules
from siyu.schemas.conversion import DONE, SCHEDULED, Cohort, TouchRun
from siyu.schemas.export import PERSONAL_FIELDS
from siyu.schemas.ledger import CUSTOMER, DELIVERED
from siyu.schemas.models import Contact, Export, QuarantinedRow, SyncedTag
from siyu.tasks.delivery import MessageContent, send_batch
from siyu.tasks.export import load_export, resolve_export_path
from siyu.tasks.export_registry import COMMITTED
from siyu.tasks.journeys import (
    PAUSED_BY_OPS,
    active_customer_ids,
    apply_outcomes,
    choose_entrants,
    cohort_uplift,
    drop_members,
    due_touch_runs,
    evaluate_goals,
    ever_enrolled_customer_ids,
    flow_run_name,
    funnel_markdown,
    mark_touch_done,
    newly_dropped,
    product_variants,
    read_contacts,
    read_funnel,
    read_members,
    running_cohorts,
    skip_paused_sends,
    split_eligible,
    step_status,
    store_cohorts,
    touch2_variants,
    touch_contents,
    touch_due_times,
    uplift_markdown,
)
from siyu.tasks.reports import dry_run_aware_name, tag_as_dry_run

ZONE = ZoneInfo("Asia/Shanghai")
TOUCH_DEPLOYMENT = "path-touch/cohort-touch"
STEP: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}

# Schedules a touch run: (idempotency key, parameters, due time, run name) -> flow run id.
Scheduler = Callable[[str, dict[str, Any], dt.datetime, str], str | None]


def _as_of(value: dt.datetime | None) -> dt.datetime:
    now = value or dt.datetime.now(ZONE)
    return now if now.tzinfo else now.replace(tzinfo=ZONE)


def load_playbooks(name: str = BLOCK_NAME) -> ConversionPaths:
    """The ConversionPaths block saved under `name`; the five default paths when none is saved."""
    try:
        return ConversionPaths.load(name)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            get_run_logger().warning(
                "no siyu Conversion Paths block %r is saved: using the five default paths "
                "(save one in the Blocks page to edit them)",
                name,
            )
            return ConversionPaths()
        raise


@dataclass
class ExportView:
    """The newest accepted export up to a day: customers' fields, never their names or mobiles."""

    frame: pd.DataFrame
    export_date: dt.date
    checksum: str


def newest_accepted_export(env: Environment, day: dt.date) -> ExportView | None:
    """Read the newest export the gate accepted with a business date on or before `day`."""
    engine = env.database.get_engine()
    try:
        with Session(engine) as session:
            record = session.scalars(
                sa.select(Export)
                .where(Export.status.in_(COMMITTED), Export.export_date <= day)
                .order_by(Export.export_date.desc(), Export.id.desc())
                .limit(1)
            ).first()
            if record is None:
                return None
            held = set(
                session.scalars(
                    sa.select(QuarantinedRow.customer_id).where(
                        QuarantinedRow.export_id == record.id
                    )
                )
            )
    finally:
        engine.dispose()
    source = env.export_source
    path = resolve_export_path(source.landing_path(), record.file_name)
    loaded = load_export(path, source.layout, completeness="stable_size", timezone=source.timezone)
    if loaded.checksum != record.checksum:
        raise RuntimeError(
            f"{record.file_name} changed after the gate accepted it - rerun tag-sync on it "
            "before the conversion path reads it"
        )
    frame = loaded.frame.drop(columns=[c for c in PERSONAL_FIELDS if c in loaded.frame.columns])
    frame = frame[~frame["customer_id"].isin(held)].drop_duplicates("customer_id")
    return ExportView(frame.reset_index(drop=True), record.export_date, record.checksum)


def _tag_names(client: WeComClient) -> dict[str, str]:
    return {t.id: t.name for g in client.get_corp_tag_list() for t in g.tag}


def contact_tags(session: Session, names: dict[str, str]) -> pd.DataFrame:
    """(userid, external_userid, tag) of every tag WeCom shows on a pair, by name."""
    rows = session.execute(
        sa.select(SyncedTag.userid, SyncedTag.external_userid, SyncedTag.tag_id)
    ).all()
    frame = pd.DataFrame(rows, columns=["userid", "external_userid", "tag_id"])
    frame["tag"] = frame["tag_id"].map(names)
    return frame.dropna(subset=["tag"]).drop(columns=["tag_id"])


def bound_customers(session: Session, export: pd.DataFrame, as_of: dt.datetime) -> pd.DataFrame:
    """One reachable contact per customer in the export (the earliest added), with its fields."""
    rows = session.execute(
        sa.select(Contact.customer_id, Contact.userid, Contact.external_userid, Contact.added_at)
        .where(
            Contact.customer_id.is_not(None),
            Contact.reachable.is_(True),
            Contact.left_at.is_(None),
        )
        .order_by(Contact.customer_id, Contact.added_at, Contact.userid)
    ).all()
    contacts = pd.DataFrame(rows, columns=["customer_id", "userid", "external_userid", "added_at"])
    contacts = contacts.drop_duplicates("customer_id")
    added = pd.to_datetime(contacts["added_at"], utc=True)
    contacts["days_since_added"] = (pd.Timestamp(as_of) - added).dt.days
    return contacts.drop(columns=["added_at"]).merge(export, on="customer_id")


def _customer_tags(tags: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    return tags.merge(
        customers[["customer_id", "userid", "external_userid"]], on=["userid", "external_userid"]
    )[["customer_id", "tag"]]


def touch_run_key(cohort_id: int, touch: int, due: dt.datetime) -> str:
    """The idempotency key of a touch's Prefect run: one run per (cohort, touch, due time).

    In UTC, so the key read back from the database (UTC) is the one enrolment made (local).
    """
    return f"path:{cohort_id}:{touch}:{due.astimezone(dt.UTC).isoformat()}"


def schedule_with_prefect(
    name: str, parameters: dict[str, Any], at: dt.datetime, run_name: str
) -> str | None:
    """A scheduled run of the path-touch deployment (visible ahead in the UI); None without it."""
    from prefect.deployments import run_deployment

    try:
        run = run_deployment(
            TOUCH_DEPLOYMENT,
            parameters=parameters,
            scheduled_time=at,
            flow_run_name=run_name,
            timeout=0,
            as_subflow=False,
            idempotency_key=name,
        )
    except ObjectNotFound:
        get_run_logger().warning(
            "deployment %s is not served: %s is recorded and `siyu path due` will run it",
            TOUCH_DEPLOYMENT,
            run_name,
        )
        return None
    return str(run.id)


# Tests replace it to watch what would be scheduled without a served deployment.
SCHEDULER: Scheduler = schedule_with_prefect


@task(name="evaluate conversions", **STEP)
def evaluate_conversions(
    env: Environment, playbooks: ConversionPaths, export: ExportView, rules: SendRules
) -> dict[str, int]:
    """Every active member's goal on the export (holdout too); unreachable or gone ones drop."""
    engine = env.database.get_engine()
    try:
        with Session(engine) as session, session.begin():
            members = read_members(session, active=True)
            if members.empty:
                return {"converted": 0, "expired": 0, "dropped": 0}
            outcomes = evaluate_goals(members, export.frame, playbooks, export.export_date)
            counts = apply_outcomes(
                session,
                outcomes,
                members,
                export_date=export.export_date,
                export_checksum=export.checksum,
                zone=rules.zone,
            )
            still = members[~members["enrollment_id"].isin(outcomes["enrollment_id"])]
            gone = newly_dropped(still, read_contacts(session), export.frame["customer_id"])
            counts["dropped"] = drop_members(session, gone, export.export_date)
            return counts
    finally:
        engine.dispose()


@task(name="enrol cohorts", **STEP)
def enrol_cohorts(
    env: Environment,
    playbooks: ConversionPaths,
    export: ExportView,
    rules: SendRules,
    as_of: dt.datetime,
    dry_run: bool,
    new_contacts: bool = False,
) -> tuple[pd.DataFrame, list[int]]:
    """Enter the matching customers in no path into today's cohorts and schedule their touches.

    With `new_contacts`, only customers never in any path may enter (what a contacts sync that
    bound new contacts asks for): a customer who left a path waits for the daily enrolment.
    Returns the entrants per path and manager (with holdout counts: the artifact's table) and
    the cohorts that gained members.
    """
    day = as_of.astimezone(rules.zone).date()
    engine = env.database.get_engine()
    try:
        with env.wecom.get_client() as client:
            names = _tag_names(client)
        with Session(engine) as session, session.begin():
            customers = bound_customers(session, export.frame, as_of)
            tags = _customer_tags(contact_tags(session, names), customers)
            taken = (ever_enrolled_customer_ids if new_contacts else active_customer_ids)(session)
            entrants = choose_entrants(customers, playbooks, tags, taken, day)
            if dry_run or entrants.empty:
                session.rollback()
                return _by_manager(entrants), []
            cohort_ids = store_cohorts(
                session,
                entrants,
                playbooks,
                day,
                export_date=export.export_date,
                export_checksum=export.checksum,
            )
            runs = _plan_touch_runs(session, playbooks, cohort_ids, rules, as_of)
        for run_name, cohort_id, touch, due in runs:
            key = touch_run_key(cohort_id, touch, due)
            flow_run_id = SCHEDULER(key, {"cohort": cohort_id, "touch": touch}, due, run_name)
            if flow_run_id:
                with Session(engine) as session, session.begin():
                    session.execute(
                        sa.update(TouchRun)
                        .where(TouchRun.cohort_id == cohort_id, TouchRun.touch == touch)
                        .values(flow_run_id=flow_run_id)
                    )
        return _by_manager(entrants), cohort_ids
    finally:
        engine.dispose()


def _plan_touch_runs(
    session: Session,
    playbooks: ConversionPaths,
    cohort_ids: list[int],
    rules: SendRules,
    as_of: dt.datetime,
) -> list[tuple[str, int, int, dt.datetime]]:
    """Write the four touch runs of each new cohort; a cohort joined later the same day whose
    touch 1 already ran gets touch 1 once more (the ledger skips who had it)."""
    planned: list[tuple[str, int, int, dt.datetime]] = []
    for cohort_id in cohort_ids:
        cohort = session.get(Cohort, cohort_id)
        path = playbooks.path(cohort.path)
        existing = {
            r.touch: r
            for r in session.scalars(sa.select(TouchRun).where(TouchRun.cohort_id == cohort_id))
        }
        due = touch_due_times(path, cohort.cohort_day, rules, as_of)
        for touch, at in enumerate(due, start=1):
            run = existing.get(touch)
            if run is None:
                session.add(TouchRun(cohort_id=cohort_id, touch=touch, due_at=at))
            elif touch == 1 and run.status == DONE:
                run.status, run.due_at = SCHEDULED, at
            else:
                continue
            planned.append((flow_run_name(path, cohort.cohort_day, touch), cohort_id, touch, at))
    session.flush()
    return planned


def _by_manager(entrants: pd.DataFrame) -> pd.DataFrame:
    if entrants.empty:
        return pd.DataFrame(columns=["path", "manager", "members", "holdout"])
    return (
        entrants.groupby(["path", "userid"])
        .agg(members=("customer_id", "size"), holdout=("holdout", "sum"))
        .reset_index()
        .rename(columns={"userid": "manager"})
        .astype({"holdout": int})
    )


def _table_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_nobody_"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


# A dry run is named "... · dry run" and tagged dry-run: the Runs list tells it apart.
@flow(name="path-enroll", flow_run_name=dry_run_aware_name, persist_result=False, log_prints=False)
def path_enroll(
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    new_contacts: bool = False,
) -> State:
    """Evaluate conversions on the newest accepted export, then enrol today's cohorts.

    Args:
        as_of: The time to enrol for (ISO, e.g. 2026-12-01T07:30+08:00); empty means now in
            Asia/Shanghai. A backfill or a test passes its own.
        dry_run: Report who would enter, per path and manager; store and schedule nothing.
        new_contacts: Enrol only customers never in a path, without evaluating conversions:
            what contacts-sync starts when it binds new contacts, so their first touch comes
            right after they added their manager.
    """
    if dry_run:
        tag_as_dry_run()
    now = _as_of(as_of)
    env = load_environment()
    playbooks = load_playbooks()
    rules = load_send_rules()
    day = now.astimezone(rules.zone).date()
    export = newest_accepted_export(env, day)
    if export is None:
        return Failed(
            message="no accepted core-banking export yet - run tag-sync first, then path-enroll"
        )
    outcomes = (
        {"converted": 0, "expired": 0, "dropped": 0}
        if dry_run or new_contacts
        else evaluate_conversions(env, playbooks, export, rules)
    )
    table, gained = enrol_cohorts(env, playbooks, export, rules, now, dry_run, new_contacts)
    if not dry_run:
        # The daily run refreshes every running cohort's funnel (conversions land here); a new
        # contacts' run only the cohorts it added to.
        report_cohorts(env, gained if new_contacts else None, export.export_date)
    kind = " (dry run)" if dry_run else " (new contacts)" if new_contacts else ""
    create_markdown_artifact(
        key="path-enroll",
        markdown=(
            f"# Path enrolment {day}{kind}\n\nExport {export.export_date}: "
            f"{outcomes['converted']} converted, {outcomes['expired']} expired, "
            f"{outcomes['dropped']} dropped.\n\n## Entrants by path and manager\n\n"
            + _table_markdown(table)
            + "\n\n## Uplift\n\n"
            + _uplift_section(env)
        ),
        description="Cohort members by path and manager; conversions; uplift with its interval",
    )
    entered = int(table["members"].sum()) if len(table) else 0
    verb = "would enter" if dry_run else "entered"
    return Completed(
        message=f"{entered} customers {verb} a path; {outcomes['converted']} converted",
        data={"outcomes": outcomes, "entrants": table.to_dict(orient="records")},
    )


def _uplift_section(env: Environment) -> str:
    engine = env.database.get_engine()
    try:
        with Session(engine) as session:
            return uplift_markdown(cohort_uplift(session))
    finally:
        engine.dispose()


def cohort_markdown(cohort: Cohort, funnel: pd.DataFrame) -> str:
    """A cohort as ops read it: its members and, per touch, the funnel and its conversions."""
    return (
        f"# {cohort.title} · {cohort.cohort_day.isoformat()} cohort\n\n"
        f"Path {cohort.path}: {cohort.members:,} members, of them {cohort.holdout:,} holdout "
        "(never touched).\n\n## Per touch\n\nConversions are attributed to the last touch "
        "delivered on or before the export that showed them.\n\n" + funnel_markdown(funnel)
    )


def _cohort_artifact(session: Session, cohort_id: int, programme: str) -> pd.DataFrame:
    cohort = session.get(Cohort, cohort_id)
    funnel = read_funnel(session, cohort_id, programme)
    create_markdown_artifact(
        key=f"path-cohort-{cohort_id}",
        markdown=cohort_markdown(cohort, funnel),
        description=f"{cohort.title} · {cohort.cohort_day.isoformat()} cohort: per touch "
        "eligible, dropped, planned, deferred/skipped, created, confirmed, delivered, conversions",
    )
    return funnel


@task(name="report cohorts", **STEP)
def report_cohorts(env: Environment, cohort_ids: list[int] | None, since: dt.date) -> int:
    """Refresh the artifact of each cohort (all running ones when None); returns how many."""
    engine = env.database.get_engine()
    try:
        with Session(engine) as session:
            ids = running_cohorts(session, since) if cohort_ids is None else cohort_ids
            for cohort_id in ids:
                cohort = session.get(Cohort, cohort_id)
                _cohort_artifact(session, cohort_id, f"path:{cohort.path}")
            return len(ids)
    finally:
        engine.dispose()


@dataclass
class TouchPlan:
    """One touch's wanted sends and their contents, and who was dropped."""

    wanted: pd.DataFrame
    contents: dict[str, MessageContent]
    eligible: int
    dropped: dict[str, int]
    holdout: int
    variants: dict[str, int]


def plan_touch(
    session: Session,
    cohort: Cohort,
    path: ConversionPath,
    playbooks: ConversionPaths,
    touch: int,
    export: ExportView,
    tags: pd.DataFrame,
    intent_tags: set[str],
    due: dict[int, dt.datetime],
    rules: SendRules,
    as_of: dt.datetime,
) -> TouchPlan:
    """Who gets `touch` of `cohort`, with which variant: set-based, one query per kind."""
    members = read_members(session, cohort_id=cohort.id)
    contacts = read_contacts(session)
    split = split_eligible(members, contacts, export.frame["customer_id"])
    dropped = newly_dropped(members, contacts, export.frame["customer_id"])
    drop_members(session, dropped, as_of.astimezone(rules.zone).date())
    eligible = split.eligible.merge(export.frame, on="customer_id", how="left")
    period = cohort.cohort_day.isoformat()
    member_tags = _customer_tags(tags, eligible)
    if touch == 1:
        variants = np.full(len(eligible), INTRO, dtype=object)
    elif touch == 2:
        first = step_status(
            session, path.programme, period, "touch-1", eligible["external_userid"].tolist()
        )
        delivered = (
            eligible["external_userid"]
            .isin(first.loc[first["status"] == DELIVERED, "target_id"])
            .to_numpy()
        )
        interested = (
            eligible["customer_id"]
            .isin(member_tags.loc[member_tags["tag"].isin(intent_tags), "customer_id"])
            .to_numpy()
        )
        variants = touch2_variants(delivered, interested)
    else:
        day = as_of.astimezone(rules.zone).date()
        avoid = None
        if touch == 4:
            third_day = due.get(3, as_of).astimezone(rules.zone).date()
            avoid = pd.Series(
                product_variants(eligible, member_tags, playbooks.products, third_day)
            )
        variants = product_variants(eligible, member_tags, playbooks.products, day, avoid=avoid)
    spec = path.touches[touch - 1]
    wanted = pd.DataFrame(
        {
            "target_kind": CUSTOMER,
            "target_id": eligible["external_userid"],
            "sender": eligible["userid"],
            "channel": spec.delivery,
            "programme": path.programme,
            "step": f"touch-{touch}",
            "period": period,
            "wanted_at": pd.Timestamp(due.get(touch, as_of)),
            "variant": variants,
        }
    )
    contents = {
        name: MessageContent(text=c.text, attachments=c.attachments)
        for name, c in touch_contents(path, touch, playbooks.products).items()
        if name in set(variants)
    }
    return TouchPlan(
        wanted=wanted,
        contents=contents,
        eligible=len(eligible),
        dropped=split.dropped,
        holdout=split.holdout,
        variants={str(k): int(v) for k, v in pd.Series(variants).value_counts().items()},
    )


@task(name="send touch", **STEP)
def send_touch(
    env: Environment,
    playbooks: ConversionPaths,
    rules: SendRules,
    cohort_id: int,
    touch: int,
    as_of: dt.datetime,
    force: bool,
) -> dict[str, Any] | None:
    """Drop, pick variants, plan and send one touch of one cohort; None when it already ran."""
    engine = env.database.get_engine()
    try:
        with Session(engine) as session, session.begin():
            cohort = session.get(Cohort, cohort_id)
            if cohort is None:
                raise LookupError(f"no cohort {cohort_id}: list the cohorts with `siyu path due`")
            runs = {
                r.touch: r
                for r in session.scalars(sa.select(TouchRun).where(TouchRun.cohort_id == cohort_id))
            }
            if touch in runs and runs[touch].status == DONE and not force:
                return None
            path = playbooks.path(cohort.path)
            name = flow_run_name(path, cohort.cohort_day, touch)
            export = newest_accepted_export(env, as_of.astimezone(rules.zone).date())
            if export is None:
                raise LookupError("no accepted export: run tag-sync before the path's touches")
            with env.wecom.get_client() as client:
                tags = contact_tags(session, _tag_names(client))
            plan = plan_touch(
                session,
                cohort,
                path,
                playbooks,
                touch,
                export,
                tags,
                set(path.intent_tags),
                {t: r.due_at for t, r in runs.items()},
                rules,
                as_of,
            )
        report: dict[str, Any] = {
            "eligible": plan.eligible,
            "dropped": plan.dropped,
            "holdout": plan.holdout,
            "variants": plan.variants,
            "paused": path.paused,
        }
        if path.paused and len(plan.wanted):
            # Ops paused the path: every send this touch wanted is recorded skipped, none goes.
            with Session(engine) as session, session.begin():
                summary, written = skip_paused_sends(
                    session,
                    plan.wanted,
                    rules,
                    as_of,
                    playbook=path.programme,
                    version=path.version(),
                    export_checksum=export.checksum,
                )
            skipped = written.skipped + written.replanned
            report.update(plan=summary, ledger={f"skipped:{PAUSED_BY_OPS}": skipped})
        elif len(plan.wanted):
            with env.wecom.get_client() as client:
                sent = send_batch(
                    engine,
                    client,
                    plan.wanted,
                    plan.contents,
                    rules=rules,
                    as_of=as_of,
                    playbook=path.programme,
                    version=path.version(),
                    export_checksum=export.checksum,
                )
            report.update(plan=sent.plan, ledger=sent.ledger, calls=sent.calls)
        with Session(engine) as session, session.begin():
            mark_touch_done(session, cohort_id, touch, report, as_of)
        with Session(engine) as session:
            report["funnel"] = funnel_markdown(_cohort_artifact(session, cohort_id, path.programme))
        report["name"] = name
        return report
    finally:
        engine.dispose()


def touch_markdown(report: dict[str, Any]) -> str:
    """Per touch: eligible, dropped, planned, deferred/skipped by reason, ledger outcome, and
    the cohort's funnel with the conversions attributed to each touch so far."""
    lines = [f"# {report['name']}", ""]
    if report.get("paused"):
        lines += [
            f"**Paused by ops: nothing was sent; every planned send is skipped "
            f"({PAUSED_BY_OPS}).**",
            "",
        ]
    lines.append(f"- eligible: {report['eligible']:,}")
    lines += [f"- dropped ({k}): {v:,}" for k, v in report["dropped"].items()]
    lines.append(f"- holdout (never touched): {report['holdout']:,}")
    lines += [f"- variant {k}: {v:,}" for k, v in sorted(report["variants"].items())]
    lines += [f"- plan {k}: {v:,}" for k, v in sorted(report.get("plan", {}).items())]
    lines += [f"- ledger {k}: {v:,}" for k, v in sorted(report.get("ledger", {}).items())]
    lines += [f"- calls {k}: {v:,}" for k, v in sorted(report.get("calls", {}).items())]
    if report.get("funnel"):
        lines += ["", "## The cohort per touch (conversions: last delivered touch before)", ""]
        lines.append(report["funnel"])
    return "\n".join(lines)


@flow(name="path-touch", persist_result=False, log_prints=False)
def path_touch(
    cohort: int, touch: int, as_of: dt.datetime | None = None, force: bool = False
) -> State:
    """Send one touch of one cohort: drop the converted and unreachable, pick variants, send.

    Args:
        cohort: The cohort's id (its scheduled runs carry it).
        touch: 1 to 4.
        as_of: The time to send for; empty means now in Asia/Shanghai.
        force: Run a touch that already ran (the ledger still sends nobody twice).
    """
    if touch not in (1, 2, 3, 4):
        return Failed(message=f"a path has touches 1 to 4, not {touch}")
    now = _as_of(as_of)
    env = load_environment()
    report = send_touch(env, load_playbooks(), load_send_rules(), cohort, touch, now, force)
    if report is None:
        return Completed(message=f"touch {touch} of cohort {cohort} already ran: nothing to do")
    create_markdown_artifact(
        key=f"path-touch-{cohort}-{touch}",
        markdown=touch_markdown(report),
        description="Eligible, dropped, planned, deferred/skipped by reason, ledger outcome; "
        "the cohort's conversions per touch",
    )
    if report.get("paused"):
        skipped = sum(report.get("ledger", {}).values())
        return Completed(
            message=f"{report['name']}: the path is paused by ops - nothing sent, "
            f"{skipped:,} sends recorded skipped",
            data=report,
        )
    created = sum(v for k, v in report.get("ledger", {}).items() if not k.startswith("failed"))
    return Completed(
        message=f"{report['name']}: {report['eligible']:,} eligible, {created:,} sent or queued",
        data=report,
    )


@flow(name="path-due", persist_result=False, log_prints=False)
def path_due(until: dt.datetime | None = None) -> State:
    """Run every touch that was due by `until` and did not run, once, oldest first.

    Args:
        until: The catch-up's time (ISO, e.g. 2026-12-01T23:59:00+08:00); empty means now.
    """
    now = _as_of(until)
    env = load_environment()
    engine = env.database.get_engine()
    try:
        with Session(engine) as session:
            due = due_touch_runs(session, now)
    finally:
        engine.dispose()
    playbooks, rules = load_playbooks(), load_send_rules()
    ran = []
    for cohort_id, touch, _due_at in due:
        report = send_touch(env, playbooks, rules, cohort_id, touch, now, False)
        if report is not None:
            ran.append(report["name"])
    table = pd.DataFrame({"touch run": ran})
    create_table_artifact(table=table.to_dict(orient="records"), key="path-due")
    return Completed(message=f"{len(ran)} due touches ran", data={"ran": ran})
