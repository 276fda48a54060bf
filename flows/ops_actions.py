"""Ops' manual actions, each a flow with a typed form: rerun, cancel, pause, resume, resend.

Every action is a deployment without a schedule: ops fill in its form in the Prefect UI
(Deployments -> the action -> Run). Each one says what it did in an artifact, and none sends
anybody anything twice: they go through the same ledger, outbox and reconcile paths as the
scheduled flows.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Failed, State
from pydantic import Field
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import ConversionPaths
from siyu.blocks.environment import BLOCK_NAME, load_environment
from siyu.blocks.group_cadence import CadenceTemplate, GroupOverride
from siyu.flows.conversion_path import path_touch
from siyu.flows.sends_track import sends_track
from siyu.schemas.cadence import FAILED as WIN_FAILED
from siyu.schemas.cadence import GRANTED, PAID, RewardWin
from siyu.tasks.rewards import mask_chat_id, resend_payout
from siyu.tasks.tracking import cancel_message

ZONE = ZoneInfo("Asia/Shanghai")

Touch = Annotated[int, Field(ge=1, le=4, description="The touch: 1 to 4")]
CohortId = Annotated[int, Field(ge=1, description="The cohort's id (in the path-enroll artifact)")]
PathName = Annotated[
    str, Field(min_length=1, description="The path's name, as in the Conversion Paths block")
]
ChatId = Annotated[str, Field(min_length=1, description="The group's chat_id (wr...)")]
BillNumber = Annotated[
    str,
    Field(
        min_length=1,
        max_length=28,
        pattern=r"^[0-9A-Za-z]+$",
        description="The payout's bill number (mch_billno), in the rewards-settle artifact",
    ),
]
MessageHandle = Annotated[
    str, Field(min_length=1, description="The mass message's msgid, or its ledger (outbox) key")
]


def _as_of(value: dt.datetime | None) -> dt.datetime:
    now = value or dt.datetime.now(ZONE)
    return now if now.tzinfo else now.replace(tzinfo=ZONE)


def _report(key: str, title: str, lines: list[str]) -> None:
    """The artifact every action leaves: what it was asked and what it did."""
    create_markdown_artifact(
        key=key,
        markdown="\n".join([f"# {title}", "", *[f"- {line}" for line in lines]]) + "\n",
        description=title,
    )


def _passed_on(name: str, state: State) -> State:
    """The action's own final state from its subflow's, message included (Prefect would say
    only "All states completed")."""
    if state.is_completed():
        return Completed(message=state.message)
    return Failed(message=f"{name} ended {state.name}: {state.message}")


# -- reruns ----------------------------------------------------------------------------------


@flow(name="touch-rerun", persist_result=False, log_prints=False)
def touch_rerun(
    cohort: CohortId, touch: Touch, force: bool = False, as_of: dt.datetime | None = None
) -> State:
    """Run one touch of one cohort again, now: after a failure, or to send what was deferred.

    A touch that already ran does nothing unless forced; forced, it sends only to customers
    the ledger has not sent this touch (nobody gets it twice).

    Args:
        cohort: The cohort's id (in the path-enroll artifact).
        touch: The touch, 1 to 4.
        force: Run it even if it already ran.
        as_of: The time to send for; empty means now in Asia/Shanghai.
    """
    state = path_touch(cohort=cohort, touch=touch, as_of=as_of, force=force, return_state=True)
    _report(
        f"touch-rerun-{cohort}-{touch}",
        f"Touch {touch} of cohort {cohort} rerun by ops",
        [f"forced: {'yes' if force else 'no'}", f"path-touch ended {state.name}: {state.message}"],
    )
    return _passed_on("path-touch", state)


@flow(name="tracking-rerun", persist_result=False, log_prints=False)
def tracking_rerun(as_of: dt.datetime | None = None) -> State:
    """Run the sends tracker now: settle mass messages, remind, expire, send what was deferred.

    Args:
        as_of: The time to track for (ISO, e.g. 2026-12-01T10:00+08:00); empty means now.
    """
    now = _as_of(as_of)
    state = sends_track(as_of=now, return_state=True)
    _report(
        "tracking-rerun",
        "Sends tracking rerun by ops",
        [f"as of {now.isoformat(timespec='minutes')}", f"ended {state.name}: {state.message}"],
    )
    return _passed_on("sends-track", state)


# -- a pending mass message ------------------------------------------------------------------


@flow(name="message-cancel", persist_result=False, log_prints=False)
def message_cancel(message: MessageHandle, as_of: dt.datetime | None = None) -> State:
    """Cancel a mass message its employee has not confirmed; its sends fail `cancelled`.

    A message already confirmed cannot be taken back (WeCom sent it): nothing changes then.

    Args:
        message: The msgid (in the unconfirmed alert or the sends-track artifact), or the
            ledger rows' outbox key.
        as_of: When it is cancelled; empty means now.
    """
    now = _as_of(as_of)
    env = load_environment()
    engine = env.database.get_engine()
    try:
        with env.wecom.get_client() as client:
            report = cancel_message(engine, client, message, as_of=now)
    except (LookupError, ValueError, RuntimeError) as exc:
        return Failed(message=str(exc))
    if report.confirmed:
        text = (
            f"mass message {report.msgid} was already confirmed by its employee: WeCom sent it, "
            "nothing cancelled (sends-track settles it)"
        )
    else:
        text = (
            f"mass message {report.msgid or '(not created yet)'} cancelled by ops: "
            f"{report.cancelled} sends failed 'cancelled', {report.already_final} already final"
        )
    _report(
        "message-cancel",
        "Mass message cancelled by ops",
        [text, f"WeCom cancel_groupmsg_send called: {'yes' if report.wecom_cancelled else 'no'}"],
    )
    return Completed(message=text, data=report.as_dict())


# -- pause and resume --------------------------------------------------------------------------


def _paths() -> tuple[ConversionPaths, bool]:
    """The saved ConversionPaths block (True), or the defaults to save (False)."""
    try:
        return ConversionPaths.load(BLOCK_NAME), True
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            return ConversionPaths(), False
        raise


def set_path_paused(path: str, paused: bool) -> tuple[bool, bool]:
    """Set `paused` on the path and save the block; (changed, the block existed before)."""
    block, saved = _paths()
    target = block.path(path)
    changed = target.paused != paused
    target.paused = paused
    if changed or not saved:
        block.save(BLOCK_NAME, overwrite=True)
    return changed, saved


def _path_action(path: str, paused: bool) -> State:
    word = "paused" if paused else "resumed"
    try:
        changed, saved = set_path_paused(path, paused)
    except KeyError as exc:
        return Failed(message=str(exc.args[0]))
    text = (
        f"path {path} {word}"
        + ("" if changed else f" (it was {word} already)")
        + ("" if saved else "; the default Conversion Paths block was saved with it")
    )
    lines = [text]
    if paused:
        lines.append("its touch runs send nothing and record each send skipped; enrolment goes on")
    _report(f"path-{'pause' if paused else 'resume'}", f"Path {path} {word} by ops", lines)
    return Completed(message=text)


@flow(name="path-pause", persist_result=False, log_prints=False)
def path_pause(path: PathName) -> State:
    """Pause a conversion path: its touch runs send nothing until it is resumed.

    Each send a paused touch would make is recorded skipped, so the funnel shows it.

    Args:
        path: The path's name, as in the Conversion Paths block.
    """
    return _path_action(path, True)


@flow(name="path-resume", persist_result=False, log_prints=False)
def path_resume(path: PathName) -> State:
    """Resume a paused conversion path: its next touch runs send again.

    Args:
        path: The path's name, as in the Conversion Paths block.
    """
    return _path_action(path, False)


def _template() -> tuple[CadenceTemplate, bool]:
    try:
        return CadenceTemplate.load(BLOCK_NAME), True
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            return CadenceTemplate(), False
        raise


def set_group_paused(chat_id: str, paused: bool) -> tuple[bool, bool]:
    """Set `paused` on the group's override (made if none) and save; (changed, override existed)."""
    template, saved = _template()
    override = next((o for o in template.overrides if o.chat_id == chat_id), None)
    existed = override is not None
    if override is None:
        override = GroupOverride(chat_id=chat_id)
        template.overrides.append(override)
    changed = override.paused != paused
    override.paused = paused
    if changed or not saved:
        template.save(BLOCK_NAME, overwrite=True)
    return changed, existed


