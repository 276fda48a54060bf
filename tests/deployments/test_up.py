"""`siyu up` end to end: sandbox, Prefect server, served deployments, the UI in Chromium, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from siyu.blocks.environment import SIYU_BLOCK_TYPES
from siyu.deployments import serve
from siyu.deployments.up import descendants, port_is_free

SIYU = Path(sys.executable).with_name("siyu")
CHROMIUM = Path("/usr/bin/chromium")
# STACK.md's flags: no network chatter, no GPU, a throwaway profile per run.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a zombie has exited: only its entry is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def hermetic_env(home: Path) -> dict[str, str]:
    """This machine's environment minus any siyu or Prefect settings, with a private SIYU_HOME."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("SIYU_", "PREFECT_"))
    }
    env.update(
        SIYU_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class RunningUp:
    """A `siyu up` subprocess and its console output."""

    def __init__(self, home: Path, log: Path, prefect_port: int, sandbox_port: int) -> None:
        self.log = log
        self.prefect_port = prefect_port
        self.sandbox_port = sandbox_port
        self.api = f"http://127.0.0.1:{prefect_port}/api"
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                str(SIYU),
                "up",
                "--prefect-port",
                str(prefect_port),
                "--sandbox-port",
                str(sandbox_port),
                "--customers",
                "500",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=hermetic_env(home),
            cwd=home.parent,
            # Its own group, as in a terminal: SIGINT below reaches `siyu up` alone.
            start_new_session=True,
        )
        self.seen_pids: set[int] = set()

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def remember_tree(self) -> set[int]:
        """Every process `siyu up` has started so far (checked for leftovers at the end)."""
        self.seen_pids |= descendants(self.process.pid)
        return self.seen_pids

    def wait_for(self, what, timeout: float, describe: str):
        """Poll `what()` until it gives something truthy; fail if `siyu up` dies or time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.remember_tree()
            if self.process.poll() is not None:
                pytest.fail(
                    f"siyu up exited ({self.process.returncode}) while waiting for {describe}:\n"
                    f"{self.output()}"
                )
            result = what()
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {describe}:\n{self.output()}")

    def interrupt_and_check_all_gone(self) -> None:
        """Ctrl-C: `siyu up` and everything it started must be gone within 30 s."""
        tree = set(self.remember_tree())
        assert tree, "siyu up should have started its sandbox and Prefect server"
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"siyu up still running 30 s after SIGINT:\n{self.output()}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):
            time.sleep(0.1)
        left = sorted(pid for pid in tree if alive(pid))
        assert not left, f"processes left behind after siyu up stopped: {left}"
        assert self.process.returncode == 0, self.output()
        assert "siyu stopped" in self.output()
        assert port_is_free(self.prefect_port)
        assert port_is_free(self.sandbox_port)

    def kill_everything(self) -> None:
        """Last resort when a test failed half-way: leave nothing running on the machine."""
        for pid in self.remember_tree() | {self.process.pid}:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        finally:
            self._log_file.close()


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator:
    started: list[RunningUp] = []

    def start(home: Path, prefect_port: int, sandbox_port: int) -> RunningUp:
        up = RunningUp(home, tmp_path / f"up-{len(started)}.log", prefect_port, sandbox_port)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill_everything()


def ensure_chromium() -> Path:
    """Debian's Chromium, installed if missing (never a test tool's own browser download)."""
    if CHROMIUM.exists():
        return CHROMIUM
    install = subprocess.run(
        "apt-get update && apt-get install -y chromium",
        shell=True,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if install.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(
            "Chromium is missing and `apt-get update && apt-get install -y chromium` failed "
            f"(exit {install.returncode}); install it as root and rerun:\n"
            f"{install.stdout[-2000:]}\n{install.stderr[-2000:]}"
        )
    return CHROMIUM


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_chromium()), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def deployment(api: str, name: str) -> dict | None:
    flow_name, deployment_name = name.split("/")
    response = requests.get(f"{api}/deployments/name/{flow_name}/{deployment_name}", timeout=5)
    return response.json() if response.status_code == 200 else None


def both_deployments(api: str) -> dict[str, dict] | None:
    try:
        found = {name: deployment(api, name) for name in serve.DEPLOYMENT_NAMES}
    except requests.RequestException:
        return None
    return found if all(found.values()) else None


def flow_run_state(api: str, flow_run_id: str) -> dict | None:
    state = requests.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]
    return state if state and state["type"] in FINAL_STATES else None


def assert_no_personal_data(console: str, home: Path) -> None:
    """No customer's mobile or name in the console or in the logs siyu up writes."""
    (export,) = (home / "landing").glob("core_export_*.csv")
    customers = pd.read_csv(export, encoding="gbk", dtype=str)
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
    for text in (console, logs):
        assert not any(mobile in text for mobile in customers["手机号"])
        assert not any(name in text for name in customers["姓名"])


