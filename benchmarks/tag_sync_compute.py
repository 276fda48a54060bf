"""One tag-sync computation (load, gate, match, rules, diff) on one export, in its own process.

Prints one JSON line: seconds per stage, the raw pyarrow read of the same file, peak memory.
Run by benchmarks/run.py; by hand: python -m benchmarks.tag_sync_compute EXPORT SEED_DIR.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from siyu.schemas.export import DEFAULT_BRANCHES, ExportLayout
from siyu.schemas.tag_rules import DEFAULT_RULES
from siyu.tasks.export import load_export
from siyu.tasks.matching import hash_mobiles
from siyu.tasks.quality import run_gate
from siyu.tasks.tagging import desired_for_contacts, diff_tags

SALT = b"bench-salt"


def raw_read_seconds(path: Path) -> float:
    """The floor: pyarrow reading the same file, every column, nothing else."""
    started = time.perf_counter()
    if path.suffix == ".parquet":
        pq.read_table(path)
    else:
        pacsv.read_csv(path, read_options=pacsv.ReadOptions(encoding="gbk"))
    return time.perf_counter() - started


def contact_mobiles(seed_dir: Path) -> pd.DataFrame:
    """What contacts-sync stores: (userid, external_userid, mobile_hash). Setup, not timed."""
    follows = pq.read_table(
        seed_dir / "follows.parquet", columns=["userid", "external_userid", "remark_mobiles"]
    ).to_pandas()
    follows = follows.explode("remark_mobiles").dropna(subset=["remark_mobiles"])
    follows["mobile_hash"] = hash_mobiles(follows["remark_mobiles"].tolist(), SALT)
    return follows[["userid", "external_userid", "mobile_hash"]].reset_index(drop=True)


def compute(path: Path, seed_dir: Path) -> dict:
    """Time each stage of the sync's computation on one export."""
    mobiles = contact_mobiles(seed_dir)
    synced = pd.DataFrame(
        {"userid": [], "external_userid": [], "bits": np.array([], dtype=np.uint64)}
    )
    export_date = datetime.strptime(path.stem.rsplit("_", 1)[-1], "%Y%m%d").date()
    raw_read = min(raw_read_seconds(path) for _ in range(2))
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = load_export(
        path, ExportLayout(format="parquet" if path.suffix == ".parquet" else "csv")
    )
    stages["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as docs:
        gate = run_gate(
            loaded,
            expected_date=export_date,
            previous_row_count=loaded.row_count,
            branches=DEFAULT_BRANCHES,
            docs_dir=Path(docs),
        )
    stages["gate"] = time.perf_counter() - t
    assert gate.passed, gate.message
    accepted = gate.accepted
    t = time.perf_counter()
    pairs, _ = desired_for_contacts(accepted, mobiles, DEFAULT_RULES, SALT)
    stages["match+rules"] = time.perf_counter() - t
    t = time.perf_counter()
    diff = diff_tags(pairs, synced, len(DEFAULT_RULES.managed_tags()))
    stages["diff"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "rows": loaded.row_count,
        "pairs": len(pairs),
        "changes": len(diff.changes),
        "stages": stages,
        "total": total,
        "raw_read": raw_read,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    print(json.dumps(compute(Path(sys.argv[1]), Path(sys.argv[2]))))