def _cadence_action(chat_id: str, paused: bool) -> State:
    word = "paused" if paused else "resumed"
    changed, existed = set_group_paused(chat_id, paused)
    masked = mask_chat_id(chat_id)
    text = (
        f"group {masked}'s cadence {word}"
        + ("" if changed else f" (it was {word} already)")
        + ("" if existed else "; an override was made for it")
    )
    lines = [text]
    if paused:
        lines.append("its slots are recorded skipped; nothing is posted or paid for it")
    _report(f"cadence-{'pause' if paused else 'resume'}", f"Group cadence {word} by ops", lines)
    return Completed(message=text)


@flow(name="cadence-pause", persist_result=False, log_prints=False)
def cadence_pause(chat_id: ChatId) -> State:
    """Pause one group's weekly cadence: its slots send nothing until it is resumed.

    Args:
        chat_id: The group's chat_id (wr...), as in the group-health artifact.
    """
    return _cadence_action(chat_id, True)


@flow(name="cadence-resume", persist_result=False, log_prints=False)
def cadence_resume(chat_id: ChatId) -> State:
    """Resume one group's paused weekly cadence from its next slot.

    Args:
        chat_id: The group's chat_id (wr...).
    """
    return _cadence_action(chat_id, False)


# -- a failed payout ---------------------------------------------------------------------------