@pytest.mark.browser
def test_up_serves_the_deployments_the_ui_shows_them_and_ctrl_c_stops_everything(
    tmp_path: Path, start_up, capsys
) -> None:
    home = tmp_path / "siyu-home"
    prefect_port, sandbox_port = free_port(), free_port()
    up = start_up(home, prefect_port, sandbox_port)

    found = up.wait_for(lambda: both_deployments(up.api), 120, "both deployments in Prefect")

    daily = found[serve.TAG_SYNC_DAILY]
    assert daily["entrypoint"] == "siyu.flows.tag_sync.tag_sync"
    # Prefect keeps a deployment's concurrency limit as a global limit of its own.
    assert daily["global_concurrency_limit"]["limit"] == 1
    assert found[serve.CONTACTS_SYNC_HOURLY]["global_concurrency_limit"]["limit"] == 1
    (schedule,) = daily["schedules"]
    assert schedule["schedule"]["cron"] == "0 7 * * *"
    assert schedule["schedule"]["timezone"] == "Asia/Shanghai"
    hourly = found[serve.CONTACTS_SYNC_HOURLY]
    assert hourly["entrypoint"] == "siyu.flows.contacts_sync.contacts_sync"
    assert hourly["schedules"][0]["schedule"]["cron"] == "0 * * * *"
    out = up.output()
    assert f"http://127.0.0.1:{prefect_port}" in out
    assert "contacts-sync/hourly -> Run" in out and "tag-sync/daily -> Run" in out
    assert (home / "landing").is_dir() and any((home / "landing").glob("core_export_*"))
    assert (home / "siyu.db").is_file()
    assert (home / "sandbox" / "state.db").is_file()
    # Every block is saved to edit in the Blocks page, the playbooks (conversion paths too) included.
    documents = requests.post(f"{up.api}/block_documents/filter", json={}, timeout=10).json()
    saved = {d["block_type"]["slug"] for d in documents if d["name"] == "siyu"}
    assert {t.get_block_type_slug() for t in SIYU_BLOCK_TYPES} <= saved

    # The UI renders the deployments: a picture for people, the DOM for the assertion.
    url = f"http://127.0.0.1:{prefect_port}/deployments"
    screenshot = tmp_path / "deployments.png"
    shot = chromium(
        f"--screenshot={screenshot}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
        url,
        profile=tmp_path / "chromium-shot",
    )
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    keep = Path(tempfile.mkdtemp(prefix="siyu-browser-check-")) / "deployments.png"
    shutil.copy2(screenshot, keep)
    with capsys.disabled():
        print(f"\nscreenshot of the Prefect UI's deployments page: {keep}")
    dom = chromium(
        "--dump-dom", "--virtual-time-budget=15000", url, profile=tmp_path / "chromium-dom"
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for flow_name, deployment_name in (("tag-sync", "daily"), ("contacts-sync", "hourly")):
        assert flow_name in dom.stdout
        assert deployment_name in dom.stdout

    # One run through the API, picked up by serve() in `siyu up` and run to its end.
    flow_run = requests.post(
        f"{up.api}/deployments/{hourly['id']}/create_flow_run", json={}, timeout=10
    )
    assert flow_run.status_code == 201, flow_run.text
    flow_run_id = flow_run.json()["id"]
    final = up.wait_for(
        lambda: flow_run_state(up.api, flow_run_id), 180, "the contacts-sync run to finish"
    )
    assert final["type"] == "COMPLETED", final.get("message")

    # A blocked tag sync (an export that is not of the asked business date) ends Failed, and
    # the failure alert reaches the ops robot (the sandbox's) with the reason.
    daily = both_deployments(up.api)[serve.TAG_SYNC_DAILY]
    blocked = requests.post(
        f"{up.api}/deployments/{daily['id']}/create_flow_run",
        json={"parameters": {"business_date": "1999-01-01"}},
        timeout=10,
    )
    assert blocked.status_code == 201, blocked.text
    final = up.wait_for(
        lambda: flow_run_state(up.api, blocked.json()["id"]), 180, "the blocked tag-sync to end"
    )
    assert final["type"] == "FAILED"
    assert "not dated 1999-01-01" in final["message"]

    def robot_posts() -> list | None:
        posts = requests.get(
            f"http://127.0.0.1:{sandbox_port}/sandbox/webhook_posts", timeout=5
        ).json()
        return posts or None

    posts = up.wait_for(robot_posts, 60, "the failure alert to reach the ops robot")
    alert = json.dumps(posts, ensure_ascii=False)
    assert "tag-sync" in alert and "Failed" in alert and "fix the export" in alert

    up.interrupt_and_check_all_gone()
    assert_no_personal_data(up.output(), home)

    # A second start reuses the export, the database and the sandbox's state.
    again = start_up(home, prefect_port, sandbox_port)
    again.wait_for(lambda: "siyu is up" in again.output(), 120, "the second start")
    second = again.output()
    assert "reusing its saved state" in second
    assert "generating" not in second
    assert len(list((home / "landing").glob("core_export_*"))) == 1
    again.wait_for(lambda: both_deployments(again.api), 60, "the deployments served again")
    again.interrupt_and_check_all_gone()


@pytest.mark.parametrize("taken_flag", ["--prefect-port", "--sandbox-port"])
def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path, taken_flag: str) -> None:
    home = tmp_path / "siyu-home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        other_flag = "--sandbox-port" if taken_flag == "--prefect-port" else "--prefect-port"
        other_port = free_port()

        result = subprocess.run(
            [str(SIYU), "up", taken_flag, str(taken_port), other_flag, str(other_port)],
            capture_output=True,
            text=True,
            timeout=120,
            env=hermetic_env(home),
            check=False,
        )

    assert result.returncode == 1
    assert f"port {taken_port}" in result.stderr
    assert taken_flag in result.stderr
    assert "Traceback" not in result.stderr
    assert port_is_free(other_port)
    assert not (home / "sandbox" / "state.db").exists()
    assert not (home / "prefect" / "prefect.db").exists()


