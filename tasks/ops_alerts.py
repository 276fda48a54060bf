"""One way to ops: alerts queued once by key, posted to the ops robot in digests within its limit.

Who feeds the queue: every failed or crashed run of a siyu flow, and every Prefect event named
`siyu.*` whose payload carries `subject` (one line), `next_step` (one line) and optionally `link`
and `key` (the emitter's own identity of the alert; the event id otherwise). Both are read from
Prefect's event store since a stored cursor, so nothing is lost while no flush runs, and a
re-read (the cursor keeps a margin) queues nothing twice.

How it leaves: a flush claims a digest of pending alerts (grouped by kind, each with its next
step and link, within the robot's text limit), posts it, and marks it; at most `per_minute`
posts in any rolling 60 s per robot (WeCom's group robot takes 20 a minute; 18 leaves room for
the two direct posts siyu makes: the alert flow's own failure and the tag sync's "resolved").
A post whose outcome is lost (a crash or a timeout between the call and its mark) is never
posted again: its alerts become `unknown` and ops get one notice saying so.

The rate limit paces real throughput, so the flush takes a clock (the flow passes the wall
clock; tests their own).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from siyu.schemas.models import insert_or_update
from siyu.schemas.ops import (
    CLAIMED,
    COUNTED_POST_STATUSES,
    PENDING,
    POSTED,
    REFUSED,
    UNKNOWN,
    OpsAlert,
    OpsCursor,
    OpsPost,
)

logger = logging.getLogger(__name__)

FLOW_FAILED, FLOW_CRASHED = "prefect.flow-run.Failed", "prefect.flow-run.Crashed"
FLOW_EVENTS: tuple[str, ...] = (FLOW_FAILED, FLOW_CRASHED)
SIYU_EVENT_PREFIX = "siyu."
SIYU_TAG = "siyu"  # every siyu deployment's runs carry it
ALERT_FLOW = "ops-alerts"
WINDOW = dt.timedelta(seconds=60)
RATE_LIMITED = 45009  # WeCom: api freq out of limit
# WeCom's group robot: text content at most 2048 bytes of UTF-8, 20 messages a minute.
ROBOT_TEXT_BYTES = 2048
ROBOT_PER_MINUTE = 20
DEFAULT_PER_MINUTE = 18
# Room kept for what the robot block's template adds around {{subject}} and {{body}}.
TEMPLATE_MARGIN_BYTES = 64
FIELD_BYTES = 300  # one subject, next step or link in a digest, at most
EVENTS_CURSOR = "prefect-events"
EVENT_NAMESPACE = uuid.UUID("0b3f7e2a-5d41-4c8e-9a6b-71c2d4e8f903")
EVENTS_PAGE = 50  # the most /events/filter returns a page

# What ops do when a flow fails, by flow: the run's message says what failed.
NEXT_STEPS: dict[str, str] = {
    "tag-sync": (
        "read the run's message: a blocked export names the failed checks - have core banking "
        "fix and re-export it (or drop the corrected file in the landing folder), then rerun "
        "tag-sync; nothing is pushed twice"
    ),
    "contacts-sync": "read the run's message, fix the cause; the next hourly run catches up",
    "sends-track": (
        "read the run's message; rerun it by hand (ops actions: tracking-rerun) once fixed: "
        "it settles, reminds and expires from where it stopped"
    ),
    "path-enroll": "read the run's message, fix the cause and rerun path-enroll for the day",
    "path-touch": (
        "read the run's message, then rerun the touch (ops actions: touch-rerun); nobody is "
        "sent a touch twice"
    ),
    "group-cadence": "read the run's message, fix the cause and rerun the slot (nobody twice)",
    "activity-winners": "read the run's message and rerun activity-winners for the activity",
    "rewards-settle": (
        "read the run's message; rerun rewards-settle (unknown payouts are asked about first) "
        "or resend one bill (ops actions: payout-resend)"
    ),
    "group-health": "read the run's message; the next daily run recomputes everything",
}
# The manual actions (flows/ops_actions.py): a failed one is told too.
OPS_ACTION_FLOWS: tuple[str, ...] = (
    "touch-rerun",
    "message-cancel",
    "path-pause",
    "path-resume",
    "cadence-pause",
    "cadence-resume",
    "payout-resend",
    "tracking-rerun",
)
KNOWN_FLOWS: frozenset[str] = frozenset(NEXT_STEPS) | frozenset(OPS_ACTION_FLOWS)
DEFAULT_NEXT_STEP = "read the run's message (open the link), fix the cause and rerun it"
CRASHED_NEXT_STEP = (
    "its process or machine died: check the worker (or `siyu up`), then rerun it; the outbox "
    "sends nothing twice"
)


class Alert(BaseModel):
    """One alert as queued: its identity, what happened, what to do, where to look."""

    key: str = Field(description="Identity: queued once")
    kind: str = Field(description="What digests group by, e.g. 'tag-sync Failed'")
    subject: str = Field(description="One line, ids masked")
    next_step: str = Field(description="One line: what ops do now")
    link: str | None = Field(default=None, description="The run's page in the Prefect UI")
    occurred_at: dt.datetime = Field(description="When it happened")


class FlushSettings(BaseModel):
    """How the queue is posted: the robot's limit as data."""

    per_minute: int = Field(
        default=DEFAULT_PER_MINUTE,
        ge=1,
        le=ROBOT_PER_MINUTE,
        description="Posts per robot in any rolling 60 s (WeCom allows 20)",
    )
    max_bytes: int = Field(
        default=ROBOT_TEXT_BYTES,
        ge=256,
        description="UTF-8 bytes of one post's text (WeCom: 2048 for text, 4096 for markdown)",
    )
    in_flight_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A post claimed longer ago than this and not marked has lost its outcome",
    )
    batch: int = Field(default=200, ge=1, description="Pending alerts looked at per digest")


