"""The hourly contacts sync: pull every employee's WeCom contacts and bind them to bank customers."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State

from siyu.blocks.environment import load_environment
from siyu.tasks.contacts import NewBindings, pull_and_store_contacts

ZONE = ZoneInfo("Asia/Shanghai")
# The daily enrolment's deployment: its concurrency limit of 1 is what keeps a new contacts'
# enrolment from racing the daily one (two at once could put a customer in two cohorts).
ENROLL_DEPLOYMENT = "path-enroll/daily"


def start_new_contacts_enrolment(as_of: dt.datetime, bound: NewBindings) -> str:
    """Ask path-enroll to enrol the customers just bound, as a run of its deployment.

    A run of the deployment, not a subflow: it queues behind a running daily enrolment (the
    deployment's concurrency limit), shows in the UI under its own name, beside the daily runs
    and linked to this sync, and a retry of this sync finds the run it made (the idempotency
    key is this sync's run), so no second enrolment is asked for. The run enrols only customers
    never in a path, so whichever enrolment comes first enrols them and the other finds nobody.
    Customer ids are not passed: Prefect keeps parameters, and people read them.
    Returns what the report says about it.
    """
    from prefect.deployments import run_deployment

    context = FlowRunContext.get()
    sync_run = context.flow_run.id if context and context.flow_run else None
    local = as_of.astimezone(ZONE)
    try:
        run = run_deployment(
            ENROLL_DEPLOYMENT,
            parameters={"as_of": as_of.isoformat(), "new_contacts": True},
            flow_run_name=f"new contacts · {local:%Y-%m-%d %H:%M}",
            timeout=0,
            as_subflow=True,
            idempotency_key=f"new-contacts:{sync_run or local.isoformat()}",
        )
    except ObjectNotFound:
        get_run_logger().warning(
            "deployment %s is not deployed: %s newly bound customers enter a path at the next "
            "path-enroll (run `siyu path enroll` to enrol them now)",
            ENROLL_DEPLOYMENT,
            len(bound.customers),
        )
        return f"{ENROLL_DEPLOYMENT} is not deployed: they enter at the next path-enroll"
    return f"enrolment {run.name!r} started"


@flow(name="contacts-sync", persist_result=False, log_prints=False)
def contacts_sync(as_of: dt.datetime | None = None) -> State:
    """Pull every employee's external contacts from WeCom, with remark mobiles hashed and tags.

    Contacts new since the last sync are bound to customers of the newest accepted export at
    once, and path-enroll is started for them, so their first touch comes right after they
    added their manager.

    Args:
        as_of: The time the sync runs for (ISO, e.g. 2026-12-01T14:00+08:00): the enrolment it
            starts enrols as of then; empty means now in Asia/Shanghai.
    """
    now = as_of or dt.datetime.now(ZONE)
    now = now if now.tzinfo else now.replace(tzinfo=ZONE)
    # Blocks load on first use: this flow never reads env.tag_rules, so a bad edit of the tag
    # rules stops tag-sync alone, never the contacts sync.
    env = load_environment()
    # No exclusive hold on contact state: contacts are upserted, and tag changes a push settles
    # while this pull runs are re-applied after it (store_contacts), so both may run at once.
    stored, bound = pull_and_store_contacts(
        env.wecom, env.database, env.export_source, now.astimezone(ZONE).date()
    )
    enrolment = start_new_contacts_enrolment(now, bound) if bound.customers else None
    message = (
        f"{stored.pairs:,} contact pairs of {stored.employees} employees "
        f"({stored.pairs_with_mobile:,} with a remark mobile; {stored.new_pairs:,} new, "
        f"{stored.gone_pairs:,} gone; {bound.pairs:,} newly bound to a customer)"
    )
    if enrolment:
        message += f"; {enrolment}"
    return Completed(
        message=message,
        data={
            **stored.__dict__,
            "newly_bound": bound.pairs,
            "bind_problem": bound.problem,
            "enrolment": enrolment,
        },
    )
