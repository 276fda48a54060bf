"""The reports ops read: titles that say what happened, counts of every request, no zero rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from siyu.tasks.reports import (
    ALREADY_SYNCED,
    BLOCKED,
    DRY_RUN,
    SyncSummary,
    gate_markdown,
    record_push,
    sync_markdown,
)


@dataclass
class Pushed:
    """What record_push reads of the outbox's DrainReport."""

    sent: int = 0
    reconciled: int = 0
    resent: int = 0
    failed: int = 0
    errors: dict[int, int] = field(default_factory=dict)


@dataclass
class Check:
    name: str
    description: str
    level: str
    passed: bool
    failed_count: int = 0
    sample: list[str] = field(default_factory=list)


def summary(**kwargs) -> SyncSummary:
    base = {
        "export_file": "core_export_20261124.csv",
        "export_date": "2026-11-24",
        "dry_run": False,
    }
    return SyncSummary(**(base | kwargs))


def test_the_message_counts_every_request_made_not_only_the_changes():
    s = summary(pairs_changed=1_137)
    refused = record_push(s, Pushed(sent=1_137), 0.05, requests=1_252)
    assert not refused
    assert "1,137 contact pairs changed with 1,252 mark_tag requests" in s.message
    assert s.mark_tag_requests == 1_252
    assert "| mark_tag requests made (every attempt, retries included) | 1,252 |" in sync_markdown(
        s
    )


def test_without_a_request_count_the_attempted_calls_are_counted():
    s = summary(pairs_changed=10)
    record_push(s, Pushed(sent=8, resent=1, failed=1, errors={84061: 1}), 0.5)
    assert s.mark_tag_requests == 10
    assert "completed with warnings" in s.message


def test_too_many_refused_rows_fail_the_sync_with_what_to_do():
    s = summary(pairs_changed=10)
    assert record_push(s, Pushed(sent=5, failed=5, errors={84061: 5}), 0.05, requests=10)
    assert "above the 5% threshold" in s.message and "rerun tag-sync" in s.message
    report = sync_markdown(s)
    assert "| 84061 | customer deleted the account manager (no contact relation) | 5 |" in report


def test_a_blocked_run_says_so_and_shows_no_rows_of_zeros():
    s = summary(outcome=BLOCKED, checks_total=1, checks_failed=1, message="cannot be read")
    report = sync_markdown(s)
    title = report.splitlines()[0]
    assert "blocked" in title and "sent to WeCom" not in title
    assert "rows read" not in report  # the gate stopped before reading any row
    assert "mark_tag" not in report and "pairs to change" not in report


def test_a_blocked_run_that_read_rows_shows_them():
    s = summary(outcome=BLOCKED, checks_total=15, checks_failed=2, rows_read=400)
    assert "| rows read / accepted / quarantined | 400 / 0 / 0 |" in sync_markdown(s)


def test_dry_run_and_already_synced_titles_say_nothing_was_sent():
    dry = sync_markdown(summary(dry_run=True, outcome=DRY_RUN, pairs_changed=3))
    assert "dry run: nothing was sent" in dry.splitlines()[0]
    assert "| pairs to change / tags to add / tags to remove | 3 / 0 / 0 |" in dry
    assert "mark_tag requests" not in dry
    done = sync_markdown(summary(outcome=ALREADY_SYNCED, message="already synced"))
    assert "already synced: nothing was sent" in done.splitlines()[0]
    assert "|" not in done


def test_retired_tags_and_tag_counts_are_listed():
    s = summary(tag_counts=[("资产等级", "资产20万-100万", 826, 0)], pairs_changed=826)
    s.tags_retired = ["资产等级/资产20万-100万"]
    record_push(s, Pushed(sent=826), 0.05, requests=826)
    report = sync_markdown(s)
    assert "1 retired tags deleted" in s.message
    assert "- 资产等级/资产20万-100万" in report
    assert "| 资产等级 | 资产20万-100万 | 826 | 0 | -826 |" in report


