"""The tag sync's steps as Prefect tasks: thin wrappers that compose the plain functions."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from sqlalchemy.orm import Session

from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.blocks.wecom import WeComApp
from siyu.schemas.models import Contact
from siyu.schemas.tag_rules import MAX_MANAGED_TAGS, TagRuleSet
from siyu.tasks.export import (
    ExportRefused,
    LoadProblem,
    file_checksum,
    load_export,
    newest_export,
    resolve_export_path,
)
from siyu.tasks.export_registry import (
    ExportRecord,
    blocked_since_last_sync,
    last_synced_binding,
    mark_accepted,
    mark_refused,
    mark_synced,
    previous_row_count,
    record_verdict,
    register_export,
    sync_history,
    write_quarantine_file,
)
from siyu.tasks.matching import DEFAULT_BINDING_DROP_THRESHOLD, BindingCount, binding_collapse
from siyu.tasks.outbox import DrainReport, enqueue, supersede
from siyu.tasks.quality import (
    GateResult,
    data_docs_link,
    previous_profile,
    prune_data_docs,
    run_gate,
    store_profile,
)
from siyu.tasks.reports import (
    HISTORY_DAYS,
    HISTORY_KEY,
    SyncSummary,
    gate_markdown,
    history_table,
    sync_markdown,
)
from siyu.tasks.tag_push import (
    TAG_SYNC_PLAN,
    Catalog,
    ensure_catalog,
    plan_mark_tag_calls,
    push_tag_changes,
    reachable_contact_mobiles,
    retire_unused_tags,
    synced_bits,
)
from siyu.tasks.tagging import count_bits, desired_for_contacts, diff_tags

# Customer frames pass between these tasks in memory only: never persisted, never hashed for a
# cache key (Prefect would otherwise write customers' data to its result storage).
STEP = {"persist_result": False, "cache_policy": NO_CACHE}


class ExportNotFound(FileNotFoundError):
    """No export to sync: the landing directory is empty or the named file is missing."""


def _flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except Exception:  # noqa: BLE001 - outside a run (plain function call in tests)
        return None
    run = getattr(ctx, "task_run", None) or getattr(ctx, "flow_run", None)
    return str(getattr(run, "flow_run_id", None) or getattr(run, "id", "")) or None


@dataclass
class ReceivedExport:
    """The file to sync and what siyu already knows of its content."""

    path: Path
    record: ExportRecord


def find_export(source: ExportSource, export_file: str | None) -> Path:
    """The export to sync: the named file inside the landing directory, or the newest landed one.

    A named file outside the landing directory (after resolving links), a directory or a FIFO is
    refused unread, with `ExportNotFound` saying why.
    """
    if not export_file:
        newest = newest_export(source.landing_path())
        if newest is None:
            raise ExportNotFound(
                f"no export in {source.landing_path()} - wait for the core-banking export to land, "
                "or run tag-sync with export_file set"
            )
        export_file = newest.name  # a landed link is confined like a named file
    try:
        path = resolve_export_path(source.landing_path(), export_file)
    except ExportRefused as refused:
        raise ExportNotFound(str(refused)) from None
    return path


@task(name="receive export", **STEP)
def receive_export(source: ExportSource, database: SiyuDatabase, path: Path) -> ReceivedExport:
    """Look the export's content up in siyu's records (registering it if it is new)."""
    engine = database.get_engine()
    try:
        record = register_export(engine, path, file_checksum(path), _flow_run_id())
    finally:
        engine.dispose()
    get_run_logger().info("export %s (#%s) is %s", path.name, record.id, record.status)
    return ReceivedExport(path=path, record=record)


@task(name="gate export", **STEP)
def gate_export(
    source: ExportSource,
    database: SiyuDatabase,
    received: ReceivedExport,
    business_date: date,
    row_failure_threshold: float | None,
    summary: SyncSummary,
) -> GateResult:
    """Load the export and run the quality gate; store the verdict and quarantine; report it.

    The quarantined rows also go to a 0600 file for the bank's data team; the summary gets the
    gate's counts and that file's path (never its rows).
    """
    loaded = load_export(
        received.path,
        source.layout,
        completeness=source.completeness,
        stable_seconds=source.stable_seconds,
        timezone=source.timezone,
    )
    if loaded.checksum and loaded.checksum != received.record.checksum:
        loaded.problems.append(
            LoadProblem(
                "file_complete",
                "the file changed after it was received: it is still being written, wait "
                "until it has landed",
            )
        )
    engine = database.get_engine()
    docs_root = source.reports_path() / "data-docs"
    try:
        docs_dir = docs_root / f"export-{received.record.id}-{_flow_run_id() or 'local'}"
        gate = run_gate(
            loaded,
            expected_date=business_date,
            previous_row_count=previous_row_count(engine, received.record.id),
            branches=source.branches,
            volume_tolerance=source.volume_tolerance,
            row_failure_threshold=(
                source.row_failure_threshold
                if row_failure_threshold is None
                else row_failure_threshold
            ),
            docs_dir=docs_dir,
            previous_profile=previous_profile(engine, received.record.id),
            limits=source.collapse,
        )
        record_verdict(
            engine,
            received.record.id,
            passed=gate.passed,
            export_date=business_date,
            row_count=loaded.row_count,
            checks_total=len(gate.checks),
            checks_failed=sum(not c.passed for c in gate.checks),
            rows_accepted=len(gate.accepted),
            quarantined=gate.quarantined,
            message=gate.message,
        )
        if gate.passed:
            store_profile(engine, received.record.id, gate.profile)
    finally:
        engine.dispose()
    quarantine_file = write_quarantine_file(
        gate.quarantined, source.reports_path(), business_date, received.record.checksum
    )
    summary.checks_total = len(gate.checks)
    summary.checks_failed = sum(not c.passed for c in gate.checks)
    summary.rows_read = len(gate.accepted) + len(gate.quarantined)
    summary.rows_accepted = len(gate.accepted)
    summary.rows_quarantined = len(gate.quarantined)
    if quarantine_file is not None:
        summary.quarantine_file = quarantine_file.relative_to(source.reports_path()).as_posix()
    prune_data_docs(
        docs_root,
        keep_days=source.data_docs_keep_days,
        keep_blocked=source.data_docs_keep_blocked,
        now=datetime.now(UTC),
    )
    docs_path, docs_url = (
        data_docs_link(gate.data_docs, source.reports_path(), source.reports_base_url)
        if gate.data_docs
        else (None, None)
    )
    create_markdown_artifact(
        gate_markdown(
            f"Quality gate: {received.path.name}",
            gate.checks,
            gate.passed,
            gate.message,
            docs_url or docs_path,
            summary.quarantine_file or None,
        ),
        key="export-quality-gate",
        description=f"Great Expectations gate of {received.path.name}",
    )
    if docs_url:
        create_link_artifact(
            docs_url, link_text="Data Docs of this gate run", key="export-data-docs"
        )
    logger = get_run_logger()
    (logger.info if gate.passed else logger.error)("%s", gate.message)
    return gate


MARK_TAG_API = "externalcontact/mark_tag"
# Percent of a push between two progress lines in the log.
PROGRESS_LOG_STEP = 10.0


class RequestTally:
    """WeCom requests per API, summed over every client and every attempt of a run's tasks.

    A plain object on purpose: Prefect hands it to each task run (and each retry of one) as it
    is, so requests made by an attempt that failed are still counted.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, calls: Mapping[str, int]) -> None:
        """Add a client's `calls` counter."""
        with self._lock:
            self._counts.update(calls)

    def get(self, api: str) -> int:
        """Requests made to `api` so far."""
        with self._lock:
            return self._counts[api]