# -- text ------------------------------------------------------------------------------------


def one_line(text: object, max_bytes: int = FIELD_BYTES) -> str:
    """`text` on one line, at most `max_bytes` of UTF-8 (cut with an ellipsis)."""
    flat = re.sub(r"\s+", " ", str(text or "")).strip()
    data = flat.encode()
    if len(data) <= max_bytes:
        return flat
    return data[: max_bytes - 3].decode(errors="ignore").rstrip() + "…"


def _size(text: str) -> int:
    return len(text.encode())


def digest_subject(count: int) -> str:
    return f"siyu ops: {count} alert{'s' if count != 1 else ''} to act on"


def render_digest(alerts: Sequence[Alert]) -> str:
    """The body of one post: alerts grouped by kind, each with its next step and link.

    A kind whose alerts share one next step states it once, under its heading.
    """
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        groups.setdefault(alert.kind, []).append(alert)
    lines: list[str] = []
    for kind, members in groups.items():
        lines.append(f"■ {kind} ({len(members)})")
        steps = {a.next_step for a in members}
        shared = steps.pop() if len(steps) == 1 else None
        if shared is not None:
            lines.append(f"next: {shared}")
        for alert in members:
            lines.append(f"- {alert.subject}")
            if shared is None:
                lines.append(f"  next: {alert.next_step}")
            if alert.link:
                lines.append(f"  {alert.link}")
    return "\n".join(lines)


def post_text(alerts: Sequence[Alert]) -> tuple[str, str]:
    """(subject, body) of the post for `alerts`."""
    return digest_subject(len(alerts)), render_digest(alerts)


def choose_digest(pending: Sequence[Alert], max_bytes: int) -> list[Alert]:
    """The longest prefix of `pending` (oldest first) whose post fits in `max_bytes`.

    Always at least one alert: each field is cut to FIELD_BYTES, so one alert always fits.
    """
    budget = max_bytes - TEMPLATE_MARGIN_BYTES
    chosen: list[Alert] = []
    for alert in pending:
        subject, body = post_text([*chosen, alert])
        if chosen and _size(subject) + 1 + _size(body) > budget:
            break
        chosen.append(alert)
    return chosen


