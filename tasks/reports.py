"""Reports ops read in the Prefect UI: the gate's verdict and the sync's counts, ids masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from siyu.tasks.export_registry import HistoryRecord

# WeCom codes a per-row failure can carry, in words ops understand.
ROW_ERRORS: dict[int, str] = {
    84061: "customer deleted the account manager (no contact relation)",
    40096: "unknown external contact",
    40068: "tag id no longer exists in WeCom",
}


# How a sync ended, as the report's title says it.
SENT, DRY_RUN, BLOCKED, ALREADY_SYNCED = "sent", "dry run", "blocked", "already synced"
TITLES = {
    SENT: "sent to WeCom",
    DRY_RUN: "dry run: nothing was sent",
    BLOCKED: "blocked: nothing was sent",
    ALREADY_SYNCED: "already synced: nothing was sent",
}


@dataclass
class SyncSummary:
    """Everything one tag sync reports. Only counts and masked ids: no mobiles, no names."""

    export_file: str
    export_date: str | None
    dry_run: bool
    outcome: str = ""  # SENT, DRY_RUN, BLOCKED or ALREADY_SYNCED, once known
    checks_total: int = 0
    checks_failed: int = 0
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    pairs_managed: int = 0  # bound (employee, contact) pairs of customers in this export
    pairs_unbound: int = 0  # contacts with no customer in this export (tags left as they are)
    pairs_ambiguous: int = 0
    pairs_changed: int = 0
    tags_added: int = 0
    tags_removed: int = 0
    tags_created: int = 0
    calls_planned: int = 0
    calls_sent: int = 0
    calls_reconciled: int = 0
    calls_resent: int = 0
    calls_failed: int = 0
    # mark_tag requests WeCom received from this run: every attempt, the resumed push, the
    # client's retries and the push task's retries included.
    mark_tag_requests: int = 0
    tags_retired: list[str] = field(default_factory=list)  # group/tag deleted from WeCom
    row_errors: dict[int, int] = field(default_factory=dict)
    tag_counts: list[tuple[str, str, int, int]] = field(
        default_factory=list
    )  # group, tag, before, after
    # The quarantined rows for the bank's data team, relative to the reports directory.
    quarantine_file: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict for the database and the flow's return value."""
        out = dict(self.__dict__)
        out["row_errors"] = {str(k): v for k, v in self.row_errors.items()}
        out["tag_counts"] = [list(t) for t in self.tag_counts]
        out["tags_retired"] = list(self.tags_retired)
        return out


def record_push(
    summary: SyncSummary, pushed: Any, row_error_threshold: float, requests: int | None = None
) -> bool:
    """Put a push's outcome into the summary and its message; True when WeCom refused too many.

    `pushed` is the outbox's DrainReport; `requests` the mark_tag requests the run made (the
    client's count, retries included), which is what the message reports. Refused rows below
    the threshold are warnings: the run completes and the report lists them by error code.
    """
    summary.outcome = SENT
    summary.mark_tag_requests = (
        pushed.sent + pushed.resent + pushed.failed if requests is None else requests
    )
    summary.calls_sent = pushed.sent
    summary.calls_reconciled = pushed.reconciled
    summary.calls_resent = pushed.resent
    summary.calls_failed = pushed.failed
    summary.row_errors = dict(pushed.errors)
    attempted = pushed.sent + pushed.resent + pushed.failed
    refused_share = pushed.failed / attempted if attempted else 0.0
    summary.message = (
        f"{summary.export_file}: {summary.pairs_changed:,} contact pairs changed with "
        f"{summary.mark_tag_requests:,} mark_tag requests; {pushed.failed:,} refused by WeCom"
    )
    if summary.tags_retired:
        summary.message += f"; {len(summary.tags_retired)} retired tags deleted"
    if refused_share > row_error_threshold:
        summary.message += (
            f" ({refused_share:.1%} of calls, above the {row_error_threshold:.0%} threshold) - check "
            "the contacts listed in the report, run contacts-sync, then rerun tag-sync"
        )
        return True
    if pushed.failed:
        summary.message += " - completed with warnings, see the report"
    return False


