"""The tag sync end to end: a real Prefect server, the sandbox over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pandas as pd
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from sqlalchemy.orm import Session

from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import tag_sync
from siyu.sandbox.export_files import write_export
from siyu.schemas.models import Export, OutboxEntry, QuarantinedRow
from tests.flows.conftest import DAY, SALT

MANAGED_GROUPS = {"资产等级", "历史资产", "客户类别", "代发工资", "持有产品"}
PRODUCTS = {
    "holds_wealth": "理财",
    "holds_fund": "基金",
    "holds_insurance": "保险",
    "holds_loan": "贷款",
    "holds_credit_card": "信用卡",
}


def expected_tags(row) -> set[str]:
    """The issue's rules, written out plainly per row: an oracle independent of siyu's code."""
    aum, peak = float(row.aum), float(row.aum_peak)
    tier = (
        "资产5万以下"
        if aum < 50_000
        else "资产5万-20万"
        if aum < 200_000
        else "资产20万-100万"
        if aum < 1_000_000
        else "资产100万以上"
    )
    tags = {tier, {"直营": "直营客户", "代工": "代工客户"}[row.customer_class]}
    if peak >= 100_000:
        tags.add("历史资产10万以上")
    if row.payroll in ("是", "Y", "1"):
        tags.add("代发工资客户")
    tags |= {name for field, name in PRODUCTS.items() if getattr(row, field) in ("是", "Y", "1")}
    return tags


def run_tag_sync(**params):
    return tag_sync(**({"business_date": DAY} | params), return_state=True)


def tags_by_pair(system) -> dict[tuple[str, str], tuple[set[str], set[str]]]:
    """(userid, external_userid) -> (managed tag names, other tag names) as WeCom has them."""
    with system.client() as client:
        names = {}
        for group in client.get_corp_tag_list():
            for tag in group.tag:
                names[tag.id] = (group.group_name, tag.name)
    out = {}
    for pair in system.sandbox.all_contact_tags():
        tagged = [names[t] for t in pair["tag_ids"] if t in names]
        out[(pair["userid"], pair["external_userid"])] = (
            {t for g, t in tagged if g in MANAGED_GROUPS},
            {t for g, t in tagged if g not in MANAGED_GROUPS},
        )
    return out


def bound_pairs(system) -> dict[tuple[str, str], str]:
    """(userid, external_userid) -> customer_id, from the seed's remark mobiles (test-side truth)."""
    export = system.export_frame()
    by_mobile = dict(zip(export["mobile"], export["customer_id"], strict=True))
    out = {}
    for f in system.follows().itertuples():
        customers = {
            by_mobile[m]
            for m in (f.remark_mobiles if f.remark_mobiles is not None else [])
            if m in by_mobile
        }
        if len(customers) == 1:
            out[(f.userid, f.external_userid)] = customers.pop()
    return out


def test_first_sync_tags_every_bound_pair_and_a_rerun_sends_nothing(system):
    assert contacts_sync(return_state=True).is_completed()
    before = tags_by_pair(system)
    state = run_tag_sync()
    assert state.is_completed(), state.message

    export = system.export_frame().set_index("customer_id")
    pairs = bound_pairs(system)
    assert len(pairs) > 150
    after = tags_by_pair(system)
    for pair, customer in pairs.items():
        assert after[pair][0] == expected_tags(export.loc[customer]), pair
        assert after[pair][1] == before.get(pair, (set(), set()))[1]  # people's own tags stay
    unbound = set(after) - set(pairs)
    assert unbound and all(not after[p][0] for p in unbound)  # non-customers get no managed tag
    assert system.mark_tag_calls() == len(pairs)  # one call per changed pair, nothing more
    assert state.result()["pairs_changed"] == len(pairs)

    calls = system.mark_tag_calls()
    again = run_tag_sync()
    assert again.is_completed() and "already synced" in again.message
    assert system.mark_tag_calls() == calls