# -- what feeds the queue --------------------------------------------------------------------


def _related_name(event: Any, role: str) -> str | None:
    for resource in event.related:
        if resource.role == role:
            return resource.name
    return None


def flow_run_link(flow_run_id: str) -> str | None:
    """The run's page in the Prefect UI (PREFECT_UI_URL, or the API address without /api)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=flow_run_id)


def alert_from_event(
    event: Any,
    *,
    watched_flows: Iterable[str],
    link_for: Callable[[str], str | None] = flow_run_link,
) -> Alert | None:
    """The alert a Prefect event makes, or None when it is not one for ops.

    A failed or crashed run of a watched flow (or of any run tagged `siyu`) is one, but the
    alert flow's own, which its watchdog automation posts directly; so is any `siyu.*` event. A `siyu.*`
    event that breaks the contract (no subject) still alerts, naming the event, so nothing an
    emitter meant for ops is dropped.
    """
    payload = dict(event.payload or {})
    occurred = event.occurred
    if event.event in FLOW_EVENTS:
        flow_name = _related_name(event, "flow")
        tagged = any(r.role == "tag" and r.id == f"prefect.tag.{SIYU_TAG}" for r in event.related)
        if flow_name is None or flow_name == ALERT_FLOW:
            return None  # the alert flow's own failure goes straight to the robot (watchdog)
        if flow_name not in set(watched_flows) and not tagged:
            return None
        state = (payload.get("validated_state") or {}) if isinstance(payload, dict) else {}
        state_name = str(state.get("name") or event.event.rsplit(".", 1)[-1])
        message = one_line(state.get("message") or "no message", 240)
        run_id = event.resource.id.removeprefix("prefect.flow-run.")
        run_name = event.resource.name or run_id[:8]
        crashed = event.event == FLOW_CRASHED
        link = link_for(run_id)
        return Alert(
            key=f"event:{event.id}",
            kind=f"{flow_name} {state_name}",
            subject=one_line(f"{flow_name} run {run_name} is {state_name}: {message}"),
            next_step=one_line(
                CRASHED_NEXT_STEP if crashed else NEXT_STEPS.get(flow_name, DEFAULT_NEXT_STEP)
            ),
            link=one_line(link) if link else None,
            occurred_at=occurred,
        )
    if event.event.startswith(SIYU_EVENT_PREFIX):
        subject = payload.get("subject")
        next_step = payload.get("next_step")
        link = payload.get("link")
        return Alert(
            key=one_line(payload.get("key") or f"event:{event.id}", 255),
            kind=event.event,
            subject=one_line(subject or f"{event.event} (the event carried no subject)"),
            next_step=one_line(
                next_step or "ask the team that emits this event to add subject and next_step"
            ),
            link=one_line(link) if link else None,
            occurred_at=occurred,
        )
    return None


def emit_ops_event(
    event: str,
    *,
    subject: str,
    next_step: str,
    key: str,
    resource_id: str,
    link: str | None = None,
) -> bool:
    """Tell ops through Prefect's events (the contract every `siyu.*` emitter keeps).

    `key` is the alert's identity: the same key is queued once, however often it is emitted.
    Returns False when no Prefect API is configured (nothing could be told).
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # No server to tell (a plain script or unit test): Prefect would start an ephemeral one
        # that no ops-alerts run reads. Said in the log instead.
        logger.warning("no Prefect API to tell ops through: %s - %s", subject, next_step)
        return False
    payload: dict[str, str] = {
        "subject": one_line(subject),
        "next_step": one_line(next_step),
        "key": one_line(key, 255),
    }
    if link:
        payload["link"] = link
    sent = emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id},
        payload=payload,
        # The same key, the same event id: a re-emit after a crash is one event to Prefect too.
        id=uuid.uuid5(EVENT_NAMESPACE, payload["key"]),
    )
    if sent is None:
        return False
    from prefect.events.worker import EventsWorker

    EventsWorker.instance().wait_until_empty()  # out of this process before it may end
    return True


