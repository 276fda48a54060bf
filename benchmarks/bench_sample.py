"""Benchmark the sample generator: 1,000,000 customers into a temp dir; seconds and peak RSS."""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from siyu.sandbox.sample import SampleSpec, generate


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Generate the sample once and print how long it took, the peak memory and the sizes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--managers", type=int, default=5)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument(
        "--format",
        default="csv-gbk",
        choices=["csv-gbk", "csv-utf8", "csv-utf8-bom", "parquet"],
    )
    args = parser.parse_args(argv)
    spec = SampleSpec(
        customers=args.customers,
        managers=args.managers,
        groups=args.groups,
        export_date=date(2026, 11, 24),
        fmt=args.format,
    )
    print(f"python {sys.version.split()[0]}, {args.customers:,} customers, {args.format}")
    print(f"after imports: peak RSS {_peak_rss_mb():,.0f} MB")

    with tempfile.TemporaryDirectory(prefix="siyu-bench-sample-") as tmp:
        started = time.perf_counter()
        result = generate(spec, Path(tmp))
        seconds = time.perf_counter() - started
        export_mb = result.export_path.stat().st_size / 1e6
        seed_mb = sum(p.stat().st_size for p in result.seed_dir.iterdir()) / 1e6
    print(
        f"generate: {seconds:.2f} s, peak RSS {_peak_rss_mb():,.0f} MB; "
        f"export {export_mb:,.1f} MB, seed {seed_mb:,.1f} MB; "
        f"{result.customers:,} customers, {result.follows:,} follows, "
        f"{result.groups} groups, {result.members:,} members"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