def test_a_changed_export_sends_only_the_difference(system):
    contacts_sync()
    assert run_tag_sync().is_completed()
    calls = system.mark_tag_calls()
    export = system.export_frame()
    pairs = bound_pairs(system)
    bound_customers = sorted(set(pairs.values()))
    movers = bound_customers[:7]  # these customers now hold 2,000,000 yuan: a new tier
    changed = export.copy()
    rich = changed["customer_id"].isin(movers)
    expected_changes = sum(
        1
        for pair, c in pairs.items()
        if c in movers
        and expected_tags(export.set_index("customer_id").loc[c])
        != expected_tags(
            changed.assign(aum=changed["aum"].where(~rich, "2000000.00"))
            .set_index("customer_id")
            .loc[c]
        )
    )
    changed.loc[rich, "aum"] = "2000000.00"
    changed.loc[rich, "aum_peak"] = "2000000.00"
    path = write_export(changed, system.landing / "core_export_20261124_v2.csv")
    state = run_tag_sync(export_file=str(path))
    assert state.is_completed(), state.message
    moved_pairs = sum(1 for c in pairs.values() if c in movers)
    assert expected_changes <= system.mark_tag_calls() - calls <= moved_pairs
    after = tags_by_pair(system)
    for pair, c in pairs.items():
        if c in movers:
            assert "资产100万以上" in after[pair][0] and "历史资产10万以上" in after[pair][0]


def test_dry_run_reports_the_difference_and_changes_nothing(system):
    contacts_sync()
    state = run_tag_sync(dry_run=True)
    assert state.is_completed(), state.message
    assert "dry run" in state.message
    assert state.result()["pairs_changed"] == len(bound_pairs(system))
    assert system.mark_tag_calls() == 0
    assert system.sandbox.stats()["calls"].get("externalcontact/add_corp_tag", 0) == 0
    with Session(system.engine()) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry)) == 0


def test_unreachable_contact_is_recorded_and_reported_not_retried(system):
    contacts_sync()
    pair = sorted(bound_pairs(system))[0]
    system.sandbox.delete_follow(*pair)  # the customer deletes the manager after contacts-sync
    state = run_tag_sync()
    assert state.is_completed(), state.message
    assert "warnings" in state.message
    assert state.result()["row_errors"] == {"84061": 1}
    requests = [
        r
        for r in system.sandbox.requests(api="externalcontact/mark_tag")
        if r["params"].get("external_userid") == pair[1] and r["params"].get("userid") == pair[0]
    ]
    assert len(requests) == 1


def test_quarantined_rows_are_kept_out_and_stored_without_personal_data(system):
    contacts_sync()
    export = system.export_frame()
    export.loc[:1, "mobile"] = "12345"  # 2 of 400 rows: 0.5 %, under the 1 % bar
    write_export(export, system.export_path)
    state = run_tag_sync()
    assert state.is_completed(), state.message
    with Session(system.engine()) as session:
        rows = session.scalars(sa.select(QuarantinedRow)).all()
        assert {r.reasons for r in rows} == {"mobile_format"}
        assert session.scalars(sa.select(Export)).one().rows_quarantined == 2


async def _artifacts_and_logs(flow_run_id):
    async with get_client() as client:
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            LogFilter,
            LogFilterFlowRunId,
        )

        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return artifacts, logs


def test_the_run_reports_counts_in_artifacts_without_personal_data(system):
    import asyncio

    contacts_sync()
    state = run_tag_sync()
    artifacts, logs = asyncio.run(_artifacts_and_logs(state.state_details.flow_run_id))
    keys = {a.key for a in artifacts}
    assert {"export-quality-gate", "tag-sync-report"} <= keys
    report = next(a for a in artifacts if a.key == "tag-sync-report").data
    assert "资产5万以下" in report and "mark_tag requests" in report
    export = system.export_frame()
    text = "\n".join([str(a.data) for a in artifacts] + [log.message for log in logs])
    leaked = [v for v in pd.concat([export["mobile"], export["name"]]) if v in text]
    assert leaked == []
    assert not any(c in text for c in export["customer_id"])  # ids only masked where people read


def _written_files(root):
    return [p for p in root.rglob("*") if p.is_file() and "landing" not in p.parts]


