"""Hostile exports against the sandbox over real HTTP: each blocks the sync, says why, WeCom sees
no tag change; and named files outside the landing directory are refused unread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import tag_sync
from siyu.schemas.models import Export
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


def test_every_bad_export_blocks_the_sync_and_changes_nothing_in_wecom(system):
    assert contacts_sync(return_state=True).is_completed()
    # A dry run passes today's good export: the volume and distribution baseline, and proof a
    # real run would change tags for many pairs (every bad file below is that export, broken
    # one way).
    dry = tag_sync(business_date=DAY, dry_run=True, return_state=True)
    assert dry.is_completed() and dry.result()["pairs_changed"] == len(bound_pairs(system)) > 100

    # Inside the landing directory (siyu reads nothing outside it), in folders of their own.
    corpus = bad_export_corpus(
        system.landing / "corpus", export_date=DAY, base=system.export_frame()
    )
    assert set(BLOCKING) >= {
        "wrong_encoding",
        "missing_column",
        "duplicate_ids",
        "stale_date",
        "volume_drop",
        "truncated",
        "header_only",
        "negative_aum_2pct",
        "duplicate_header",
        "empty_aum",
        "empty_flags",
        "flags_all_no",
        "aum_all_zero",
        "aum_implausible",
        "mixed_encoding",
        "empty_file",
    }
    for name in BLOCKING:
        state = tag_sync(export_file=str(corpus[name]), business_date=DAY, return_state=True)
        assert state.is_failed(), name
        assert "fix the export" in state.message or "rerun" in state.message, (name, state.message)
        assert "broken quoting" not in state.message, name
        report = asyncio.run(_gate_artifact(state.state_details.flow_run_id))
        assert "BLOCKED" in report, name
        for check in CORPUS_EXPECTED_FAILURES[name]:
            assert f"`{check}`" in report, (name, check)
        assert system.mark_tag_calls() == 0, name
        assert system.sandbox.stats()["calls"].get("externalcontact/add_corp_tag", 0) == 0, name
    assert system.tag_changes() == 0


def test_named_files_outside_the_landing_directory_are_refused_unread(system, tmp_path):
    assert contacts_sync(return_state=True).is_completed()
    (system.landing / "folder").mkdir()
    os.mkfifo(system.landing / "pipe.csv")
    outside = tmp_path / "core_export_20261124.csv"
    outside.write_bytes(system.export_path.read_bytes())
    cases = {
        "/etc/shadow": "outside the landing directory",
        "../../../../etc/shadow": "outside the landing directory",
        "/proc/self/environ": "outside the landing directory",
        str(outside): "outside the landing directory",
        "folder": "is a directory",
        "pipe.csv": "not a regular file",
    }
    for name, reason in cases.items():
        state = tag_sync(export_file=name, business_date=DAY, return_state=True)
        assert state.is_failed(), name
        assert reason in state.message, (name, state.message)
        assert "does not exist" not in state.message, name
    # A link landed under an export's name is confined like a named file.
    link = system.landing / "core_export_20261125.csv"
    link.symlink_to(outside)
    state = tag_sync(business_date=DAY, return_state=True)
    assert state.is_failed() and "outside the landing directory" in state.message
    link.unlink()
    with system.engine().connect() as conn:
        registered = conn.execute(sa.select(Export.file_name)).scalars().all()
    assert registered == []  # nothing was hashed, nothing registered
    assert system.mark_tag_calls() == 0 and system.tag_changes() == 0

    # A relative name is a file in the landing directory, wherever the worker runs.
    state = tag_sync(
        export_file=system.export_path.name, business_date=DAY, dry_run=True, return_state=True
    )
    assert state.is_completed(), state.message


@pytest.mark.parametrize("case", ["negative_aum_2pct"])
def test_the_cli_exits_2_on_a_blocked_export(system, prefect_server, case):
    corpus = bad_export_corpus(
        system.landing / "corpus", export_date=DAY, base=system.export_frame()
    )
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
