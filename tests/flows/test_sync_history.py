"""The sync history ops asked for: one table, updated by every sync, read over weeks."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import tag_sync
from siyu.sandbox.export_files import write_export
from tests.flows.conftest import DAY
from tests.flows.test_tag_sync import bound_pairs

WEEK_BEFORE = DAY - timedelta(days=7)


async def _latest_history():
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tag-sync-history"]))
        )
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data  # a table is stored as JSON


def _export_of(system, day, *, movers=()):
    frame = system.export_frame()
    frame["export_date"] = day.strftime("%Y%m%d")
    rich = frame["customer_id"].isin(movers)
    frame.loc[rich, ["aum", "aum_peak"]] = "2000000.00"
    return write_export(frame, system.landing / f"core_export_{day:%Y%m%d}.csv")


def test_every_sync_updates_one_history_with_verdicts_and_tiers_week_over_week(system):
    contacts_sync()
    week_before = _export_of(system, WEEK_BEFORE)
    first_state = tag_sync(
        export_file=str(week_before), business_date=WEEK_BEFORE, return_state=True
    )
    assert first_state.is_completed(), first_state.message
    stale = _export_of(system, DAY - timedelta(days=1))  # a day late: blocked
    blocked = tag_sync(export_file=str(stale), business_date=DAY, return_state=True)
    assert blocked.is_failed()
    movers = sorted(set(bound_pairs(system).values()))[:7]
    today = _export_of(system, DAY, movers=movers)
    state = tag_sync(export_file=str(today), business_date=DAY, return_state=True)
    assert state.is_completed(), state.message

    table = asyncio.run(_latest_history())
    assert [(r["day"], r["file"]) for r in table] == [
        (DAY.isoformat(), today.name),
        (DAY.isoformat(), stale.name),
        (WEEK_BEFORE.isoformat(), week_before.name),
    ]
    synced, refused, first = table
    assert synced["verdict"] == "synced" and first["verdict"] == "synced"
    assert refused["verdict"].startswith("blocked: ") and "checks failed" in refused["verdict"]
    assert synced["pairs changed"] == f"{state.result()['pairs_changed']:,}"
    bound = state.result()["pairs_managed"]
    assert synced["contacts bound"].startswith(f"{bound:,} of ")
    tiers = {"资产5万以下", "资产5万-20万", "资产20万-100万", "资产100万以上"}
    assert tiers <= set(synced)
    before_rich = dict((t[1], t[3]) for t in first_state.result()["tag_counts"])["资产100万以上"]
    now_rich = dict((t[1], t[3]) for t in state.result()["tag_counts"])["资产100万以上"]
    assert now_rich > before_rich  # the movers' pairs joined the top tier
    assert synced["资产100万以上"] == f"{now_rich:,} ({now_rich - before_rich:+,} w/w)"
    assert "w/w" not in first["资产100万以上"]  # nothing synced a week before the first
    text = str(table)
    assert not any(c in text for c in system.export_frame()["customer_id"])