@dataclass
class TagPlan:
    """The changes one sync makes, as stored in the outbox (or only counted, in a dry run)."""

    batch: str
    planned: int
    summary: SyncSummary
    catalog: Catalog | None
    # Why siyu refused to sync this export although the gate passed it (its binding collapsed):
    # nothing was created, stored or sent.
    refused: str | None = None


@task(name="plan tag changes", **STEP)
def plan_tag_changes(
    wecom: WeComApp,
    database: SiyuDatabase,
    source: ExportSource,
    rules: TagRuleSet,
    record: ExportRecord,
    accepted: pd.DataFrame,
    summary: SyncSummary,
) -> TagPlan:
    """Bind contacts to customers, evaluate the rules, diff against synced tags, store the calls.

    A dry run only reads: it creates no tag, stores no binding, no outbox entry, no status.
    Binding comes first: when its share collapsed against the last synced export (a changed
    salt, a moved mobile column), the plan is refused before anything is created in WeCom, and
    a real run stores the export as blocked.
    """
    engine = database.get_engine()
    client = wecom.get_client()
    try:
        pairs, binding = desired_for_contacts(
            accepted, reachable_contact_mobiles(engine), rules, source.salt()
        )
        summary.pairs_managed = len(pairs)
        summary.pairs_unbound = binding.unmatched_pairs
        summary.pairs_ambiguous = binding.ambiguous_pairs
        refused = binding_collapse(
            BindingCount(
                bound=len(pairs),
                contacts=len(pairs) + binding.unmatched_pairs + binding.ambiguous_pairs,
            ),
            last_synced_binding(engine, record.id),
            # Read with a default until the export-source block carries the field.
            getattr(source, "binding_drop_threshold", DEFAULT_BINDING_DROP_THRESHOLD),
            business_date=summary.export_date,
        )
        if refused is not None:
            if not summary.dry_run:
                mark_refused(engine, record.id, refused)
            get_run_logger().error("%s", refused)
            return TagPlan(
                batch=record.batch, planned=0, summary=summary, catalog=None, refused=refused
            )
        catalog = ensure_catalog(client, engine, rules, create=not summary.dry_run)
        diff = diff_tags(
            pairs, synced_bits(engine, catalog), len(catalog.tags), catalog.retired_bits
        )
        summary.pairs_changed = len(diff.changes)
        summary.tags_added = _popcount(diff.changes["add_bits"])
        summary.tags_removed = _popcount(diff.changes["remove_bits"])
        summary.tags_created = catalog.created
        summary.tag_counts = [
            (g, t, int(b), int(a))
            for (g, t), b, a in zip(
                catalog.tags, diff.counts_before, diff.counts_after, strict=True
            )
        ]
        planned = 0
        if not summary.dry_run:
            # Accepted before the entries are stored: a crash from here on is resumed by the
            # next run, which finishes this batch before it plans again.
            mark_accepted(engine, record.id)
            _remember_bindings(engine, pairs)
            supersede(engine, TAG_SYNC_PLAN, record.batch)
            calls = plan_mark_tag_calls(diff.changes, catalog, record.batch)
            enqueue(engine, record.batch, calls, plan=TAG_SYNC_PLAN)
            planned = len(calls)
        summary.calls_planned = planned
    finally:
        client.close()
        engine.dispose()
    get_run_logger().info(
        "%s pairs managed, %s to change (%s tags to add, %s to remove)",
        summary.pairs_managed,
        summary.pairs_changed,
        summary.tags_added,
        summary.tags_removed,
    )
    return TagPlan(batch=record.batch, planned=planned, summary=summary, catalog=catalog)


