"""The weekly group cadence: slot runs, winners runs, the join hook, reward settlements, group health, the catch-up."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State

from siyu.blocks.environment import BLOCK_NAME, Environment, load_environment
from siyu.blocks.group_cadence import (
    ActivityLibrary,
    CadenceTemplate,
    EntriesSource,
    PayoutAccount,
    ProductCalendar,
)
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComError
from siyu.blocks.wecom_pay import PayClient, ensure_payout_rate_limit
from siyu.flows.sends_track import load_send_rules
from siyu.schemas.settings import EMBEDDED, Settings, environment_kind
from siyu.tasks.activities import run_winners as _run_winners
from siyu.tasks.cadence import (
    due_activities,
    iso_week,
    load_roster,
    occurrences,
    open_join_hooks,
    run_slot,
    served_groups,
    slot_has_run,
)
from siyu.tasks.group_health import check_health as _check_health
from siyu.tasks.group_health import message_activity
from siyu.tasks.reports import dry_run_aware_name, tag_as_dry_run
from siyu.tasks.rewards import settle_rewards as _settle_rewards

ZONE = ZoneInfo("Asia/Shanghai")
WINNERS_DEPLOYMENT = "activity-winners/on-demand"
B = TypeVar("B", bound=Block)


class Playbooks:
    """The cadence's blocks for one run, loaded once; defaults where none is saved (embedded)."""

    def __init__(self, env: Environment, name: str = BLOCK_NAME) -> None:
        self.env = env
        self.name = name
        self.template = load_block(CadenceTemplate, name, CadenceTemplate)
        self.calendar = load_block(ProductCalendar, name, ProductCalendar)
        self.library = load_block(ActivityLibrary, name, ActivityLibrary)
        self.rules: SendRules = load_send_rules(name)

    def entries(self) -> EntriesSource:
        return load_block(EntriesSource, self.name, _embedded_entries)

    def payout_account(self) -> PayoutAccount:
        return load_block(
            PayoutAccount, self.name, lambda: PayoutAccount.from_env(self.env.wecom.corp_id)
        )

    def pay_client(self) -> PayClient:
        """The payout client, its shared rate limit made (or updated) first."""
        account = self.payout_account()
        if account.shared_pacing:
            ensure_payout_rate_limit(account)
        return account.get_client()


def _embedded_entries() -> EntriesSource:
    return EntriesSource(landing_dir=str(Settings.from_env().landing_dir / "entries"))


def load_block(block_type: type[B], name: str, default: Any) -> B:
    """The block saved under `name`; its defaults when none is saved.

    Money and customer files never come from demo defaults in production: the entries source
    and the payout account must be saved there.
    """
    try:
        return block_type.load(name)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
    strict = block_type in (EntriesSource, PayoutAccount)
    if strict and environment_kind() != EMBEDDED:
        raise LookupError(
            f"the {block_type.__name__} block {name!r} is not saved: save it in the Blocks page "
            f"(block type {block_type.get_block_type_slug()!r}) before running the cadence"
        )
    get_run_logger().info("no %s block %r saved: using its defaults", block_type.__name__, name)
    return default()


def _as_of(as_of: dt.datetime | None) -> dt.datetime:
    now = as_of or dt.datetime.now(ZONE)
    return now if now.tzinfo is not None else now.replace(tzinfo=ZONE)


def _schedule_winners(key: str, announce_at: dt.datetime) -> str | None:
    """A scheduled run of activity-winners at the announcement time (visible in the UI)."""
    from prefect.deployments import run_deployment

    try:
        run = run_deployment(
            WINNERS_DEPLOYMENT,
            parameters={"activity": key, "as_of": announce_at.isoformat()},
            scheduled_time=announce_at,
            timeout=0,
            as_subflow=False,
            idempotency_key=f"winners:{key}",
        )
    except ObjectNotFound:
        get_run_logger().warning(
            "deployment %s is not served: run `siyu activity winners %s` at %s, or `siyu cadence "
            "due` after it", WINNERS_DEPLOYMENT, key, announce_at.isoformat(),
        )  # fmt: skip
        return None
    return str(run.id)


# Thin task wrappers: one task run a step, never one a group; results hold customer ids, so
# nothing is persisted or cached.
STEP: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}


