"""The scale-out setup as production runs it: PostgreSQL, a Prefect server, `siyu deploy`, workers.

Everything is a real process started the way a newcomer starts it from README's scale section:
a WeCom sandbox, a Prefect server on its own PostgreSQL database, siyu's database on another,
`siyu deploy` against that server, and workers (`prefect worker start --pool siyu`), each with
its own absolute home and working directory and nothing but PREFECT_API_URL (plus what any
process needs: PATH, HOME, a UTF-8 locale) to find its configuration. Each process is the
leader of its own process group, so "this machine is lost" is one `killpg(SIGKILL)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, TypeVar

import psutil
import requests
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.fixtures.sandbox import SandboxHandle

HOST = "127.0.0.1"
# The PostgreSQL server the databases are made on: CI's SIYU_TEST_POSTGRES_URL when it names
# one, else this machine's (trust auth, user postgres).
POSTGRES_URL_ENV = "SIYU_TEST_POSTGRES_URL"
LOCAL_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
BIN = Path(sys.executable).parent
T = TypeVar("T")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class HarnessError(RuntimeError):
    """A part of the cluster did not start or answer; the message carries its log's tail."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_until(what: Callable[[], T], timeout: float, describe: str, every: float = 0.5) -> T:
    """Poll `what()` until it gives something truthy; HarnessError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found:
            return found
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {describe}")
        time.sleep(every)


# ---- PostgreSQL databases of one test run ---------------------------------------------------


def postgres_url(database: str, driver: str = "postgresql+psycopg2") -> str:
    """The URL of `database` on the test PostgreSQL server, through `driver`."""
    base = sa.engine.make_url(os.environ.get(POSTGRES_URL_ENV) or LOCAL_POSTGRES_URL)
    url = base.set(drivername=driver, database=database, query={})
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database `<prefix>_<random>` on the test PostgreSQL server, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(
        postgres_url("postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.connect() as connection:
            # FORCE: a killed worker's connections must not keep the database alive.
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# ---- processes ---------------------------------------------------------------------------------


def base_env(home: Path) -> dict[str, str]:
    """What any process needs and nothing of this machine's siyu or Prefect configuration."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # No internet here: Prefect and GX would try to phone home.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


@dataclass
class Service:
    """A process the harness started as the leader of its own process group, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    seen: set[int] = field(default_factory=set)

    def output(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> set[int]:
        """This process and every process below it now (remembered for the final clean-up)."""
        with contextlib.suppress(psutil.Error):
            self.seen |= {self.process.pid} | {
                child.pid for child in psutil.Process(self.process.pid).children(recursive=True)
            }
        return set(self.seen)

    def kill_machine(self) -> None:
        """As if the machine died: SIGKILL the group and every process below, no goodbye."""
        pids = self.tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left of it and below it."""
        pids = self.tree()
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.kill_machine()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=5)
        self.log_file.close()


def start_service(
    name: str, command: list[str], env: dict[str, str], cwd: Path, log_dir: Path
) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return Service(name, process, log_path, log_file)


def wait_healthy(service: Service, url: str, timeout: float) -> None:
    def healthy() -> bool:
        if not service.alive():
            raise HarnessError(
                f"{service.name} exited ({service.process.returncode}):\n{service.tail()}"
            )
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(healthy, timeout, f"{service.name} at {url}")
    except HarnessError as exc:
        raise HarnessError(f"{exc}\n{service.tail()}") from None


# ---- the cluster ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    """What a scale test drives: the Prefect API, the sandbox, siyu's database, the workers."""

    root: Path
    api_url: str
    sandbox: SandboxHandle
    database_url: str
    shared: Path
    sample_dir: Path
    workers: dict[str, Service]
    services: list[Service]

    @property
    def landing(self) -> Path:
        return self.shared / "landing"

    def worker_of(self, flow_run_id: Any) -> str | None:
        """The worker that started a flow run, from what each worker logged (its name)."""
        # Both workers may reach for a run; the one the server turned away logs "Aborted".
        took = f"submitting flow run '{flow_run_id}'"
        lost = f"Aborted submission of flow run '{flow_run_id}'"
        found = [
            name
            for name, worker in self.workers.items()
            if took in (log := worker.output()) and lost not in log
        ]
        return found[0] if len(found) == 1 else None

    def worker_running(self, pid: int) -> str | None:
        """The worker whose process tree holds `pid` (a flow run's process)."""
        for name, worker in self.workers.items():
            if pid in worker.tree():
                return name
        return None