def test_descendants_finds_a_real_child_and_grandchild() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '30'])"]
    )
    try:
        deadline = time.monotonic() + 10
        found: set[int] = set()
        while time.monotonic() < deadline and len(found) < 2:
            found = descendants(os.getpid()) & (descendants(child.pid) | {child.pid})
            time.sleep(0.05)
        assert child.pid in found
        assert len(found) == 2
        assert descendants(child.pid) < found
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_descendants_of_a_gone_process_are_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    assert descendants(child.pid) == set()


def test_an_exported_prefect_home_is_kept(tmp_path: Path, monkeypatch) -> None:
    from siyu.deployments.up import _prepare_environment

    chosen = tmp_path / "my-prefect-home"
    monkeypatch.setenv("PREFECT_HOME", str(chosen))
    monkeypatch.setenv("SIYU_HOME", str(tmp_path / "home"))
    for key in (
        "PREFECT_API_URL",
        "PREFECT_UI_URL",
        "SIYU_ENVIRONMENT",
        "SIYU_WECOM_BASE_URL",
        "SIYU_PAY_BASE_URL",
    ):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    previous_umask = os.umask(0o022)
    try:
        home = _prepare_environment("http://127.0.0.1:1", "http://127.0.0.1:2")
    finally:
        os.umask(previous_umask)

    assert os.environ["PREFECT_HOME"] == str(chosen)
    assert chosen.is_dir()
    assert os.environ["SIYU_ENVIRONMENT"] == "embedded"
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "landing").stat().st_mode & 0o777 == 0o700