def read_events(since: dt.datetime, until: dt.datetime) -> list[Any]:
    """Failed or crashed flow runs and siyu.* events that occurred in [since, until], oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
    )

    events: list[Any] = []
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since, until=until),
                event=EventNameFilter(prefix=[SIYU_EVENT_PREFIX, *FLOW_EVENTS]),
                order=EventOrder.ASC,
            ),
            limit=EVENTS_PAGE,
        )
        events.extend(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events.extend(page.events)
    return events


def queue_alerts(engine: sa.Engine, alerts: Iterable[Alert]) -> int:
    """Queue each alert whose key is new; returns how many were new."""
    rows = [
        {
            "key": a.key,
            "kind": one_line(a.kind, 128),
            "subject": a.subject,
            "next_step": a.next_step,
            "link": a.link,
            "occurred_at": a.occurred_at,
            "status": PENDING,
        }
        for a in alerts
    ]
    if not rows:
        return 0
    new = 0
    with engine.begin() as connection:
        statement = insert_or_update(connection.dialect.name, OpsAlert)
        for start in range(0, len(rows), 500):
            result = connection.execute(
                statement.on_conflict_do_nothing(index_elements=["key"]),
                rows[start : start + 500],
            )
            new += max(result.rowcount or 0, 0)
    return new


def read_cursor(engine: sa.Engine, name: str = EVENTS_CURSOR) -> dt.datetime | None:
    with Session(engine) as session:
        cursor = session.get(OpsCursor, name)
        return cursor.read_until if cursor else None


def save_cursor(engine: sa.Engine, until: dt.datetime, name: str = EVENTS_CURSOR) -> None:
    with Session(engine) as session, session.begin():
        cursor = session.get(OpsCursor, name)
        if cursor is None:
            session.add(OpsCursor(cursor=name, read_until=until))
        elif until > cursor.read_until:
            cursor.read_until = until


def collect(
    engine: sa.Engine,
    *,
    now: dt.datetime,
    watched_flows: Iterable[str],
    margin: dt.timedelta = dt.timedelta(minutes=5),
    first_lookback: dt.timedelta = dt.timedelta(hours=1),
    reader: Callable[[dt.datetime, dt.datetime], list[Any]] = read_events,
) -> tuple[int, int]:
    """Queue the alerts of the events since the cursor (less a margin); (events read, queued).

    Events reach Prefect's store seconds after they occur, and not always in order: the
    margin re-reads what a previous read may have missed, and the keys keep it queued once.
    """
    watched = set(watched_flows)
    last = read_cursor(engine)
    since = (last - margin) if last else (now - first_lookback)
    events = reader(since, now)
    alerts = [a for e in events if (a := alert_from_event(e, watched_flows=watched)) is not None]
    queued = queue_alerts(engine, alerts)
    save_cursor(engine, now)
    return len(events), queued


# -- how it leaves ---------------------------------------------------------------------------


class RobotRefused(Exception):
    """The robot answered and did not post (e.g. 45009 over its limit): safe to post later."""

    def __init__(self, message: str, errcode: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


class RobotOutcomeUnknown(Exception):
    """The post was sent but no answer came back: it may or may not be in the ops group."""


class Robot(Protocol):
    """Where digests go: posts (subject, body) or raises RobotRefused / RobotOutcomeUnknown."""

    def post(self, subject: str, body: str) -> None: ...


class BlockRobot:
    """A CustomWebhookNotificationBlock (WeCom's group robot), whose answer is read.

    The block's own `notify` trusts any HTTP 200, but WeCom answers 200 with an errcode (45009
    over the limit): a digest taken for posted would be lost. The block's template (which ops
    may edit) still shapes the request.
    """

    def __init__(self, block: Any) -> None:
        self.block = block

    def post(self, subject: str, body: str) -> None:
        import httpx

        args = self.block._build_request_args(body=body, subject=subject)
        try:
            with httpx.Client() as client:
                reply = client.request(**args)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RobotRefused(
                f"the ops robot could not be reached: {type(exc).__name__}"
            ) from None
        except httpx.HTTPError as exc:
            raise RobotOutcomeUnknown(
                f"no answer from the ops robot: {type(exc).__name__}"
            ) from None
        if reply.status_code >= 400:
            raise RobotRefused(f"the ops robot answered HTTP {reply.status_code}")
        try:
            answer = reply.json()
        except ValueError:
            return  # not WeCom (another webhook): its 2xx is its yes
        errcode = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if errcode:
            raise RobotRefused(
                f"the ops robot answered {errcode}: {answer.get('errmsg', '')}", errcode
            )


@dataclass
class FlushReport:
    """What one flush did: counts only."""

    posts: int = 0
    alerts_posted: int = 0
    refused: list[str] = field(default_factory=list)
    busy: int = 0  # refusals for the robot's own limit (45009): not an error, posted later
    unknown_posts: int = 0
    left_pending: int = 0
    waiting_for_window: bool = False
    sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, other: FlushReport) -> FlushReport:
        """Two flushes of one run as one: counts added, the later one's queue left."""
        return FlushReport(
            posts=self.posts + other.posts,
            alerts_posted=self.alerts_posted + other.alerts_posted,
            refused=[*self.refused, *other.refused],
            busy=self.busy + other.busy,
            unknown_posts=self.unknown_posts + other.unknown_posts,
            left_pending=other.left_pending,
            waiting_for_window=other.waiting_for_window,
            sizes=[*self.sizes, *other.sizes],
        )


