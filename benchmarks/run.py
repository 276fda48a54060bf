"""`make bench`: the tag sync at scale, measured against its floor and against the sandbox.

Scenarios, all in one run so their figures are comparable:
1. compute: load + gate + match + rules + diff of a 1,000-row and a 1,000,000-row GBK export
   (each in a fresh process, for its peak memory), beside the raw pyarrow read of the same file;
2. push: a 5,000-customer bank through the real flows (Prefect server, sandbox over HTTP, SQLite):
   WeCom calls against changed pairs, a rerun's calls, push throughput against the rate limit;
3. flow at scale: contacts-sync of 50,000 contacts and a dry-run tag-sync of the 1M export through
   Prefect, with the number of task runs per sync beside the 5,000-customer run's.
Options: --customers (default 1,000,000), --rate (mark_tag calls a minute, default 1,200:
low enough that the 5,000-customer push lasts over two minutes, so the rate is a sustained one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

DAY = date(2026, 11, 24)


def _compute(export: Path, seed_dir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.tag_sync_compute", str(export), str(seed_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sandbox(port: int, state: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "siyu.deployments.cli",
            "sandbox",
            "--port",
            str(port),
            "--state",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import requests

    for _ in range(200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/sandbox/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the sandbox did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _task_runs(flow_run_id) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return len(runs)


def _flows(work: Path, sample_small, sample_big, rate: int) -> dict:
    """Scenarios 2 and 3 through the real flows, on one Prefect server."""
    import pandas as pd
    import requests
    import sqlalchemy as sa
    from prefect.testing.utilities import prefect_test_harness

    from siyu.blocks.environment import BLOCK_NAME, from_settings
    from siyu.flows.contacts_sync import contacts_sync
    from siyu.flows.tag_sync import tag_sync
    from siyu.sandbox.export_files import write_export
    from siyu.schemas.database import make_engine, upgrade
    from siyu.schemas.export import EXPORT_COLUMNS
    from siyu.schemas.models import OutboxEntry
    from siyu.schemas.settings import Settings

    results: dict = {}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with prefect_test_harness(server_startup_timeout=120):
        for label, sample, dry_run in (("push", sample_small, False), ("scale", sample_big, True)):
            home = work / f"home-{label}"
            (home / "landing").mkdir(parents=True)
            os.environ["SIYU_HOME"] = str(home)
            os.environ["SIYU_DATABASE_URL"] = f"sqlite:///{home / 'siyu.db'}"
            os.environ["SIYU_MOBILE_SALT"] = "bench-salt"
            os.environ["SIYU_ENVIRONMENT"] = "embedded"  # the sandbox and sample data stand in
            export = Path(
                shutil.copy(sample.export_path, home / "landing" / sample.export_path.name)
            )
            sandbox = _sandbox(port, home / "sandbox.db")
            try:
                requests.post(
                    f"{base}/sandbox/seed", json={"path": str(sample.seed_dir)}, timeout=600
                ).raise_for_status()
                requests.post(
                    f"{base}/sandbox/config",
                    json={"rate_limits": {"externalcontact/mark_tag": rate}},
                    timeout=10,
                ).raise_for_status()
                settings = Settings.from_env()
                upgrade(settings.database_url)
                env = from_settings(
                    settings.model_copy(update={"wecom_base_url": f"{base}/cgi-bin/"})
                )
                env.wecom.api_rate_limits = {"externalcontact/mark_tag": rate}
                for block in (env.wecom, env.database, env.export_source, env.tag_rules):
                    block.save(BLOCK_NAME, overwrite=True)  # each scenario on its own database

                t = time.perf_counter()
                contacts = contacts_sync(return_state=True)
                contacts_s = time.perf_counter() - t
                t = time.perf_counter()
                state = tag_sync(
                    export_file=str(export), business_date=DAY, dry_run=dry_run, return_state=True
                )
                sync_s = time.perf_counter() - t
                assert state.is_completed(), state.message
                summary = state.result()
                entry = {
                    "customers": sample.customers,
                    "contact_pairs": contacts.result()["pairs"],
                    "contacts_sync_s": round(contacts_s, 2),
                    "tag_sync_s": round(sync_s, 2),
                    "task_runs": asyncio.run(_task_runs(state.state_details.flow_run_id)),
                    "pairs_changed": summary["pairs_changed"],
                }
                if not dry_run:
                    calls = (
                        requests.get(f"{base}/sandbox/stats", timeout=10)
                        .json()["calls"]
                        .get("externalcontact/mark_tag", 0)
                    )
                    engine = make_engine(settings.database_url)
                    with engine.connect() as conn:
                        first, last, n = conn.execute(
                            sa.select(
                                sa.func.min(OutboxEntry.updated_at),
                                sa.func.max(OutboxEntry.sent_at),
                                sa.func.count(),
                            )
                        ).one()
                    engine.dispose()
                    span = (last - first).total_seconds() if first and last else 0
                    # The same data again, written as UTF-8: new bytes, so the whole pipeline runs.
                    frame = pd.read_csv(export, encoding="gbk", dtype=str)
                    frame = frame.rename(columns={c.header: c.field for c in EXPORT_COLUMNS})
                    again = write_export(
                        frame, home / "landing" / "core_export_rerun.csv", "csv-utf8"
                    )
                    rerun = tag_sync(export_file=str(again), business_date=DAY, return_state=True)
                    calls_after = (
                        requests.get(f"{base}/sandbox/stats", timeout=10)
                        .json()["calls"]
                        .get("externalcontact/mark_tag", 0)
                    )
                    entry |= {
                        "mark_tag_calls": calls,
                        "outbox_entries": n,
                        "push_calls_per_minute": round(60 * (n - 1) / span) if span else None,
                        "rate_limit_per_minute": rate,
                        "rerun_state": rerun.type.value,
                        "rerun_calls": calls_after - calls,
                    }
                results[label] = entry
            finally:
                sandbox.terminate()
                sandbox.wait(timeout=30)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print the figures BENCHMARKS.md records."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1_200)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from siyu.sandbox.sample import SampleSpec, generate

    work = Path(tempfile.mkdtemp(prefix="siyu-bench-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    try:
        t = time.perf_counter()
        big = generate(SampleSpec(customers=args.customers, seed=7, export_date=DAY), work / "big")
        print(
            f"sample: {args.customers:,} customers, {big.follows:,} follows in {time.perf_counter() - t:.1f} s"
        )
        small = generate(SampleSpec(customers=1_000, seed=7, export_date=DAY), work / "small")
        push = generate(SampleSpec(customers=5_000, seed=7, export_date=DAY), work / "push")

        print("\n1. compute (load + gate + match + rules + diff), each in a fresh process")
        c_small = _compute(small.export_path, small.seed_dir)
        c_big = _compute(big.export_path, big.seed_dir)
        for label, c in (("1k", c_small), (f"{args.customers // 1000}k", c_big)):
            stages = ", ".join(f"{k} {v:.2f}" for k, v in c["stages"].items())
            print(
                f"  {label:>6}: total {c['total']:.2f} s ({stages}); raw pyarrow read {c['raw_read']:.2f} s; peak RSS {c['peak_rss_mb']:,.0f} MB; {c['pairs']:,} pairs, {c['changes']:,} changes"
            )
        above = c_big["total"] - c_small["total"]
        print(
            f"  cost above the 1k run: {above:.2f} s = {above / c_big['raw_read']:.1f}x the raw read of the big file ({c_big['raw_read']:.2f} s)"
        )

        print("\n2-3. flows through Prefect and the sandbox over HTTP")
        flows = _flows(work, push, big, args.rate)
        for label, entry in flows.items():
            print(f"  {label}: " + json.dumps(entry))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