def test_no_mobile_or_name_anywhere_siyu_or_prefect_writes(system, caplog, capfd):
    """Logs, artifacts, Data Docs, siyu's and Prefect's databases: ids and hashes, never a mobile or name."""
    import re
    from pathlib import Path

    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    contacts_sync()
    export = system.export_frame()
    export.loc[:3, "mobile"] = "1380013800x"  # quarantined rows must not leak either
    write_export(export, system.export_path)
    assert run_tag_sync().is_completed()
    bad = export.copy()
    bad.loc[: len(bad) // 10, "aum"] = "-5"  # and a blocked run, with its Data Docs of failures
    blocked = write_export(bad, system.landing / "core_export_blocked.csv")
    assert run_tag_sync(export_file=str(blocked)).is_failed()

    mobiles, names = set(export["mobile"]) | set(bad["mobile"]), set(export["name"])
    prefect_db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    files = _written_files(system.home) + _written_files(Path(PREFECT_HOME.value()))
    assert prefect_db.is_file()
    files += [p for p in prefect_db.parent.glob(prefect_db.name + "*")]
    if system.database_url.startswith("sqlite"):
        files.append(Path(system.database_url.split("///", 1)[1]))
    assert any(p.suffix == ".html" for p in files), "Data Docs should be kept beside the run"
    out, err = capfd.readouterr()
    texts = {str(p): p.read_bytes().decode("utf-8", "ignore") for p in files}
    texts["captured logs"] = caplog.text + out + err
    for where, text in texts.items():
        found = [m for m in re.findall(r"1[3-9]\d{9}", text) if m in mobiles]
        assert not found, f"a mobile in {where}"
        assert not [n for n in names if n in text], f"a name in {where}"


# -- what ops set and read (issue 11: points 5, 6, 8, 11, 15, 16) --------------------------------


def test_the_run_form_shows_plain_fields_with_their_defaults():
    schema = tag_sync.parameters.model_dump()
    props = schema["properties"]
    assert set(props) == {"export_file", "dry_run", "business_date", "row_failure_threshold"}
    assert props["export_file"]["type"] == "string" and props["export_file"]["default"] == ""
    assert props["dry_run"]["type"] == "boolean" and props["dry_run"]["default"] is False
    dates = props["business_date"].get("anyOf", [props["business_date"]])
    assert {"type": "string", "format": "date"} in [
        {k: v for k, v in d.items() if k in ("type", "format")} for d in dates
    ]
    share = props["row_failure_threshold"]
    assert (share["type"], share["minimum"], share["maximum"], share["default"]) == (
        "number",
        0,
        1,
        0.01,
    )
    assert all(props[name].get("description") for name in props)  # from the docstring's Args
    assert schema.get("required", []) == []


def _count(system, model) -> int:
    with Session(system.engine()) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_an_impossible_business_date_fails_in_words_before_the_export_is_registered(system):
    state = tag_sync(business_date="20261332", return_state=True)
    assert state.is_failed()
    assert "not a calendar date" in state.message and "business_date" in state.message
    assert _count(system, Export) == 0


def test_the_bank_date_form_yyyymmdd_is_read_as_a_date(system):
    contacts_sync()
    state = tag_sync(business_date=DAY.strftime("%Y%m%d"), dry_run=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["export_date"] == DAY.isoformat()


async def _progress_cards(flow_run_id) -> int:
    artifacts, _ = await _artifacts_and_logs(flow_run_id)
    return sum(1 for a in artifacts if a.type == "progress")


def test_a_dry_run_leaves_nothing_for_the_next_real_run_to_resume(system):
    import asyncio

    contacts_sync()
    assert run_tag_sync(dry_run=True).is_completed()
    with Session(system.engine()) as session:
        assert session.scalars(sa.select(Export.status)).all() == ["passed"]
    state = run_tag_sync()
    assert state.is_completed(), state.message
    assert state.result()["calls_reconciled"] == 0
    assert asyncio.run(_progress_cards(state.state_details.flow_run_id)) == 1
    assert system.mark_tag_calls() == len(bound_pairs(system))


def test_a_dry_run_on_a_synced_export_previews_and_stores_nothing(system):
    contacts_sync()
    assert run_tag_sync().is_completed()
    calls, exports, entries = (
        system.mark_tag_calls(),
        _count(system, Export),
        _count(system, OutboxEntry),
    )
    with Session(system.engine()) as session:
        synced = session.scalars(sa.select(Export)).one()
        before = (synced.status, synced.report)
    state = run_tag_sync(dry_run=True)
    assert state.is_completed(), state.message
    assert "already synced" not in state.message and "would change" in state.message
    assert state.result()["pairs_managed"] == len(bound_pairs(system))
    assert state.result()["pairs_changed"] == 0  # the rules did not change
    assert system.mark_tag_calls() == calls
    assert (_count(system, Export), _count(system, OutboxEntry)) == (exports, entries)
    with Session(system.engine()) as session:
        export = session.scalars(sa.select(Export)).one()
        now = (export.status, export.report)
        assert now[0] == before[0]
        assert {k: v for k, v in now[1].items() if before[1].get(k) != v} == {}


def test_the_date_is_checked_before_already_synced(system):
    from datetime import timedelta

    contacts_sync()
    assert run_tag_sync().is_completed()
    state = run_tag_sync(business_date=DAY + timedelta(days=1))
    assert state.is_failed()
    assert system.export_path.name in state.message
    assert f"set business_date to {DAY.isoformat()}" in state.message


def test_a_blocked_run_fails_with_a_message_only_naming_the_file_and_the_fix(system, capfd):
    import asyncio
    from datetime import timedelta

    contacts_sync()
    wrong_day = DAY - timedelta(days=1)
    state = run_tag_sync(business_date=wrong_day)
    assert state.is_failed()
    assert system.export_path.name in state.message
    assert "business_date" in state.message
    artifacts, logs = asyncio.run(_artifacts_and_logs(state.state_details.flow_run_id))
    report = next(a for a in artifacts if a.key == "tag-sync-report").data
    title = report.splitlines()[0]
    assert "blocked" in title and "sent to WeCom" not in title
    out, err = capfd.readouterr()
    text = "\n".join([log.message for log in logs] + [out, err])
    assert "Unexpected result for failed state" not in text
    assert system.mark_tag_calls() == 0


def test_the_report_counts_every_request_retries_included(system, monkeypatch):
    import siyu.flows.tag_sync as flow_module

    contacts_sync()
    pairs = sorted(bound_pairs(system))
    # Busy replies the client retries, and lost replies on one pair that stop the first push
    # attempt; the push task's retry finishes the batch.
    system.sandbox.fault(api="externalcontact/mark_tag", errcode=-1, times=4)
    system.sandbox.fault(
        api="externalcontact/mark_tag",
        drop_connection=True,
        times=2,
        match={"external_userid": pairs[5][1], "userid": pairs[5][0]},
    )
    monkeypatch.setattr(
        flow_module, "push_tags", flow_module.push_tags.with_options(retry_delay_seconds=0)
    )
    state = run_tag_sync()
    assert state.is_completed(), state.message
    report = state.result()
    made = system.mark_tag_calls()
    assert made >= len(pairs) + 6
    assert report["mark_tag_requests"] == made
    assert f"with {made:,} mark_tag requests" in state.message


# -- what ops asked for (issue 15) ------------------------------------------------------------


def _changed_export(system, name: str):
    """Today's export with the first bound customers moved to a new tier: a day with changes."""
    changed = system.export_frame()
    movers = sorted(set(bound_pairs(system).values()))[:7]
    rich = changed["customer_id"].isin(movers)
    changed.loc[rich, ["aum", "aum_peak"]] = "2000000.00"
    return write_export(changed, system.landing / name)


def test_a_collapsed_binding_fails_the_sync_and_changes_nothing(system, monkeypatch):
    contacts_sync()
    first = run_tag_sync()
    assert first.is_completed()
    bound = first.result()["pairs_managed"]
    contacts = bound + first.result()["pairs_unbound"] + first.result()["pairs_ambiguous"]
    calls, tags_before = system.mark_tag_calls(), tags_by_pair(system)
    with Session(system.engine()) as session:
        entries = session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry))
    path = _changed_export(system, "core_export_20261124_v2.csv")
    # A worker whose salt differs from the one contacts-sync hashed the remark mobiles with.
    monkeypatch.setenv("SIYU_MOBILE_SALT", "another-workers-salt")

    dry = run_tag_sync(export_file=str(path), dry_run=True)
    assert dry.is_failed() and dry.message.startswith("dry run of ")
    state = run_tag_sync(export_file=str(path))
    assert state.is_failed()
    assert (
        f"bound 0 of {contacts:,} contacts (last sync, {DAY.isoformat()}: {bound:,}): the mobile "
        "salt or the export's mobile column changed? nothing was changed"
    ) in state.message
    assert path.name in state.message and "rerun tag-sync" in state.message
    assert system.mark_tag_calls() == calls and tags_by_pair(system) == tags_before
    with Session(system.engine()) as session:
        statuses = session.scalars(sa.select(Export.status).order_by(Export.id)).all()
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry)) == entries
    assert statuses == ["synced", "blocked"]  # the export was not marked synced

    # The right salt again: the same file syncs, with its changes.
    monkeypatch.setenv("SIYU_MOBILE_SALT", SALT)
    again = run_tag_sync(export_file=str(path))
    assert again.is_completed(), again.message
    assert 0 < system.mark_tag_calls() - calls <= 7 * 2