def test_runs_left_unfinished_are_marked_crashed_with_the_reason(prefect_server) -> None:
    from prefect import get_client
    from prefect.states import Completed, Running

    from siyu.deployments.up import crash_unfinished_runs

    for runner_deployment in serve.deployments():
        runner_deployment.apply()
    with get_client(sync_client=True) as client:
        hourly = client.read_deployment_by_name(serve.CONTACTS_SYNC_HOURLY)
        orphan = client.create_flow_run_from_deployment(hourly.id)
        client.set_flow_run_state(orphan.id, Running(), force=True)
        finished = client.create_flow_run_from_deployment(hourly.id)
        client.set_flow_run_state(finished.id, Completed(), force=True)
        scheduled = client.create_flow_run_from_deployment(hourly.id)

        crash_unfinished_runs("siyu was stopped while this run was in progress")

        orphan_state = client.read_flow_run(orphan.id).state
        assert orphan_state.is_crashed()
        assert orphan_state.message == "siyu was stopped while this run was in progress"
        assert client.read_flow_run(finished.id).state.is_completed()
        assert client.read_flow_run(scheduled.id).state.is_scheduled()


# Ops in a browser: the tag-sync Run form filled, submitted, watched to Completed, artifact read.
# Playwright for Python drives Debian's Chromium (`executable_path`; no browser download) against
# a real `siyu up`: what ops do with a mouse, nothing reached through the API on their behalf
# except waiting for the run to end. In this file, so that no two `siyu up`s run at once when
# the suite's files are spread over workers.

RUN_NAME = "browser dry run"


def _artifacts(api: str, flow_run_id: str) -> list[dict]:
    response = requests.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


# The UI's toast when its API calls fail (it polls the server's health).
API_TROUBLE = "Oops. Something went wrong."


def _api_healthy(api: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{api}/health", timeout=5).status_code == 200
    return False


def _run_named(api: str, deployment_id: str, name: str) -> str | None:
    """The id of the deployment's flow run whose name starts with `name`, if there is one."""
    response = requests.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 50},
        timeout=10,
    )
    response.raise_for_status()
    named = [r["id"] for r in response.json() if r["name"].startswith(name)]
    assert len(named) <= 1, f"one submit made {len(named)} runs"
    return named[0] if named else None


@pytest.fixture
def up(tmp_path: Path) -> Iterator[RunningUp]:
    """A `siyu up` of its own (500 sample customers), killed whatever the test's outcome."""
    running = RunningUp(tmp_path / "siyu-home", tmp_path / "up.log", free_port(), free_port())
    yield running
    running.kill_everything()