@task(name="serve-slot", **STEP)
def serve_slot(
    playbooks: Playbooks, slot: str, as_of: dt.datetime, chat_ids: list[str] | None, dry_run: bool
) -> dict[str, Any]:
    env = playbooks.env
    with env.wecom.get_client() as client:
        report = run_slot(
            env.database.get_engine(), client, template=playbooks.template,
            calendar=playbooks.calendar, library=playbooks.library, rules=playbooks.rules,
            slot_name=slot, as_of=as_of, chat_ids=chat_ids, dry_run=dry_run,
        )  # fmt: skip
    return report.as_dict()


run_winners = task(name="activity-winners", **STEP)(_run_winners)
settle_rewards = task(name="settle-rewards", **STEP)(_settle_rewards)
check_health = task(name="check-health", **STEP)(_check_health)


def _slot_markdown(report: dict[str, Any]) -> str:
    sends = report.get("sends") or {}
    lines = [
        f"# Slot {report['slot']} ({report['week']}){' - dry run' if report['dry_run'] else ''}",
        f"- groups served: {report['groups']}, owners: {report['owners']}",
        f"- plan: {sends.get('plan', {})}",
        f"- ledger: {sends.get('ledger', {})}",
        f"- calls: {sends.get('calls', {})}",
        f"- products placed: {report['products']}",
        f"- paused by ops (recorded skipped): {report.get('paused', 0)}",
    ]
    if report.get("activity"):
        lines.append(f"- activity {report['activity']}: winners at {report['announce_at']}")
    return "\n".join(lines)


# A dry run is named "... · dry run" and tagged dry-run: the Runs list tells it apart.
@flow(name="group-cadence", flow_run_name=dry_run_aware_name, persist_result=False)
def group_cadence(
    slot: str,
    as_of: dt.datetime | None = None,
    chat_ids: list[str] | None = None,
    dry_run: bool = False,
    schedule_winners: bool = True,
) -> State:
    """Serve one weekly slot to every group on the cadence template (or to the chats listed).

    Args:
        slot: The template's slot, e.g. mon-post, tue-game, fri-big.
        as_of: The time to run for (ISO); empty means now in Asia/Shanghai.
        chat_ids: Only these groups (a manual run for one group); empty means all on the template.
        dry_run: Plan and report, send and record nothing.
        schedule_winners: For a game, schedule its winners run at the announcement time.
    """
    if dry_run:
        tag_as_dry_run()
    now = _as_of(as_of)
    playbooks = Playbooks(load_environment())
    report = serve_slot(playbooks, slot, now, chat_ids or None, dry_run)
    create_markdown_artifact(key=f"slot-{slot}", markdown=_slot_markdown(report),
                             description="Groups served, sends by delivery and status, products")  # fmt: skip
    if report.get("activity") and not dry_run and schedule_winners:
        _schedule_winners(report["activity"], dt.datetime.fromisoformat(report["announce_at"]))
    return Completed(
        message=f"slot {slot} {report['week']}: {report['groups']} groups of {report['owners']} owners",
        data=report,
    )


@flow(name="activity-winners", persist_result=False)
def activity_winners(activity: str, as_of: dt.datetime | None = None) -> State:
    """Choose an activity's winners from its entries, grant the rewards, announce them.

    Args:
        activity: The activity key, e.g. weekly:tue-game:2026-W49.
        as_of: The announcement time (ISO); empty means now in Asia/Shanghai.
    """
    now = _as_of(as_of)
    env = load_environment()
    playbooks = Playbooks(env)
    with env.wecom.get_client() as client:
        report = run_winners(
            env.database.get_engine(), client, library=playbooks.library,
            entries=playbooks.entries(), rules=playbooks.rules, key=activity, as_of=now,
        )  # fmt: skip
    over = report.rewards.get("over_budget") or {}
    if over:
        # The grant alerted ops (siyu.rewards.over-budget); the log says it where the run is read.
        get_run_logger().warning(
            "%s: %s wins over budget were recorded unpaid: raise the budget in the Activity "
            "Library block or leave them unpaid", activity, sum(over.values()),
        )  # fmt: skip
    rows = [
        {"group": chat, "winners": "、".join(masked)}
        for chat, masked in sorted(report.winners_masked.items())
    ]
    create_table_artifact(key="activity-winners", table=rows or [{"group": "-", "winners": "-"}],
                          description=f"{activity}: entries {report.entries}, correct {report.correct}, "
                          f"winners {report.winners}, rewards {report.rewards}")  # fmt: skip
    return Completed(
        message=f"{activity}: {report.winners} winners of {report.players} players",
        data=report.as_dict(),
    )