def _popcount(bits: pd.Series) -> int:
    return int(count_bits(bits.to_numpy(dtype=np.uint64), MAX_MANAGED_TAGS).sum())


def _remember_bindings(engine: sa.Engine, pairs: pd.DataFrame) -> None:
    """Store which customer each pair belongs to (later flows target customers through it)."""
    with Session(engine) as session, session.begin():
        current = pd.DataFrame(
            session.execute(
                sa.select(Contact.userid, Contact.external_userid, Contact.customer_id)
            ).all(),
            columns=["userid", "external_userid", "old"],
        )
        merged = pairs[["userid", "external_userid", "customer_id"]].merge(
            current, on=["userid", "external_userid"]
        )
        changed = merged[merged["customer_id"] != merged["old"]]
        if not changed.empty:
            session.connection().execute(
                sa.update(Contact)
                .where(
                    Contact.userid == sa.bindparam("u"),
                    Contact.external_userid == sa.bindparam("x"),
                )
                .values(customer_id=sa.bindparam("c")),
                [
                    {"u": r.userid, "x": r.external_userid, "c": r.customer_id}
                    for r in changed.itertuples(index=False)
                ],
            )


@task(name="push tag changes", retries=2, retry_delay_seconds=20, **STEP)
def push_tags(
    wecom: WeComApp, database: SiyuDatabase, batch: str, tally: RequestTally | None = None
) -> DrainReport:
    """Send the batch's outbox to WeCom, settling unknown outcomes first. Safe to rerun.

    Every request this attempt makes is added to `tally`, also when the attempt fails.
    """
    engine = database.get_engine()
    client = wecom.get_client()
    logger = get_run_logger()
    # The progress card is made at the first settled call: a drain with nothing left to send
    # (a finished batch) shows none. The card moves every 5 %, the log says the counts every 10 %.
    step: dict = {"card": 0.0, "log": PROGRESS_LOG_STEP, "id": None, "done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        share = 100.0 * done / total
        step["done"], step["total"] = done, total
        words = f"mark_tag changes of {batch}: {done:,} of {total:,} settled"
        if step["id"] is None:
            step["id"] = create_progress_artifact(share, description=words)
        if share >= step["card"] or done == total:
            update_progress_artifact(step["id"], share, description=words)
            step["card"] = share + 5.0
        if share >= step["log"] and done < total:
            logger.info("%s (%.0f%%)", words, share)
            step["log"] = (share // PROGRESS_LOG_STEP + 1) * PROGRESS_LOG_STEP

    try:
        report = push_tag_changes(client, engine, batch, progress=progress)
    finally:
        if tally is not None:
            tally.add(client.calls)
        client.close()
        engine.dispose()
    if step["id"] is not None:
        update_progress_artifact(
            step["id"],
            100.0,
            description=f"mark_tag changes of {batch}: {step['total']:,} of {step['total']:,} settled",
        )
    logger.info(
        "sent %s, settled without a call %s, resent %s, refused %s",
        report.sent,
        report.reconciled,
        report.resent,
        report.failed,
    )
    return report


@task(name="retire unused tags", retries=2, retry_delay_seconds=20, **STEP)
def retire_tags(wecom: WeComApp, database: SiyuDatabase, catalog: Catalog) -> list[str]:
    """Delete from WeCom the retired managed tags that no contact carries any more."""
    if not catalog.retired:
        return []
    engine = database.get_engine()
    client = wecom.get_client()
    try:
        retired = retire_unused_tags(client, engine, catalog)
    finally:
        client.close()
        engine.dispose()
    waiting = len(catalog.retired) - len(retired)
    get_run_logger().info(
        "retired tags deleted from WeCom: %s; still carried, kept for a later run: %s",
        ", ".join(retired) or "none",
        waiting,
    )
    return retired


@task(name="report tag sync", **STEP)
def report_tag_sync(
    database: SiyuDatabase, record: ExportRecord, summary: SyncSummary, finished: bool
) -> SyncSummary:
    """Publish the sync's report and the sync history; mark the export synced once drained."""
    until = date.fromisoformat(summary.export_date) if summary.export_date else None
    engine = database.get_engine()
    try:
        if finished:
            mark_synced(engine, record.id, summary.as_dict())
        history = (
            sync_history(engine, until - timedelta(days=HISTORY_DAYS - 1), until) if until else []
        )
    finally:
        engine.dispose()
    create_markdown_artifact(
        sync_markdown(summary),
        key="tag-sync-report",
        description=f"Tag sync of {summary.export_file}",
    )
    if history:
        create_table_artifact(
            history_table(history),
            key=HISTORY_KEY,
            description=(
                f"Tag syncs of the {HISTORY_DAYS} days up to {until.isoformat()}, newest first: "
                "verdict, pairs changed, contacts bound, contacts per tier with the change "
                "against a week before"
            ),
        )
    return summary


@task(name="tell ops the sync is back", **STEP)
def tell_ops_resolved(robot: Any, database: SiyuDatabase, record: ExportRecord) -> str | None:
    """After blocked exports, a synced one resolves their alert: say so to the ops robot."""
    engine = database.get_engine()
    try:
        blocked = blocked_since_last_sync(engine, record.id)
    finally:
        engine.dispose()
    if not blocked:
        return None
    files = ", ".join(blocked[-3:]) + (f" and {len(blocked) - 3} more" if len(blocked) > 3 else "")
    message = (
        f"resolved: {record.label} is synced; the blocked export(s) before it ({files}) need "
        "nothing more"
    )
    robot.notify(body=message, subject="siyu: tag-sync is back")
    get_run_logger().info(message)
    return message