def _to_alert(row: OpsAlert) -> Alert:
    return Alert(
        key=row.key,
        kind=row.kind,
        subject=row.subject,
        next_step=row.next_step,
        link=row.link,
        occurred_at=row.occurred_at,
    )


def _lock_robot(session: Session, robot: str, now: dt.datetime) -> None:
    """Serialise flushers of one robot: a write on its row (a row lock on PostgreSQL, the
    database's write lock on SQLite) held until the claim commits."""
    name = f"robot:{robot}"[:64]
    moved = session.execute(
        sa.update(OpsCursor).where(OpsCursor.cursor == name).values(updated_at=now)
    ).rowcount
    if not moved:
        session.add(OpsCursor(cursor=name, read_until=now))
        session.flush()


def _settle_lost_posts(engine: sa.Engine, robot: str, now: dt.datetime, in_flight: float) -> int:
    """Claims older than the in-flight window lost their outcome: unknown, and ops are told."""
    stale = now - dt.timedelta(seconds=in_flight)
    with Session(engine) as session, session.begin():
        lost = list(
            session.scalars(
                sa.select(OpsPost).where(
                    OpsPost.robot == robot, OpsPost.status == CLAIMED, OpsPost.claimed_at < stale
                )
            )
        )
        notices = []
        for post in lost:
            post.status = UNKNOWN
            session.execute(
                sa.update(OpsAlert).where(OpsAlert.post_id == post.id).values(status=UNKNOWN)
            )
            notices.append(_lost_notice(post, now))
    if lost:
        queue_alerts(engine, notices)
    return len(lost)


def _lost_notice(post: OpsPost, now: dt.datetime) -> Alert:
    claimed = post.claimed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Alert(
        key=f"lost-post:{post.robot}:{post.id}",
        kind="ops robot",
        subject=(
            f"a digest of {post.alerts} alerts (post {post.id}, {claimed}) may not have reached "
            "this group: siyu stopped while posting it"
        ),
        next_step=(
            f"if you did not see it, read the ops_alerts rows of post {post.id} (or the "
            "ops-alerts runs' artifacts around that time); they are not posted again"
        ),
        occurred_at=now,
    )