@flow(name="rewards-settle", persist_result=False)
def rewards_settle(as_of: dt.datetime | None = None, in_flight_seconds: float = 30.0) -> State:
    """Pay every granted win whose pay day has come, and finish any interrupted settlement.

    Args:
        as_of: The time to settle for (ISO); empty means now in Asia/Shanghai.
        in_flight_seconds: How long a payout without an answer is left before it is asked about.
    """
    now = _as_of(as_of)
    env = load_environment()
    playbooks = Playbooks(env)
    pay = playbooks.pay_client()
    with env.wecom.get_client() as client:
        report = settle_rewards(
            env.database.get_engine(), pay, client.convert_to_openid, as_of=now,
            in_flight_seconds=in_flight_seconds,
        )  # fmt: skip
    create_markdown_artifact(
        key="rewards-settle",
        markdown=(f"# Settlement {now.isoformat()}\n- due: {report.due}\n- paid: {report.paid} "
                  f"({report.paid_fen / 100:.2f} yuan)\n- reconciled: {report.reconciled}\n"
                  f"- failed: {report.failed}\n- later (limits): {report.later}"),
        description="Payouts: paid, failed with reason",
    )  # fmt: skip
    return Completed(
        message=f"{report.paid} paid, {sum(report.failed.values())} failed", data=report.as_dict()
    )


@flow(name="group-health", persist_result=False)
def group_health(date: dt.date | None = None) -> State:
    """Members, joins and leaves, participation and message activity per group; who is dying.

    Args:
        date: The day to assess (YYYY-MM-DD); empty means today in Asia/Shanghai.
    """
    day = date or dt.datetime.now(ZONE).date()
    env = load_environment()
    playbooks = Playbooks(env)
    with env.wecom.get_client() as client:
        roster = load_roster(client, playbooks.template)
        health = check_health(
            env.database.get_engine(), client, roster["chat_id"].tolist(), day=day,
            thresholds=playbooks.template.health,
        )  # fmt: skip
        owners = sorted(set(roster["owner"]))
        try:
            activity = message_activity(client, owners, day) if owners else None
        except WeComError as exc:
            # Message figures add to the table; their absence must not hide the dying groups.
            get_run_logger().warning("groupchat/statistic unavailable for %s: %s", day, exc)
            activity = None
    dying = health[health["dying"]]
    table = health.assign(day=health["day"].astype(str)).to_dict(orient="records")
    create_table_artifact(key="group-health", table=table or [{"chat_id": "-"}],
                          description=f"{day}: {len(dying)} dying of {len(health)} groups")  # fmt: skip
    if len(dying):
        # check-health alerted ops (siyu.groups.dying); the log says it where the run is read.
        get_run_logger().warning(
            "%d groups are dying (%s): give them a fresh activity or check their owner",
            len(dying), ", ".join(dying["chat_id"].head(20)),
        )  # fmt: skip
    return Completed(
        message=f"{len(dying)} dying of {len(health)} groups",
        data={"dying": dying["chat_id"].tolist(), "groups": len(health),
              "messages": activity.to_dict(orient="records") if activity is not None else []},
    )  # fmt: skip