@pytest.mark.browser
def test_ops_run_a_dry_tag_sync_from_the_run_form_and_read_its_artifact(
    tmp_path: Path, up: RunningUp, capsys
) -> None:
    from playwright.sync_api import expect, sync_playwright

    prefect_port = up.prefect_port
    ui = f"http://127.0.0.1:{prefect_port}"

    def tag_sync_deployment() -> dict | None:
        try:
            found = requests.get(f"{up.api}/deployments/name/tag-sync/daily", timeout=5)
        except requests.RequestException:
            return None
        return found.json() if found.status_code == 200 else None

    deployment = up.wait_for(tag_sync_deployment, 180, "the tag-sync deployment served")
    browser_path = ensure_chromium()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(browser_path),
            headless=True,
            args=[flag for flag in CHROMIUM_FLAGS if flag != "--headless"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            # The way ops go: Deployments -> the deployment -> Run -> Custom run; the form's
            # address is the deployment's /run page.
            page.goto(f"{ui}/deployments", wait_until="networkidle")
            page.get_by_text("tag-sync").first.wait_for(timeout=60_000)
            page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run")
            page.get_by_text("dry_run (Optional)").wait_for(timeout=60_000)
            # Every parameter of the flow is a plain field with its description.
            for field in ("export_file", "dry_run", "business_date", "row_failure_threshold"):
                assert page.get_by_text(f"{field} (Optional)").is_visible()
            assert page.get_by_text("send and store nothing").is_visible()

            run_name = page.locator("input[type=text]").first
            run_name.fill(RUN_NAME)
            expect(run_name).to_have_value(RUN_NAME)
            # The dry_run field's switch (the only switch among the parameters).
            dry_run = page.locator(".schema-form-property", has_text="dry_run").locator(
                "[role=switch]"
            )
            expect(dry_run).to_have_attribute("aria-checked", "false")
            dry_run.click()
            expect(dry_run).to_have_attribute("aria-checked", "true")
            up.wait_for(lambda: _api_healthy(up.api), 60, "the API to answer")
            page.get_by_role("button", name="Submit").click()

            # Submitting creates the run (the UI says "... scheduled to start now").
            def submitted() -> str | None:
                return _run_named(up.api, deployment["id"], RUN_NAME)

            deadline = time.monotonic() + 60
            while not submitted() and time.monotonic() < deadline:
                page.wait_for_timeout(1000)
            if not submitted() and page.get_by_text(API_TROUBLE).is_visible():
                # The UI could not reach the API (a loaded machine): as ops would, submit again.
                page.screenshot(path=str(tmp_path / "submit-1.png"), full_page=True)
                up.wait_for(lambda: _api_healthy(up.api), 60, "the API to answer")
                page.get_by_role("button", name="Submit").click()
                deadline = time.monotonic() + 60
                while not submitted() and time.monotonic() < deadline:
                    page.wait_for_timeout(1000)
            if not submitted():
                shot = tmp_path / "submit.png"
                page.screenshot(path=str(shot), full_page=True)
                pytest.fail(f"the Run form made no run within 60 s; the page: {shot}")
            flow_run_id = submitted()
            # (the toast's "View run" link goes there; the toast slides, so open it directly)
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
            page.get_by_text(RUN_NAME).first.wait_for(timeout=60_000)
            run = requests.get(f"{up.api}/flow_runs/{flow_run_id}", timeout=5).json()
            assert run["parameters"]["dry_run"] is True
            assert run["deployment_id"] == deployment["id"]

            final = up.wait_for(
                lambda: flow_run_state(up.api, flow_run_id), 300, "the dry tag-sync to end"
            )
            assert final["type"] == "COMPLETED", final.get("message")

            artifacts = _artifacts(up.api, flow_run_id)
            reports = [a for a in artifacts if a["type"] == "markdown"]
            assert reports, f"the run made no markdown artifact: {artifacts}"
            report = "\n".join(a["data"] for a in reports)
            assert "dry run" in report.lower()

            # And ops read it where they are: the artifact's page in the UI.
            report_artifact = next(a for a in reports if "dry run" in a["data"].lower())
            page.goto(f"{ui}/artifacts/artifact/{report_artifact['id']}")
            page.get_by_text(re.compile("dry run", re.IGNORECASE)).first.wait_for(timeout=60_000)
            shot = Path(tempfile.mkdtemp(prefix="siyu-browser-check-")) / "run-artifacts.png"
            page.screenshot(path=str(shot), full_page=True)
            with capsys.disabled():
                print(f"\nscreenshot of the dry run's artifacts in the Prefect UI: {shot}")
        finally:
            browser.close()
    up.interrupt_and_check_all_gone()