def gate_markdown(
    title: str,
    checks: Sequence[Any],
    passed: bool,
    message: str,
    data_docs: str | None,
    quarantine_file: str | None = None,
) -> str:
    """The gate's verdict: every check, pass or fail, with counts and masked sample ids.

    The quarantine file is named by its path only: its rows carry customer ids.
    """
    lines = [
        f"# {title}",
        "",
        f"**{'PASSED' if passed else 'BLOCKED'}**: {message}",
        "",
        "| check | level | result | offending rows | sample (masked) |",
        "|---|---|---|---:|---|",
    ]
    for c in sorted(checks, key=lambda c: (c.passed, c.level != "table")):
        result = "pass" if c.passed else "**FAIL**"
        sample = ", ".join(c.sample) if c.sample else ""
        lines.append(
            f"| {c.description} (`{c.name}`) | {c.level} | {result} | {c.failed_count:,} | {sample} |"
        )
    if data_docs:
        lines += ["", f"Data Docs for this run: `{data_docs}`"]
    if quarantine_file:
        lines += ["", QUARANTINE_NOTE.format(path=quarantine_file)]
    return "\n".join(lines)


QUARANTINE_NOTE = (
    "Quarantined rows for the bank's data team (line, customer id, reasons): "
    "`{path}` in the reports directory"
)


def sync_markdown(s: SyncSummary) -> str:
    """The sync's report: rows, pairs, calls, per-row errors and per-tag counts before and after.

    A blocked or already-synced run says so in its title and shows only what it did (no rows of
    zeros for steps that never ran).
    """
    outcome = s.outcome or (DRY_RUN if s.dry_run else SENT)
    lines = [
        f"# Tag sync of {s.export_file} ({s.export_date or 'unknown date'}), {TITLES[outcome]}",
        "",
        s.message,
    ]
    if outcome == ALREADY_SYNCED:
        return "\n".join(lines)
    rows = [
        "",
        "| | count |",
        "|---|---:|",
        f"| checks passed | {s.checks_total - s.checks_failed} of {s.checks_total} |",
    ]
    if s.rows_read or outcome != BLOCKED:
        rows.append(
            f"| rows read / accepted / quarantined | {s.rows_read:,} / {s.rows_accepted:,} / "
            f"{s.rows_quarantined:,} |"
        )
    if outcome == BLOCKED and not s.pairs_managed + s.pairs_unbound + s.pairs_ambiguous:
        if s.quarantine_file:
            rows += ["", QUARANTINE_NOTE.format(path=s.quarantine_file)]
        return "\n".join(lines + rows)
    rows += [
        f"| contact pairs managed (bound to a customer in this export) | {s.pairs_managed:,} |",
        f"| contact pairs left as they are (no customer in this export) | {s.pairs_unbound:,} |",
        f"| contact pairs with ambiguous remark mobiles (left as they are) | {s.pairs_ambiguous:,} |",
        f"| pairs to change / tags to add / tags to remove | {s.pairs_changed:,} / {s.tags_added:,} / {s.tags_removed:,} |",
        f"| managed tags created in WeCom | {s.tags_created:,} |",
    ]
    if outcome == SENT:
        rows += [
            f"| mark_tag requests made (every attempt, retries included) | {s.mark_tag_requests:,} |",
            f"| changes planned / sent / settled without a call / resent | {s.calls_planned:,} / {s.calls_sent:,} / {s.calls_reconciled:,} / {s.calls_resent:,} |",
            f"| rows WeCom refused | {s.calls_failed:,} |",
            f"| retired tags deleted from WeCom | {len(s.tags_retired):,} |",
        ]
    lines += rows
    if s.quarantine_file:
        lines += ["", QUARANTINE_NOTE.format(path=s.quarantine_file)]
    if s.row_errors:
        lines += ["", "## Rows WeCom refused", "", "| code | meaning | rows |", "|---:|---|---:|"]
        for code, n in sorted(s.row_errors.items()):
            lines.append(f"| {code} | {ROW_ERRORS.get(code, 'other error')} | {n:,} |")
    if s.tags_retired:
        lines += ["", "## Retired tags deleted from WeCom", ""]
        lines += [f"- {name}" for name in s.tags_retired]
    if s.tag_counts:
        lines += [
            "",
            "## Contacts per tag",
            "",
            "| group | tag | before | after | change |",
            "|---|---|---:|---:|---:|",
        ]
        for group, tag, before, after in s.tag_counts:
            lines.append(f"| {group} | {tag} | {before:,} | {after:,} | {after - before:+,} |")
    return "\n".join(lines)


