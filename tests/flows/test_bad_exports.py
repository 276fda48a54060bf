"""A corpus of bad exports: each one blocks the sync, says why, and WeCom sees no tag change."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import TagSyncParameters, tag_sync
from tests.bad_exports import CORPUS_EXPECTED_FAILURES, bad_export_corpus
from tests.flows.conftest import DAY
from tests.flows.test_tag_sync import bound_pairs

BLOCKING = sorted(set(CORPUS_EXPECTED_FAILURES) - {"quarantine_small"})


async def _gate_artifact(flow_run_id) -> str:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return next(a.data for a in artifacts if a.key == "export-quality-gate")


def test_every_bad_export_blocks_the_sync_and_changes_nothing_in_wecom(system, tmp_path):
    assert contacts_sync(return_state=True).is_completed()
    date = DAY.strftime("%Y%m%d")
    # A dry run accepts today's good export: the volume baseline, and proof a real run would
    # change tags for many pairs (every bad file below is that export, broken one way).
    dry = tag_sync(params=TagSyncParameters(business_date=date, dry_run=True), return_state=True)
    assert dry.is_completed() and dry.result()["pairs_changed"] == len(bound_pairs(system)) > 100

    corpus = bad_export_corpus(tmp_path / "corpus", export_date=DAY, base=system.export_frame())
    assert set(BLOCKING) >= {
        "wrong_encoding",
        "missing_column",
        "duplicate_ids",
        "stale_date",
        "volume_drop",
        "truncated",
        "header_only",
        "negative_aum_2pct",
    }
    for name in BLOCKING:
        state = tag_sync(
            params=TagSyncParameters(export_file=str(corpus[name]), business_date=date),
            return_state=True,
        )
        assert state.is_failed(), name
        assert "fix the export" in state.message or "rerun" in state.message, (name, state.message)
        report = asyncio.run(_gate_artifact(state.state_details.flow_run_id))
        assert "BLOCKED" in report, name
        for check in CORPUS_EXPECTED_FAILURES[name]:
            assert f"`{check}`" in report, (name, check)
        assert system.mark_tag_calls() == 0, name
        assert system.sandbox.stats()["calls"].get("externalcontact/add_corp_tag", 0) == 0, name


@pytest.mark.parametrize("case", ["negative_aum_2pct"])
def test_the_cli_exits_2_on_a_blocked_export(system, prefect_server, tmp_path, case):
    corpus = bad_export_corpus(tmp_path / "corpus", export_date=DAY, base=system.export_frame())
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "siyu.deployments.cli",
            "tag-sync",
            str(corpus[case]),
            "--date",
            DAY.strftime("%Y%m%d"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "negative" in done.stderr.lower() or "aum" in done.stderr.lower()
    assert system.mark_tag_calls() == 0