def test_a_dry_run_is_named_and_tagged_as_one_in_the_runs_list(system):
    import asyncio

    contacts_sync()
    dry = run_tag_sync(dry_run=True)
    real = run_tag_sync()

    async def read(flow_run_id):
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    dry_run = asyncio.run(read(dry.state_details.flow_run_id))
    real_run = asyncio.run(read(real.state_details.flow_run_id))
    assert dry_run.name.endswith(" · dry run") and "dry-run" in dry_run.tags
    assert not real_run.name.endswith("dry run") and "dry-run" not in real_run.tags


def test_quarantined_rows_go_to_a_private_file_named_not_shown_in_the_report(system):
    import asyncio
    import stat

    contacts_sync()
    export = system.export_frame()
    export.loc[:1, "mobile"] = "12345"
    write_export(export, system.export_path)
    state = run_tag_sync()
    assert state.is_completed(), state.message
    with Session(system.engine()) as session:
        checksum = session.scalars(sa.select(Export.checksum)).one()
    relative = f"quarantine/{DAY.isoformat()}-{checksum[:8]}.csv"
    assert state.result()["quarantine_file"] == relative
    path = system.home / "reports" / relative
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = pd.read_csv(path, dtype=str)
    assert list(rows.columns) == ["row_number", "customer_id", "reasons"]
    assert sorted(rows["customer_id"]) == sorted(export["customer_id"][:2])
    assert set(rows["reasons"]) == {"mobile_format"} and list(rows["row_number"]) == ["1", "2"]
    artifacts, _ = asyncio.run(_artifacts_and_logs(state.state_details.flow_run_id))
    gate = next(a for a in artifacts if a.key == "export-quality-gate").data
    report = next(a for a in artifacts if a.key == "tag-sync-report").data
    assert relative in gate and relative in report
    assert not any(c in gate + report for c in export["customer_id"][:2])


def test_the_push_logs_its_counts_as_it_goes(system):
    import asyncio

    contacts_sync()
    state = run_tag_sync()
    total = state.result()["calls_planned"]
    # Logs reach the server in batches a moment after the run: read until the lines stop coming.
    progress: list[str] = []
    for _ in range(30):
        _, logs = asyncio.run(_artifacts_and_logs(state.state_details.flow_run_id))
        progress = [log.message for log in logs if " settled (" in log.message]
        if len(progress) >= 9:
            break
        time.sleep(0.5)
    assert len(progress) >= 5  # about every 10 %
    assert all(f" of {total:,} settled" in line for line in progress)
