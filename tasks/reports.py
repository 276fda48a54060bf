"""Reports ops read in the Prefect UI: the gate's verdict and the sync's counts, ids masked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    title: str, checks: Sequence[Any], passed: bool, message: str, data_docs: str | None
) -> str:
    """The gate's verdict: every check, pass or fail, with counts and masked sample ids."""
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
    return "\n".join(lines)


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
    if outcome == BLOCKED:
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