def flush(
    engine: sa.Engine,
    robot: Robot,
    *,
    robot_name: str,
    clock: Callable[[], dt.datetime],
    settings: FlushSettings | None = None,
) -> FlushReport:
    """Post pending alerts as digests while the robot's rolling minute allows: claim, post, mark."""
    settings = settings or FlushSettings()
    report = FlushReport()
    report.unknown_posts = _settle_lost_posts(
        engine, robot_name, clock(), settings.in_flight_seconds
    )
    while True:
        now = clock()
        with Session(engine) as session, session.begin():
            _lock_robot(session, robot_name, now)
            used = session.scalar(
                sa.select(sa.func.count())
                .select_from(OpsPost)
                .where(
                    OpsPost.robot == robot_name,
                    OpsPost.status.in_(COUNTED_POST_STATUSES),
                    OpsPost.claimed_at > now - WINDOW,
                )
            )
            rows = list(
                session.scalars(
                    sa.select(OpsAlert)
                    .where(OpsAlert.status == PENDING)
                    .order_by(OpsAlert.occurred_at, OpsAlert.id)
                    .limit(settings.batch)
                )
            )
            if not rows:
                break
            if (used or 0) >= settings.per_minute:
                report.waiting_for_window = True
                break
            chosen = choose_digest([_to_alert(r) for r in rows], settings.max_bytes)
            subject, body = post_text(chosen)
            size = _size(subject) + 1 + _size(body)
            post = OpsPost(
                robot=robot_name,
                status=CLAIMED,
                alerts=len(chosen),
                size_bytes=size,
                claimed_at=now,
            )
            session.add(post)
            session.flush()
            ids = [r.id for r in rows[: len(chosen)]]
            session.execute(
                sa.update(OpsAlert)
                .where(OpsAlert.id.in_(ids))
                .values(status=CLAIMED, post_id=post.id)
            )
            post_id = post.id
        try:
            robot.post(subject, body)
        except RobotRefused as exc:
            with Session(engine) as session, session.begin():
                session.execute(
                    sa.update(OpsPost)
                    .where(OpsPost.id == post_id)
                    .values(status=REFUSED, error=one_line(exc, 255))
                )
                session.execute(
                    sa.update(OpsAlert)
                    .where(OpsAlert.post_id == post_id)
                    .values(status=PENDING, post_id=None)
                )
            if exc.errcode == RATE_LIMITED:
                report.busy += 1
            else:
                report.refused.append(one_line(exc, 255))
            break  # the robot said no: the next flush tries again
        except RobotOutcomeUnknown:
            with Session(engine) as session, session.begin():
                post_row = session.get(OpsPost, post_id)
                post_row.status = UNKNOWN
                session.execute(
                    sa.update(OpsAlert).where(OpsAlert.post_id == post_id).values(status=UNKNOWN)
                )
                notice = _lost_notice(post_row, clock())
            queue_alerts(engine, [notice])
            report.unknown_posts += 1
            break
        with Session(engine) as session, session.begin():
            session.execute(
                sa.update(OpsPost)
                .where(OpsPost.id == post_id)
                .values(status=POSTED, posted_at=clock())
            )
            session.execute(
                sa.update(OpsAlert).where(OpsAlert.post_id == post_id).values(status=POSTED)
            )
        report.posts += 1
        report.alerts_posted += len(chosen)
        report.sizes.append(size)
    with Session(engine) as session:
        report.left_pending = int(
            session.scalar(
                sa.select(sa.func.count()).select_from(OpsAlert).where(OpsAlert.status == PENDING)
            )
            or 0
        )
    return report


def queue_summary(engine: sa.Engine) -> dict[str, int]:
    """Alerts by status, for the artifact."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OpsAlert.status, sa.func.count()).group_by(OpsAlert.status)
        ).all()
    return {status: int(n) for status, n in sorted(rows)}