def _sandbox(root: Path, log_dir: Path) -> tuple[Service, SandboxHandle]:
    """Start the WeCom sandbox (in memory); it is waited for with `wait_healthy`."""
    port = free_port()
    service = start_service(
        "sandbox",
        [str(BIN / "siyu"), "sandbox", "--host", HOST, "--port", str(port)],
        base_env(root / "sandbox-home"),
        root / "sandbox-home",
        log_dir,
    )
    url = f"http://{HOST}:{port}"
    server = SimpleNamespace(url=url, api_base=f"{url}/cgi-bin/", pay_base=f"{url}/")
    return service, SandboxHandle(server)  # type: ignore[arg-type]


def _prefect_server(root: Path, log_dir: Path, database: str) -> tuple[Service, str]:
    """Start a Prefect server on its PostgreSQL database; returns it and its API URL."""
    port = free_port()
    home = root / "prefect-server"
    env = base_env(home) | {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url(database, "postgresql+asyncpg"),
        "PREFECT_UI_URL": f"http://{HOST}:{port}",
    }
    service = start_service(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)],
        env,
        home,
        log_dir,
    )
    return service, f"http://{HOST}:{port}/api"


def siyu_deploy(cluster_root: Path, api_url: str, sandbox: SandboxHandle, db_url: str) -> str:
    """`siyu deploy` as README's scale section runs it; returns its output."""
    shared = cluster_root / "shared"
    env = base_env(cluster_root / "deployer-home") | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(cluster_root / "deployer-home" / "prefect"),
        # Secrets as variables, as the help says (flags show in `ps`).
        "SIYU_DATABASE_URL": db_url,
        "SIYU_WECOM_SECRET": sandbox.secret,
        "SIYU_MOBILE_SALT": "scale-test-salt",
        "SIYU_ROBOT_KEY": "siyu-ops",
    }
    command = [
        str(BIN / "siyu"),
        "deploy",
        "--landing-dir",
        str(shared / "landing"),
        "--reports-dir",
        str(shared / "reports"),
        "--entries-dir",
        str(shared / "entries"),
        "--wecom-base-url",
        sandbox.api_base,
        "--wecom-corp-id",
        sandbox.corp_id,
        "--wecom-agent-id",
        str(sandbox.agent_id),
        "--pay-base-url",
        sandbox.pay_base,
        "--pay-mch-id",
        "1900000109",
    ]
    done = subprocess.run(  # noqa: S603 - our own console script
        command,
        env=env,
        cwd=cluster_root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise HarnessError(f"siyu deploy exited {done.returncode}:\n{output}")
    return output


def start_worker(root: Path, name: str, api_url: str, log_dir: Path, limit: int) -> Service:
    """One worker machine: its own absolute homes and directory, only PREFECT_API_URL set."""
    home = root / name
    env = base_env(home) | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home / "prefect"),
        "SIYU_HOME": str(home / "siyu"),
        # Poll every second instead of every 10 s: the test waits less for each pick-up.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    return start_service(
        name,
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "siyu",
            "--name",
            name,
            "--limit",
            str(limit),
        ],
        env,
        home / "work",
        log_dir,
    )