@flow(name="payout-resend", persist_result=False, log_prints=False)
def payout_resend(billno: BillNumber, as_of: dt.datetime | None = None) -> State:
    """Resend one failed reward payout, under its own bill number, after asking WeChat Pay.

    WeChat Pay is asked first: a payout it has under this bill number is recorded paid and not
    sent again. Otherwise it is sent once more with the same bill number (WeChat Pay pays a bill
    number at most once).

    Args:
        billno: The payout's bill number (mch_billno), in the rewards-settle artifact.
        as_of: When it is resent; empty means now in Asia/Shanghai.
    """
    from siyu.flows.group_cadence import Playbooks

    now = _as_of(as_of)
    env = load_environment()
    engine = env.database.get_engine()
    with Session(engine) as session:
        win = session.scalar(sa.select(RewardWin).where(RewardWin.billno == billno))
        if win is None:
            return Failed(
                message=f"no reward with bill number {billno}: copy it from the rewards-settle "
                "artifact"
            )
        status, chat = win.status, mask_chat_id(win.chat_id)
    if status == PAID:
        text = f"bill {billno} (group {chat}) is paid already: nothing sent"
        _report("payout-resend", f"Payout {billno}: nothing to resend", [text])
        return Completed(message=text)
    if status not in (WIN_FAILED, GRANTED):
        return Failed(message=f"bill {billno} is {status}: only a failed payout is resent")
    pay = Playbooks(env).pay_client()
    with env.wecom.get_client() as client:
        resent = resend_payout(engine, billno, pay, client.convert_to_openid, now)
    final, reason, report = resent.status, resent.reason, resent.report
    lines = [
        f"bill {billno} (group {chat}): WeChat Pay asked first; it had it already: "
        f"{'yes, recorded paid' if resent.reconciled else 'no, sent again'}",
        f"now {final}" + (f" ({reason})" if reason and final != PAID else ""),
        f"calls: {dict(sorted(pay.calls.items()))}; reconciled {resent.reconciled}",
    ]
    _report("payout-resend", f"Payout {billno} resent by ops", lines)
    if final == PAID:
        return Completed(message=f"bill {billno} paid", data=report.as_dict())
    return Failed(
        message=f"bill {billno} is {final} ({reason}): see the payout-resend artifact; "
        "a limit of the day is paid by the next rewards-settle"
    )


def action_flows() -> dict[str, Any]:
    """Every action by its flow name (the deployment table lists one deployment each)."""
    return {
        f.name: f
        for f in (
            touch_rerun,
            message_cancel,
            path_pause,
            path_resume,
            cadence_pause,
            cadence_resume,
            payout_resend,
            tracking_rerun,
        )
    }