@flow(name="cadence-due", persist_result=False)
def cadence_due(
    until: dt.datetime | None = None,
    since: dt.datetime | None = None,
    in_flight_seconds: float = 30.0,
) -> State:
    """Run once every slot, winners run and payout due by `until` that did not run.

    Args:
        until: Run what was due up to this time (ISO); empty means now in Asia/Shanghai.
        since: Look back from here (default: seven days before `until`).
    """
    end = _as_of(until)
    start = _as_of(since) if since else end - dt.timedelta(days=7)
    env = load_environment()
    playbooks = Playbooks(env)
    engine = env.database.get_engine()
    done: dict[str, list[str]] = {"slots": [], "winners": []}
    with env.wecom.get_client() as client:
        roster = load_roster(client, playbooks.template)
        for at, slot in occurrences(playbooks.template, start, end):
            day = at.date()
            served = served_groups(roster, playbooks.template, slot, day)["chat_id"]
            if slot_has_run(engine, playbooks.template, slot, iso_week(day), served):
                continue
            run_slot(
                engine, client, template=playbooks.template, calendar=playbooks.calendar,
                library=playbooks.library, rules=playbooks.rules, slot_name=slot.name, as_of=at,
                roster=roster,
            )  # fmt: skip
            done["slots"].append(f"{slot.name}@{at.isoformat()}")
        entries = playbooks.entries()
        for key, announce_at in due_activities(engine, end):
            run_winners(
                engine, client, library=playbooks.library, entries=entries, rules=playbooks.rules,
                key=key, as_of=announce_at,
            )  # fmt: skip
            done["winners"].append(key)
        pay = playbooks.pay_client()
        settled = settle_rewards(
            engine, pay, client.convert_to_openid, as_of=end, in_flight_seconds=in_flight_seconds
        )
    return Completed(
        message=f"{len(done['slots'])} slots, {len(done['winners'])} winners runs, {settled.paid} paid",
        data={**done, "settlement": settled.as_dict()},
    )


@flow(name="join-hook", persist_result=False)
def join_hook(
    as_of: dt.datetime | None = None, days_back: int = 7, script: str = "join-hook"
) -> State:
    """The join hook: newcomers who play the join game win, paid five working days later.

    Opens the day's join-hook lottery in every group on the template (and any of the last days a
    missed run did not open), then draws every day that has ended: each member who joined within
    the script's days and played that day wins once ever; members who joined and did not play
    get nothing. rewards-settle pays each win the script's working days after the day of play.

    Args:
        as_of: The time to run for (ISO); empty means now in Asia/Shanghai.
        days_back: Also open the lotteries of this many days before (a missed run's).
        script: The Activity Library script of the hook (kind join_hook).
    """
    now = _as_of(as_of)
    env = load_environment()
    playbooks = Playbooks(env)
    hook = playbooks.library.script(script)
    if hook.kind != "join_hook":
        raise ValueError(
            f"activity script {script!r} is a {hook.kind}, not a join hook: name the join_hook "
            "script of the Activity Library block"
        )
    if hook.window_minutes < 24 * 60:
        get_run_logger().warning(
            "the %s script takes answers for %d minutes after midnight only: set its "
            "window_minutes to 1440 in the Activity Library block so the whole day's plays count",
            hook.name, hook.window_minutes,
        )  # fmt: skip
    engine = env.database.get_engine()
    drawn: list[dict[str, Any]] = []
    with env.wecom.get_client() as client:
        roster = load_roster(client, playbooks.template)
        chats = sorted(set(roster["chat_id"]) - playbooks.template.paused())
        opened = open_join_hooks(
            engine, playbooks.template, hook, chats, as_of=now, days_back=days_back
        )
        entries = playbooks.entries()
        for key, announce_at in due_activities(engine, now, script=hook.name):
            report = run_winners(
                engine, client, library=playbooks.library, entries=entries, rules=playbooks.rules,
                key=key, as_of=announce_at,
            )  # fmt: skip
            drawn.append(
                {"activity": key, "players": report.players, "winners": report.winners,
                 "granted": report.rewards.get("granted", 0),
                 "won_before": report.rewards.get("once_only", 0),
                 "over_budget": sum((report.rewards.get("over_budget") or {}).values())}
            )  # fmt: skip
    create_table_artifact(key="join-hook", table=drawn or [{"activity": "-", "winners": 0}],
                          description=f"join hook at {now.isoformat()}: {len(chats)} groups, "
                          f"{len(drawn)} days drawn")  # fmt: skip
    return Completed(
        message=f"join hook: {len(chats)} groups open, {len(drawn)} days drawn, "
        f"{sum(d['granted'] for d in drawn)} wins granted",
        data={"groups": len(chats), "opened": opened, "drawn": drawn},
    )