def sample(root: Path, customers: int, business_date: str) -> Path:
    """`siyu sample` into root/sample; returns the directory (export + sandbox_seed)."""
    out = root / "sample"
    done = subprocess.run(  # noqa: S603 - our own console script
        [
            str(BIN / "siyu"),
            "sample",
            "--customers",
            str(customers),
            "--managers",
            "3",
            "--groups",
            "4",
            "--seed",
            "11",
            "--date",
            business_date,
            "--out",
            str(out),
        ],
        env=base_env(root / "sampler-home"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise HarnessError(f"siyu sample failed:\n{done.stdout}{done.stderr}")
    return out


@contextlib.contextmanager
def cluster(
    root: Path,
    *,
    customers: int,
    business_date: str,
    workers: tuple[str, ...] = ("worker-a", "worker-b"),
    worker_limit: int = 2,
    sandbox_config: dict[str, Any] | None = None,
) -> Iterator[Cluster]:
    """Start everything, hand over the cluster, then stop every process and drop the databases."""
    log_dir = root / "logs"
    services: list[Service] = []
    with postgres_database("siyu_scale") as siyu_db, postgres_database("prefect_scale") as pf_db:
        try:
            sandbox_service, sandbox = _sandbox(root, log_dir)
            services.append(sandbox_service)
            server, api_url = _prefect_server(root, log_dir, pf_db)
            services.append(server)
            # The sample is made while both start (the server takes 10-20 s on a new database).
            sample_dir = sample(root, customers, business_date)
            wait_healthy(sandbox_service, f"{sandbox.url}/sandbox/health", 60)
            wait_healthy(server, f"{api_url}/health", 180)
            if sandbox_config:
                sandbox.config(**sandbox_config)
            sandbox.seed(sample_dir / "sandbox_seed")
            shared = root / "shared"
            (shared / "landing").mkdir(parents=True)
            export = next(sample_dir.glob("core_export_*"))
            shutil.copy2(export, shared / "landing" / export.name)
            db_url = postgres_url(siyu_db)
            deploy_output = siyu_deploy(root, api_url, sandbox, db_url)
            (log_dir / "siyu-deploy.log").write_text(deploy_output)
            started = {
                name: start_worker(root, name, api_url, log_dir, worker_limit) for name in workers
            }
            services.extend(started.values())
            yield Cluster(
                root=root,
                api_url=api_url,
                sandbox=sandbox,
                database_url=db_url,
                shared=shared,
                sample_dir=sample_dir,
                workers=started,
                services=services,
            )
        finally:
            for service in reversed(services):
                service.stop()


def next_export(landing: Path, day: str, *, every: int, factor: float) -> Path:
    """The next business day's export as the core bank would land it: the newest export with
    its date moved to `day` (YYYYMMDD) and every `every`-th customer's assets times `factor`
    (so their tier tags change). GBK, as the bank writes it; private, as it holds mobiles."""
    import pandas as pd

    newest = max(landing.glob("core_export_*.csv"))
    frame = pd.read_csv(newest, encoding="gbk", dtype=str, keep_default_na=False)
    frame["数据日期"] = day
    moved = frame.index % every == 0
    frame.loc[moved, "当前资产"] = (frame.loc[moved, "当前资产"].astype(float) * factor).map(
        "{:.2f}".format
    )
    # The peak follows the assets up, so the export stays consistent (peak >= current).
    below = frame["历史最高资产"].astype(float) < frame["当前资产"].astype(float)
    frame.loc[below, "历史最高资产"] = frame.loc[below, "当前资产"]
    path = landing / f"core_export_{day}.csv"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="gbk", newline="") as out:
        frame.to_csv(out, index=False)
    return path


# ---- reading what happened ------------------------------------------------------------------------


def busiest_minute(times: list[float], window: float = 60.0) -> int:
    """The most calls any `window`-second span holds (the sandbox's sliding window)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def mark_tag_calls(sandbox: SandboxHandle, since: int = 0) -> list[dict[str, Any]]:
    """Successful mark_tag calls since log sequence `since` (the ones that changed WeCom)."""
    return [
        entry
        for entry in sandbox.requests("externalcontact/mark_tag", since=since)
        if not entry["errcode"] and not entry["fault"]
    ]


def pair_of(entry: dict[str, Any]) -> tuple[str, str]:
    params = entry["params"]
    return (params["userid"], params["external_userid"])


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)[:4000]