def test_as_dict_is_json_safe():
    s = summary(row_errors={84061: 2}, tag_counts=[("g", "t", 1, 2)])
    s.tags_retired = ["g/old"]
    out = json.loads(json.dumps(s.as_dict()))
    assert out["row_errors"] == {"84061": 2}
    assert out["tag_counts"] == [["g", "t", 1, 2]]
    assert out["tags_retired"] == ["g/old"]


def test_gate_markdown_lists_failures_first_with_masked_samples():
    checks = [
        Check("columns", "all columns present", "table", True),
        Check("aum_not_negative", "AUM is not negative", "row", False, 3, ["C****0042"]),
    ]
    text = gate_markdown("Quality gate: x.csv", checks, False, "1 of 2 checks failed", None)
    lines = text.splitlines()
    assert "**BLOCKED**: 1 of 2 checks failed" in text
    fail = next(i for i, line in enumerate(lines) if "aum_not_negative" in line)
    ok = next(i for i, line in enumerate(lines) if "`columns`" in line)
    assert fail < ok and "C****0042" in lines[fail] and "**FAIL**" in lines[fail]


def test_the_quarantine_file_is_named_by_its_path_in_both_reports():
    path = "quarantine/2026-11-24-ab12cd34.csv"
    gate = gate_markdown("Quality gate: x.csv", [], True, "passed", None, quarantine_file=path)
    assert f"`{path}`" in gate and "customer id" in gate
    blocked = summary(outcome=BLOCKED, checks_total=15, checks_failed=1, rows_read=400)
    blocked.quarantine_file = path
    assert f"`{path}`" in sync_markdown(blocked)


def test_a_refused_binding_shows_the_binding_it_refused():
    s = summary(outcome=BLOCKED, checks_total=15, rows_read=400, pairs_unbound=200)
    s.message = "bound 0 of 200 contacts (yesterday 180)"
    report = sync_markdown(s)
    assert "| contact pairs left as they are (no customer in this export) | 200 |" in report
    assert "mark_tag requests" not in report


def _record(day, status="synced", *, checks_failed=0, tiers=None, changed=0, name=None):
    from siyu.tasks.export_registry import HistoryRecord

    tag_counts = [["资产等级", t, 0, n] for t, n in (tiers or {}).items()]
    tag_counts.append(["代发工资", "代发工资客户", 0, 9])
    report = (
        {
            "pairs_managed": 180,
            "pairs_unbound": 20,
            "pairs_changed": changed,
            "tag_counts": tag_counts,
        }
        if status == "synced"
        else {}
    )
    return HistoryRecord(
        export_id=day.toordinal(),
        export_date=day,
        file_name=name or f"core_export_{day:%Y%m%d}.csv",
        status=status,
        checks_total=15,
        checks_failed=checks_failed,
        report=report,
    )


def test_the_history_has_a_row_per_export_with_tiers_week_over_week():
    from datetime import date

    from siyu.tasks.reports import history_table

    records = [
        _record(date(2026, 11, 24), tiers={"资产5万以下": 120, "资产100万以上": 8}, changed=12),
        _record(date(2026, 11, 23), "blocked", checks_failed=3),
        _record(date(2026, 11, 22), "blocked"),  # passed the gate, binding refused
        _record(date(2026, 11, 17), tiers={"资产5万以下": 110, "资产100万以上": 9}, changed=200),
    ]
    table = history_table(records)
    assert [r["day"] for r in table] == ["2026-11-24", "2026-11-23", "2026-11-22", "2026-11-17"]
    today = table[0]
    assert today["verdict"] == "synced"
    assert today["pairs changed"] == "12" and today["contacts bound"] == "180 of 200"
    assert today["资产5万以下"] == "120 (+10 w/w)" and today["资产100万以上"] == "8 (-1 w/w)"
    assert "代发工资客户" not in today  # tiers are the first managed group's tags only
    assert table[1]["verdict"] == "blocked: 3 of 15 checks failed"
    assert table[2]["verdict"] == "blocked: contacts bound collapsed"
    assert table[1]["资产5万以下"] == "" and table[1]["pairs changed"] == ""
    assert table[3]["资产5万以下"] == "110"  # nothing a week before it
    assert history_table([]) == []