# -- the sync history: one table ops read over weeks ------------------------------------------

HISTORY_KEY = "tag-sync-history"
# Days of history the table shows, up to the sync's business date.
HISTORY_DAYS = 28

VERDICTS = {
    "synced": "synced",
    "passed": "gated, not synced (a dry run, or refused before its push)",
    "accepted": "push not finished (the next run finishes it)",
}


def _verdict(record: HistoryRecord) -> str:
    if record.status == "blocked":
        if record.checks_failed:
            return f"blocked: {record.checks_failed} of {record.checks_total} checks failed"
        return "blocked: contacts bound collapsed"
    return VERDICTS.get(record.status, record.status)


def history_table(records: Sequence[HistoryRecord]) -> list[dict[str, Any]]:
    """One row per export, newest first: day, file, verdict, pairs changed, contacts bound, and
    contacts per tier (the first managed tag group) with the change against the synced export
    a week earlier."""
    synced = [r for r in records if r.status == "synced" and r.report.get("tag_counts")]
    tier_group = synced[0].report["tag_counts"][0][0] if synced else None
    tiers = [t[1] for t in synced[0].report["tag_counts"] if t[0] == tier_group] if synced else []
    by_day: dict[date, Mapping[str, int]] = {}
    for r in synced:  # newest record of a day first: it is that day's state
        by_day.setdefault(r.export_date, _tier_counts(r, tier_group))
    table = []
    for r in records:
        row: dict[str, Any] = {
            "day": r.export_date.isoformat(),
            "file": r.file_name,
            "verdict": _verdict(r),
            "pairs changed": "",
            "contacts bound": "",
        }
        if r.status == "synced":
            bound = int(r.report.get("pairs_managed", 0))
            contacts = bound + int(r.report.get("pairs_unbound", 0))
            contacts += int(r.report.get("pairs_ambiguous", 0))
            row["pairs changed"] = f"{int(r.report.get('pairs_changed', 0)):,}"
            row["contacts bound"] = f"{bound:,} of {contacts:,}"
        counts = _tier_counts(r, tier_group) if r.status == "synced" else {}
        week_before = by_day.get(r.export_date - timedelta(days=7))
        for tier in tiers:
            cell = ""
            if tier in counts:
                cell = f"{counts[tier]:,}"
                if week_before is not None and tier in week_before:
                    cell += f" ({counts[tier] - week_before[tier]:+,} w/w)"
            row[tier] = cell
        table.append(row)
    return table


def _tier_counts(record: HistoryRecord, group: str | None) -> dict[str, int]:
    """Contacts per tag of `group` after the record's sync."""
    return {t[1]: int(t[3]) for t in record.report.get("tag_counts", []) if t[0] == group}


# -- dry runs told apart in the Runs list -----------------------------------------------------

DRY_RUN_TAG = "dry-run"
DRY_RUN_SUFFIX = " · dry run"


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def dry_run_aware_name() -> str:
    """A flow run's name, with " · dry run" when its `dry_run` parameter is set.

    Given to `@flow(flow_run_name=...)`: Prefect calls it as the run starts, inside the run. The
    name the run already has is kept (one ops typed in the Run form too), and a name that says
    "dry run" already is not said twice.
    """
    from prefect.runtime import flow_run

    name = flow_run.get_name() or flow_run.get_flow_name() or "run"
    if _is_true(flow_run.get_parameters().get("dry_run")) and "dry run" not in name.lower():
        name += DRY_RUN_SUFFIX
    return name


def tag_as_dry_run() -> None:
    """Add the `dry-run` tag to the current flow run, so the Runs list can filter on it."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    tags = list(dict.fromkeys([*(ctx.flow_run.tags or []), DRY_RUN_TAG]))
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, tags=tags)
    ctx.flow_run.tags = tags
