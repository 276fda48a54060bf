"""Benchmark shared pacing: two flow runs, each in its own process, push mark_tag through one limit.

A sandbox (its own process) limits externalcontact/mark_tag to --rate calls a minute over a
sliding 60 s window and answers 45009 above it; a Prefect server (the test harness) holds the
limits `ensure_rate_limits` makes; two worker processes each run a flow whose threads push as
fast as their `WeComApp(shared_pacing=True)` client lets them for --seconds. The figures come
from the sandbox's own request log, as WeCom counts: the busiest 60 s window of calls it
admitted (never over the limit), the busiest second and calendar minute, calls a minute over
the push and over its quietest full window (>= 90 % of the limit), and the 45009s it answered
(0). Beside them: the requests each process made to the Prefect server to claim its calls.

    python -m benchmarks.bench_shared_pacing [--rate 600] [--seconds 90] [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

API = "externalcontact/mark_tag"
WINDOW = 60.0
RATE_LIMITED = 45009
TOGETHER = ("seconds", "calls_per_minute", "share_of_limit", "quietest_share_of_limit")


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


def worker(
    base_url: str, rate: int, seconds: float, pairs_file: str, out_file: str, threads: int
) -> None:
    """One process: a flow run whose `threads` threads call mark_tag as fast as pacing allows.

    Threads, because one call waits on WeCom's round trip: a single sequential caller is bound
    by that latency long before it meets the limit.
    """
    from concurrent.futures import ThreadPoolExecutor

    from prefect import flow

    from siyu.blocks.wecom import WeComError

    pairs = json.loads(Path(pairs_file).read_text())

    @flow(name="bench-shared-pacing-push", log_prints=False)
    def push_marks() -> None:
        errors: Counter[str] = Counter()
        with _app(base_url, rate).get_client() as client:
            client.get_follow_user_list()  # the token, outside the measured calls
            # Both flow runs start pushing together, once both are up.
            Path(out_file + ".ready").touch()
            while not Path(pairs_file + ".go").exists():
                time.sleep(0.01)
            started = time.time()
            deadline = started + seconds

            def push(offset: int) -> int:
                i, made = offset, 0
                while time.time() < deadline:
                    userid, external_userid, tag_id = pairs[i % len(pairs)]
                    i += threads
                    try:
                        # A tag the pair may hold already: the same call, the same pacing.
                        client.mark_tag(userid, external_userid, add_tag=[tag_id])
                        made += 1
                    except WeComError as exc:
                        errors[str(exc.errcode)] += 1
                return made

            with ThreadPoolExecutor(threads) as pool:
                made = sum(pool.map(push, range(threads)))
            reservoir = client._pacer.reservoir(API)  # type: ignore[attr-defined]
        Path(out_file).write_text(
            json.dumps(
                {
                    "calls": made,
                    "claims": reservoir.claims,
                    "dropped": reservoir.dropped,
                    "errors": dict(errors),
                    "started": started,
                    "ended": time.time(),
                }
            )
        )

    push_marks()


def _most_in(times: list[float], seconds: float) -> int:
    """Most calls in any `seconds` window (times sorted)."""
    return max((bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times)), default=0)


def figures(times: list[float], refused: int, rate: int) -> dict[str, float | int | None]:
    """What WeCom would count of the admitted calls at `times` (sorted, seconds)."""
    span = times[-1] - times[0]
    # The sustained rate: whole windows inside the push (the first may hold the burst).
    full = [
        bisect.bisect_left(times, t + WINDOW) - i
        for i, t in enumerate(times)
        if t + WINDOW <= times[-1]
    ]
    per_minute = len(times) / span * 60
    return {
        "calls": len(times),
        "seconds": round(span, 1),
        "calls_per_minute": round(per_minute, 1),
        "busiest_60s_window": _most_in(times, WINDOW),
        "busiest_calendar_minute": max(Counter(math.floor(t / WINDOW) for t in times).values()),
        "busiest_second": _most_in(times, 1.0),
        "quietest_full_60s_window": min(full) if full else None,
        "share_of_limit": round(per_minute / rate, 3),
        "quietest_share_of_limit": round(min(full) / rate, 3) if full else None,
        "refused_45009": refused,
    }


def run(rate: int, seconds: float, workers: int, threads: int) -> dict[str, object]:
    import pandas as pd
    import requests
    from prefect.testing.utilities import prefect_test_harness

    from siyu.blocks.wecom import ensure_rate_limits
    from siyu.blocks.wecom.pacing import shared_shape
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
    pairs_file.chmod(0o600)  # sample contacts: kept like customer data

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
                    ],
                    env=env,
                )
                for out in outs
            ]
            while not all(Path(f"{out}.ready").exists() for out in outs):
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError("a worker stopped before pushing")
                time.sleep(0.05)
            Path(f"{pairs_file}.go").touch()
            for proc in procs:
                proc.wait(timeout=seconds + 600)
        reports = [json.loads(out.read_text()) for out in outs]
        # Only the time and the answer of each call: the log's parameters are contacts' ids.
        log = requests.get(f"{base}/sandbox/requests", params={"api": API}, timeout=60).json()
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    admitted = sorted(e["at"] for e in log if e["errcode"] != RATE_LIMITED)
    refused = sum(1 for e in log if e["errcode"] == RATE_LIMITED)
    shape = shared_shape(rate)
    together = (max(r["started"] for r in reports), min(r["ended"] for r in reports))
    both = [t for t in admitted if together[0] <= t <= together[1]]
    return {
        "limit_per_minute": rate,
        "workers": workers,
        "threads_per_worker": threads,
        "claim_calls": shape.claim,
        "burst_calls": shape.burst,
        "refill_per_minute": round(shape.per_second * WINDOW, 1),
        **figures(admitted, refused, rate),
        # While every flow run pushed (a flow's end waits for its threads' last calls).
        **{f"all_pushing_{k}": v for k, v in figures(both, 0, rate).items() if k in TOGETHER},
        "per_worker_calls": [r["calls"] for r in reports],
        "per_worker_claims": [r["claims"] for r in reports],
        "per_worker_claimed_calls_dropped": [r["dropped"] for r in reports],
        "client_errors": [r["errors"] for r in reports],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        base_url, rate, seconds, pairs_file, out_file, threads = sys.argv[2:8]
        worker(base_url, int(rate), float(seconds), pairs_file, out_file, int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=600, help="mark_tag calls a minute")
    parser.add_argument("--seconds", type=float, default=90, help="how long each worker pushes")
    parser.add_argument("--workers", type=int, default=2, help="processes pushing at once")
    parser.add_argument("--threads", type=int, default=4, help="threads in each process")
    args = parser.parse_args()
    # A private Prefect home: the harness's server database is this run's alone.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="siyu-bench-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    load = os.getloadavg()
    result = run(args.rate, args.seconds, args.workers, args.threads)
    result["load_average_before"] = " ".join(f"{x:.2f}" for x in load)
    result["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for name, value in result.items():
        print(f"{name}: {value}")
    ok = (
        result["busiest_60s_window"] <= args.rate
        and result["refused_45009"] == 0
        and result["share_of_limit"] >= 0.9
        and result["all_pushing_share_of_limit"] >= 0.9
    )
    print("verdict:", "under the limit, >= 90 % of it" if ok else "NOT within the target")


if __name__ == "__main__":
    main()
