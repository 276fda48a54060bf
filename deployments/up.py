"""`siyu up`: start the sandbox, the Prefect server and the deployments; Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

HOST = "127.0.0.1"
SANDBOX_START_SECONDS = 60.0
# A fresh Prefect home needs 9-13 s to create its database; a slow machine gets headroom.
PREFECT_START_SECONDS = 180.0
STOP_GRACE_SECONDS = 10.0
EXPORT_PATTERNS = ("core_export_*.csv", "core_export_*.parquet")
SANDBOX_ROBOT_KEY = "siyu-ops"  # noqa: S105 - the sandbox robot's demo key, not a real one
STOPPED_RUN_MESSAGE = "siyu was stopped while this run was in progress; run it again"
ORPHANED_RUN_MESSAGE = "siyu stopped (or was killed) while this run was in progress; run it again"


class StartupError(Exception):
    """Something kept siyu from starting; the message says what and what to do."""


@dataclass(frozen=True)
class UpOptions:
    """What `siyu up` was asked for on the command line."""

    prefect_port: int = 4200
    sandbox_port: int = 8055
    customers: int = 20_000
    browser_hint: bool = True


@dataclass
class Child:
    """A child process siyu started in its own process group, and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote, to explain why it did not start."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def run_up(options: UpOptions) -> int:
    """Start everything, serve the deployments until Ctrl-C or SIGTERM, then stop everything."""
    prefect_url = f"http://{HOST}:{options.prefect_port}"
    sandbox_url = f"http://{HOST}:{options.sandbox_port}"
    home = _prepare_environment(prefect_url, sandbox_url)
    children: list[Child] = []
    prefect_ready = False
    # A shell starting us in the background leaves SIGINT ignored, and asyncio (inside serve())
    # only turns Ctrl-C into a clean stop when the default handler is in place: put it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # Prefect's own SIGTERM handler (installed by serve()) calls an async stop without awaiting
    # it before exiting; the warning it prints says nothing to the person stopping siyu.
    warnings.filterwarnings(
        "ignore", message="coroutine 'Runner.astop' was never awaited", category=RuntimeWarning
    )
    try:
        _check_ports_free(options)
        children.append(_start_sandbox(home, options.sandbox_port))
        # The Prefect server takes ~10 s to boot: prepare data while it does.
        children.append(_start_prefect_server(home, options.prefect_port))
        _wait_healthy(children[0], f"{sandbox_url}/sandbox/health", SANDBOX_START_SECONDS)
        _prepare_data(home, sandbox_url, options.customers)
        _wait_healthy(children[1], f"{prefect_url}/api/health", PREFECT_START_SECONDS)
        prefect_ready = True
        # Runs a killed siyu left "Running" would hold their deployment's concurrency slot.
        crash_unfinished_runs(ORPHANED_RUN_MESSAGE)
        _register_blocks(f"{sandbox_url}/cgi-bin/")

        from siyu.deployments.serve import deployments, serve_all

        # Built before the announcement, so a flow that fails to import stops start-up here.
        served = deployments()
        _listen_for_alerts_now(served)
        _announce(prefect_url, sandbox_url, home, options.browser_hint)
        serve_all(served)
        return 0
    except StartupError as exc:
        print(f"siyu up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 - said before "siyu stopped", not after it
        print(f"siyu up: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second signal while stopping must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Flow runs in progress first, while the Prefect server can still record how they end.
        _stop_descendants(keep={child.process.pid for child in children})
        if prefect_ready:
            crash_unfinished_runs(STOPPED_RUN_MESSAGE)
        for child in reversed(children):
            _stop_child(child)
        _stop_descendants()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous_sigterm)
        print("siyu stopped", flush=True)


def _listen_for_alerts_now(served: list[Any]) -> None:
    """One ops-alerts run at once: its schedule's first run may be minutes away.

    The alert flow listens for most of its five minutes; from start-up on, a failure reaches
    the ops robot within seconds, not at the first five-minute mark.
    """
    from prefect.client.orchestration import get_client

    from siyu.deployments.alerts import ALERT_FLOW

    for runner in served:
        if runner.flow_name == ALERT_FLOW:
            deployment_id = runner.apply()
            with get_client(sync_client=True) as client:
                client.create_flow_run_from_deployment(deployment_id)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM during start-up stops siyu the same way Ctrl-C does."""
    raise KeyboardInterrupt


def _prepare_environment(prefect_url: str, sandbox_url: str) -> Path:
    """Point this process (and the flow runs it starts) at siyu's home and its Prefect server.

    Done before anything imports prefect, whose settings are read at import.
    """
    from siyu.schemas.settings import (
        EMBEDDED,
        ENVIRONMENT_VARIABLE,
        Settings,
        keep_files_private,
        make_private_dir,
    )

    # Everything siyu and its children write from here on (the database, Data Docs, the
    # sandbox's state, logs) is for this user alone.
    keep_files_private()
    home = Settings.from_env().make_home()
    for directory in (home / "sandbox", home / "logs", home / "landing"):
        make_private_dir(directory)
    # Absolute, so flow runs started by serve() find the same home whatever their directory.
    os.environ["SIYU_HOME"] = str(home)
    # `siyu up` is the embedded environment: a block not saved yet comes from SIYU_* defaults.
    os.environ[ENVIRONMENT_VARIABLE] = EMBEDDED
    os.environ.setdefault("SIYU_WECOM_BASE_URL", f"{sandbox_url}/cgi-bin/")
    # The sandbox serves WeChat Pay's red-packet API too: demo payouts never leave the machine.
    os.environ.setdefault("SIYU_PAY_BASE_URL", f"{sandbox_url}/")
    prefect_home = os.environ.get("PREFECT_HOME")
    if prefect_home:
        print(f"Prefect home: {prefect_home} (PREFECT_HOME, as exported)", flush=True)
    os.environ.update(_prefect_environment(home, prefect_url))
    make_private_dir(Path(os.environ["PREFECT_HOME"]))
    # Only now: the deployment table imports prefect, which reads its settings at import.
    from siyu.deployments.specs import HEARTBEAT_SECONDS, HEARTBEAT_VARIABLE

    # The pace the dead-run automation expects of every run served here.
    os.environ[HEARTBEAT_VARIABLE] = str(HEARTBEAT_SECONDS)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return home


def _prefect_environment(home: Path, prefect_url: str) -> dict[str, str]:
    """The Prefect settings the server and its clients share (SQLite in SIYU_HOME by default).

    An exported PREFECT_HOME is kept, not replaced: it is someone's choice of where Prefect's
    database lives.
    """
    return {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The server needs the UI address to put run links into notifications.
        "PREFECT_UI_URL": prefect_url,
        "PREFECT_API_URL": f"{prefect_url}/api",
        # Old flow runs, their logs and artifacts go after the retention period (90 days by
        # default) as events do: otherwise Prefect's database grows ~0.5 GB a year (BENCHMARKS.md).
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    }


def _check_ports_free(options: UpOptions) -> None:
    """Fail before starting anything when a port is taken, saying which and how to choose."""
    wanted = (
        ("Prefect server", options.prefect_port, "--prefect-port"),
        ("WeCom sandbox", options.sandbox_port, "--sandbox-port"),
    )
    if options.prefect_port == options.sandbox_port:
        raise StartupError(
            f"the Prefect server and the WeCom sandbox cannot share port {options.prefect_port}: "
            "pick another with --prefect-port or --sandbox-port"
        )
    for what, port, flag in wanted:
        if not port_is_free(port):
            raise StartupError(
                f"port {port} for the {what} is already in use (another siyu up, or another "
                f"program?): stop it, or pick a free port with {flag}, e.g. {flag} {port + 1}"
            )


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option uvicorn sets, so a port in TIME_WAIT after a previous run counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _start_child(name: str, command: list[str], log_path: Path, env: dict[str, str]) -> Child:
    """Start a child in its own process group (so it can be stopped with all it started)."""
    log_file = log_path.open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        # Own session: Ctrl-C in the terminal reaches only us, and we stop children in order.
        start_new_session=True,
    )
    return Child(name=name, process=process, log_path=log_path, log_file=log_file)


def _start_sandbox(home: Path, port: int) -> Child:
    """Start the WeCom sandbox with its state kept in SIYU_HOME."""
    command = [
        sys.executable,
        "-m",
        "siyu.deployments.cli",
        "sandbox",
        "--host",
        HOST,
        "--port",
        str(port),
        "--state",
        str(home / "sandbox" / "state.db"),
    ]
    return _start_child("WeCom sandbox", command, home / "logs" / "sandbox.log", dict(os.environ))


def _start_prefect_server(home: Path, port: int) -> Child:
    """Start the Prefect server (API and UI) with its database in SIYU_HOME."""
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    env = dict(os.environ)
    env.update(_prefect_environment(home, f"http://{HOST}:{port}"))
    return _start_child("Prefect server", command, home / "logs" / "prefect-server.log", env)


def _wait_healthy(child: Child, url: str, timeout: float) -> None:
    """Wait until the child answers its health URL; fail with its last log lines if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StartupError(
                f"the {child.name} stopped while starting (exit code "
                f"{child.process.returncode}); its last output ({child.log_path}):\n"
                f"{child.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http to ourselves
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise StartupError(
        f"the {child.name} did not answer {url} within {timeout:.0f} s; see {child.log_path}"
    )


def _prepare_data(home: Path, sandbox_url: str, customers: int) -> None:
    """Migrate the database; make sample data on first start; seed a fresh sandbox."""
    from siyu.schemas.database import upgrade
    from siyu.schemas.settings import Settings

    settings = Settings.from_env()
    upgrade(settings.database_url)
    print("database: at the newest schema", flush=True)

    landing = settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    sample_dir = home / "sample"
    seed_dir = sample_dir / "sandbox_seed"
    export = _newest_export(landing)
    if export is None or not seed_dir.is_dir():
        from siyu.sandbox.sample import SampleSpec, generate

        print(f"sample data: generating {customers:,} customers ...", flush=True)
        result = generate(SampleSpec(customers=customers), out_dir=sample_dir)
        seed_dir = result.seed_dir
        if export is None:
            export = landing / result.export_path.name
            shutil.copy2(result.export_path, export)
    print(f"export: {export}", flush=True)

    if _sandbox_is_fresh(sandbox_url):
        counts = _control(sandbox_url, "POST", "/sandbox/seed", {"path": str(seed_dir)})
        summary = ", ".join(f"{value:,} {key}" for key, value in counts.items())
        print(f"WeCom sandbox: seeded ({summary})", flush=True)
    else:
        print("WeCom sandbox: reusing its saved state", flush=True)


def _newest_export(landing: Path) -> Path | None:
    """The newest core-banking export in the landing directory, if any."""
    found = [path for pattern in EXPORT_PATTERNS for path in landing.glob(pattern)]
    return max(found, key=lambda path: (path.name, path.stat().st_mtime), default=None)


def _sandbox_is_fresh(sandbox_url: str) -> bool:
    """Whether the sandbox holds no contacts yet: asked the way siyu asks WeCom."""
    from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET

    query = urllib.parse.urlencode({"corpid": SANDBOX_CORP_ID, "corpsecret": SANDBOX_SECRET})
    token = _control(sandbox_url, "GET", f"/cgi-bin/gettoken?{query}")
    if token.get("errcode", 0) != 0:
        raise StartupError(f"the WeCom sandbox refused its demo credentials ({token['errcode']})")
    query = urllib.parse.urlencode({"access_token": token["access_token"]})
    users = _control(sandbox_url, "GET", f"/cgi-bin/externalcontact/get_follow_user_list?{query}")
    return not users.get("follow_user")


def _control(sandbox_url: str, method: str, path: str, body: dict | None = None) -> dict:
    """One JSON call to the sandbox; errors name the call, never the token or secret."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - http to our own sandbox
        sandbox_url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    api = path.split("?", 1)[0]
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise StartupError(f"the WeCom sandbox answered {api} with HTTP {exc.code}") from None
    except OSError as exc:
        raise StartupError(f"the WeCom sandbox did not answer {api}: {exc}") from None


def _register_blocks(wecom_base_url: str) -> None:
    """Set the server up as `siyu deploy` does production's: blocks, limits, robot, automations."""
    from siyu.deployments.setup import ServerConfig, prepare_server
    from siyu.schemas.settings import Settings

    config = ServerConfig.embedded(
        Settings.from_env(),
        wecom_base_url=wecom_base_url,
        # The sandbox's group robot stands in for the ops team's; edit the block for the real one.
        robot_url=f"{wecom_base_url}webhook/send?key={{{{key}}}}",
        robot_key=SANDBOX_ROBOT_KEY,
    )
    report = prepare_server(config)
    print(report.render(), flush=True)


def crash_unfinished_runs(message: str) -> None:
    """Mark runs of siyu's deployments that no process runs any more as Crashed, saying why.

    Only this process serves these deployments on this server, so a run still Running or
    Pending when it starts or stops has lost its process; the outbox makes a rerun safe.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    from siyu.deployments.serve import DEPLOYMENT_NAMES

    try:
        with get_client(sync_client=True) as client:
            ids = []
            for name in DEPLOYMENT_NAMES:
                with contextlib.suppress(ObjectNotFound):
                    ids.append(client.read_deployment_by_name(name).id)
            if not ids:
                return
            unfinished = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))
                ),
            )
            for run in runs:
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                print(f"flow run {run.name}: marked Crashed ({message})", flush=True)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must never block start or stop
        print(f"siyu up: could not check for unfinished flow runs: {exc}", file=sys.stderr)


def _announce(prefect_url: str, sandbox_url: str, home: Path, browser_hint: bool) -> None:
    """Tell the person at the terminal where everything is and what to do first."""
    lines = [
        "",
        "siyu is up.",
        f"  Prefect UI:     {prefect_url}",
        f"  WeCom sandbox:  {sandbox_url}/cgi-bin/  (control API {sandbox_url}/sandbox/)",
        f"  data (SIYU_HOME): {home}",
        f"  server logs:    {home / 'logs'}",
    ]
    if browser_hint:
        lines += [
            "",
            f"Open {prefect_url} in a browser, then Deployments:",
            "  1. contacts-sync/hourly -> Run: pulls the managers' WeCom contacts (runs hourly too)",
            "  2. tag-sync/daily -> Run: gates today's export and pushes the tag difference",
            "     (Custom run with dry_run to preview the changes first).",
            "Each run's Artifacts tab holds its report.",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


def _stop_child(child: Child) -> None:
    """Stop a child's whole process group: SIGTERM, wait, then SIGKILL."""
    try:
        pgid = child.process.pid  # leader of its own session, so its pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_GRACE_SECONDS)
        # Also whatever the leader started and left behind in its group.
        _signal_group(pgid, signal.SIGKILL)
        child.process.wait(timeout=STOP_GRACE_SECONDS)
    finally:
        child.log_file.close()


def _signal_group(pgid: int, signum: int) -> None:
    """Signal a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _stop_descendants(keep: Set[int] = frozenset()) -> None:
    """Stop every process below this one still running (e.g. a flow run), but `keep` and theirs."""
    tree = descendants(os.getpid())
    for pid in keep:
        tree -= {pid} | descendants(pid)
    _terminate_all(sorted(tree), STOP_GRACE_SECONDS)


def _terminate_all(pids: list[int], grace: float) -> None:
    """SIGTERM the pids, wait up to `grace` seconds, then SIGKILL the survivors."""
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    if not processes:
        return
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    # wait_procs also reaps those that are our own children, so none lingers as a zombie.
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)


def descendants(pid: int) -> set[int]:
    """Every process below pid in the process tree (none if pid is gone)."""
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()
