"""Benchmark shared pacing: two processes push mark_tag at once through one Prefect rate limit.

A sandbox (its own process) limits externalcontact/mark_tag to --rate calls a minute over a
sliding 60 s window and answers 45009 above it; a Prefect server (the test harness) holds the
limits `ensure_rate_limits` makes; two worker processes each push as fast as their
`WeComApp(shared_pacing=True)` client lets them for --seconds. Printed: calls a minute
combined, the busiest 60 s window (never over the limit), its share of the limit (>= 90 %),
and the 45009s the sandbox answered (0).

    python -m benchmarks.bench_shared_pacing [--rate 600] [--seconds 90] [--workers 2] [--threads 4] [--pacer prefect|polling]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

API = "externalcontact/mark_tag"
WINDOW = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sandbox(port: int) -> subprocess.Popen[bytes]:
    import requests

    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "siyu.deployments.cli", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/sandbox/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the sandbox did not start")


def _app(base_url: str, rate: int):  # noqa: ANN202 - WeComApp, imported late
    from siyu.blocks.wecom import WeComApp
    from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET

    return WeComApp(
        corp_id=SANDBOX_CORP_ID,
        secret=SANDBOX_SECRET,
        base_url=base_url,
        api_rate_limits={API: rate},
        shared_pacing=True,
    )


def polling_client(base_url: str, rate: int):  # noqa: ANN201 - WeComClient, imported late
    """A client whose shared pacer asks the Prefect limit itself and waits at most ~1/rate.

    An experiment beside PrefectPacer (`--pacer polling`): Prefect's `rate_limit` sleeps the
    server's Retry-After, which grows with every denied request (denied_slots) and is drawn
    from a clamped Poisson; callers then sleep past free slots. Asking again after at most
    1.5 decay intervals shows how much of the limit the same server-side limit can give.
    """
    import random
    import threading

    import httpx
    from prefect.client.orchestration import get_client

    from siyu.blocks.wecom import PrefectPacer, RateLimits, WeComClient, limit_name
    from siyu.blocks.wecom.pacing import bucket_shape
    from siyu.blocks.wecom.transport import pacing_scope
    from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET

    class PollingPacer(PrefectPacer):
        def __init__(self, scope: str, limits: RateLimits) -> None:
            super().__init__(scope, limits)
            self._limits = limits
            self._prefect = get_client(sync_client=True)
            self._prefect.__enter__()
            self._lock = threading.Lock()

        def acquire(self, api: str) -> float:
            started = time.monotonic()
            per_second = bucket_shape(self._limits.per_minute(api))[1]
            while True:
                try:
                    # One request at a time: threads asking side by side flood the server.
                    with self._lock:
                        self._prefect.increment_concurrency_slots(
                            [limit_name(api)], 1, "rate_limit"
                        )
                    return time.monotonic() - started
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code != 423:
                        raise
                    hint = float(exc.response.headers.get("Retry-After", 1 / per_second))
                    time.sleep(min(hint, 1.5 / per_second) * random.uniform(0.5, 1.0))  # noqa: S311

    limits = RateLimits(10_000, {API: rate})
    return WeComClient(
        base_url,
        SANDBOX_CORP_ID,
        SANDBOX_SECRET,
        api_rate_limits={API: rate},
        pacer=PollingPacer(pacing_scope(base_url, SANDBOX_CORP_ID), limits),
    )


def worker(
    base_url: str,
    rate: int,
    seconds: float,
    pairs_file: str,
    out_file: str,
    threads: int,
    pacer: str = "prefect",
) -> None:
    """One process: `threads` threads call mark_tag as fast as the shared pacer allows.

    Threads, because one call waits on two round trips (the Prefect limit, then WeCom): a
    single sequential caller is bound by that latency long before it meets the limit.
    """
    from concurrent.futures import ThreadPoolExecutor

    from siyu.blocks.wecom import WeComError

    pairs = json.loads(Path(pairs_file).read_text())
    started: list[float] = []
    errors: dict[str, int] = {}
    made = (
        polling_client(base_url, rate) if pacer == "polling" else _app(base_url, rate).get_client()
    )
    with made as client:
        client.get_follow_user_list()  # the token, outside the measured calls
        deadline = time.time() + seconds

        def push(offset: int) -> None:
            i = offset
            while time.time() < deadline:
                userid, external_userid, tag_id = pairs[i % len(pairs)]
                i += threads
                try:
                    # A tag the pair may hold already: the same call, the same pacing.
                    client.mark_tag(userid, external_userid, add_tag=[tag_id])
                except WeComError as exc:
                    key = str(exc.errcode)
                    errors[key] = errors.get(key, 0) + 1
                started.append(time.time())  # list.append is atomic under the GIL

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(push, range(threads)))
    Path(out_file).write_text(json.dumps({"calls": started, "errors": errors}))


def _busiest_window(times: list[float]) -> int:
    """Most calls in any 60 s window."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + WINDOW) - i)
    return best


def run(
    rate: int, seconds: float, workers: int, threads: int, pacer: str = "prefect"
) -> dict[str, float | int]:
    import pandas as pd
    import requests
    from prefect.testing.utilities import prefect_test_harness

    from siyu.blocks.wecom import ensure_rate_limits
    from siyu.sandbox.sample import SampleSpec, generate

    work = Path(tempfile.mkdtemp(prefix="siyu-bench-pacing-"))
    sample = generate(SampleSpec(customers=300, groups=1, managers=3, seed=5), work / "sample")
    follows = pd.read_parquet(sample.seed_dir / "follows.parquet")
    tags = pd.read_parquet(sample.seed_dir / "tag_groups.parquet")
    tag_id = str(tags["tag_id"].iloc[0])
    pairs = [
        [u, x, tag_id] for u, x in zip(follows["userid"], follows["external_userid"], strict=True)
    ]
    pairs_file = work / "pairs.json"
    pairs_file.write_text(json.dumps(pairs))

    port = _free_port()
    sandbox = _start_sandbox(port)
    base = f"http://127.0.0.1:{port}"
    try:
        requests.post(
            f"{base}/sandbox/seed", json={"path": str(sample.seed_dir)}, timeout=600
        ).raise_for_status()
        requests.post(
            f"{base}/sandbox/config", json={"rate_limits": {API: rate}}, timeout=10
        ).raise_for_status()
        with prefect_test_harness(server_startup_timeout=120):
            from prefect.settings import PREFECT_API_URL

            ensure_rate_limits(_app(f"{base}/cgi-bin/", rate))
            env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
            outs = [work / f"worker-{n}.json" for n in range(workers)]
            procs = [
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_shared_pacing",
                        "--worker",
                        f"{base}/cgi-bin/",
                        str(rate),
                        str(seconds),
                        str(pairs_file),
                        str(out),
                        str(threads),
                        pacer,
                    ],
                    env=env,
                )
                for out in outs
            ]
            for proc in procs:
                proc.wait(timeout=seconds + 600)
        reports = [json.loads(out.read_text()) for out in outs]
        refused = sum(r["errors"].get("45009", 0) for r in reports)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    times = sorted(t for r in reports for t in r["calls"])
    span = times[-1] - times[0]
    busiest = _busiest_window(times)
    # The sustained rate: whole windows after the first (which may hold the initial burst).
    steady = [
        bisect.bisect_left(times, t + WINDOW) - i
        for i, t in enumerate(times)
        if t + WINDOW <= times[-1]
    ]
    return {
        "limit_per_minute": rate,
        "workers": workers,
        "threads_per_worker": threads,
        "pacer": pacer,
        "calls": len(times),
        "per_worker": [len(r["calls"]) for r in reports],
        "seconds": round(span, 1),
        "calls_per_minute": round(len(times) / span * 60, 1),
        "busiest_60s_window": busiest,
        "quietest_full_60s_window": min(steady) if steady else None,
        "share_of_limit": round(len(times) / span * 60 / rate, 3),
        "refused_45009": refused,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        base_url, rate, seconds, pairs_file, out_file, threads, pacer = sys.argv[2:9]
        worker(base_url, int(rate), float(seconds), pairs_file, out_file, int(threads), pacer)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=600, help="mark_tag calls a minute")
    parser.add_argument("--seconds", type=float, default=90, help="how long each worker pushes")
    parser.add_argument("--workers", type=int, default=2, help="processes pushing at once")
    parser.add_argument("--threads", type=int, default=4, help="threads in each process")
    parser.add_argument(
        "--pacer",
        choices=["prefect", "polling"],
        default="prefect",
        help="prefect: WeComApp(shared_pacing=True) as shipped; polling: the experiment above",
    )
    args = parser.parse_args()
    # A private Prefect home: the harness's server database is this run's alone.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="siyu-bench-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    figures = run(args.rate, args.seconds, args.workers, args.threads, args.pacer)
    for name, value in figures.items():
        print(f"{name}: {value}")
    ok = (
        figures["busiest_60s_window"] <= args.rate
        and figures["refused_45009"] == 0
        and figures["share_of_limit"] >= 0.9
    )
    print("verdict:", "under the limit, >= 90 % of it" if ok else "NOT within the target")


if __name__ == "__main__":
    main()
