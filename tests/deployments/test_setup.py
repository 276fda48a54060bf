"""One setup for both servers: `siyu deploy` against a Prefect server of its own, and `siyu up`'s."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr, ValidationError

from siyu.blocks.environment import BLOCK_TYPES, PLAYBOOK_TYPES, SIYU_BLOCK_TYPES
from siyu.deployments.setup import ServerConfig, SetupRefused, prepare_server
from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET

SIYU = Path(sys.executable).with_name("siyu")
ROBOT_KEY = "deploy-test-robot-key"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without siyu's or Prefect's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIYU_", "PREFECT_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", **extra)
    return env


@pytest.fixture(scope="module")
def production_server(tmp_path_factory) -> Iterator[str]:
    """A Prefect server of this module's own (as production's: its own process and database).

    The session's test server is shared by tests that expect no `siyu` blocks on it.
    """
    home = tmp_path_factory.mktemp("production-prefect")
    port = _free_port()
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_clean_env(
            PREFECT_HOME=str(home / "prefect"), PREFECT_UI_URL=f"http://127.0.0.1:{port}"
        ),
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the Prefect server did not start in 120 s"
            time.sleep(0.5)
        yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextlib.contextmanager
def against(api: str) -> Iterator[None]:
    """This process's Prefect client pointed at `api`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield


def siyu_deploy(api: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script
        [str(SIYU), "deploy", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=_clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(cwd / ".prefect-client"), **env),
        check=False,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The directories every worker reads, as a shared mount would hold them."""
    root = tmp_path_factory.mktemp("shared")
    for name in ("landing", "reports", "entries"):
        (root / name).mkdir()
    return root


@pytest.fixture(scope="module")
def first_deploy(production_server: str, shared: Path, tmp_path_factory, sandbox_server):
    """`siyu deploy` on the fresh server, with every value given and no salt; WeCom the sandbox."""
    cwd = tmp_path_factory.mktemp("deploy-cwd")
    result = siyu_deploy(
        production_server,
        "--database-url",
        f"sqlite:///{shared / 'siyu.db'}",
        "--landing-dir",
        str(shared / "landing"),
        "--reports-dir",
        str(shared / "reports"),
        "--entries-dir",
        str(shared / "entries"),
        "--wecom-base-url",
        sandbox_server.api_base,
        "--wecom-corp-id",
        SANDBOX_CORP_ID,
        "--wecom-agent-id",
        "1000002",
        "--pay-mch-id",
        "1900000109",
        cwd=cwd,
        SIYU_WECOM_SECRET=SANDBOX_SECRET,
        SIYU_ROBOT_KEY=ROBOT_KEY,
    )
    return result, cwd


def _schedules(deployment) -> list[bool]:
    return [s.active for s in deployment.schedules]


def test_deploy_sets_up_a_fresh_server_and_deploys_every_deployment_paused(
    production_server: str, first_deploy
) -> None:
    from prefect import get_client
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from siyu.blocks.environment import load_environment
    from siyu.blocks.export_source import ExportSource
    from siyu.blocks.wecom import declared_calls, limit_name
    from siyu.deployments import alerts
    from siyu.deployments.specs import DEPLOYMENTS, HEARTBEAT_SECONDS, HEARTBEAT_VARIABLE

    result, cwd = first_deploy
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    with against(production_server):
        # Every siyu block type is on the server, and every block a worker loads is saved.
        with get_client(sync_client=True) as client:
            slugs = {t.slug for t in client.read_block_types()}
            assert {t.get_block_type_slug() for t in SIYU_BLOCK_TYPES} <= slugs
        for block_type in SIYU_BLOCK_TYPES:
            assert block_type.load("siyu") is not None
        env = load_environment("siyu", kind="production")
        assert env.wecom.shared_pacing is True
        assert env.wecom.corp_id == SANDBOX_CORP_ID
        salt = ExportSource.load("siyu").mobile_salt.get_secret_value()
        assert len(salt) == 64  # generated once, here
        assert env.tag_rules is not None
        CustomWebhookNotificationBlock.load(alerts.ROBOT_BLOCK)
        from siyu.deployments.recovery import RECOVERY

        for name in (alerts.AUTOMATION, alerts.CRASH_DETECTION, RECOVERY):
            assert Automation.read(name=name).name == name

        with get_client(sync_client=True) as client:
            limits = {limit.name for limit in client.read_global_concurrency_limits(limit=200)}
            assert {limit_name(api) for api in declared_calls()} <= limits
            pool = client.read_work_pool("siyu")
            assert pool.type == "process"
            for spec in DEPLOYMENTS:
                deployment = client.read_deployment_by_name(spec.full_name)
                assert deployment.work_pool_name == "siyu"
                assert deployment.entrypoint == spec.entrypoint
                assert deployment.job_variables["env"][HEARTBEAT_VARIABLE] == str(HEARTBEAT_SECONDS)
                assert len(deployment.schedules) == len(spec.schedules)
                assert not any(_schedules(deployment)), spec.full_name  # paused until asked
                assert not deployment.paused
                assert f"deployment {spec.full_name}: created" in out
    # Secrets never reach the console; nothing of siyu's lands in the working directory.
    for secret in (SANDBOX_SECRET, ROBOT_KEY, salt):
        assert secret not in out + result.stderr
    assert not (cwd / ".siyu").exists()
    assert "prefect worker start --pool siyu" in out
    assert "payout rate limit" in out  # the Payout Account paces across workers too


def test_a_second_deploy_keeps_what_ops_edited(
    production_server: str, first_deploy, tmp_path: Path
) -> None:
    from prefect import get_client

    from siyu.blocks.conversion_paths import ConversionPaths
    from siyu.blocks.database import SiyuDatabase
    from siyu.blocks.export_source import ExportSource

    assert first_deploy[0].returncode == 0, first_deploy[0].stderr
    with against(production_server):
        source = ExportSource.load("siyu")
        salt = source.mobile_salt.get_secret_value()
        source.row_failure_threshold = 0.05
        source.save("siyu", overwrite=True)
        paths = ConversionPaths.load("siyu")
        paths.products = paths.products[:1]
        paths.save("siyu", overwrite=True)
        url = SiyuDatabase.load("siyu").url.get_secret_value()
        with get_client(sync_client=True) as client:
            tag_sync = client.read_deployment_by_name("tag-sync/daily")
            (schedule,) = tag_sync.schedules
            client.update_deployment_schedule(tag_sync.id, schedule.id, active=True)
            hourly = client.read_deployment_by_name("contacts-sync/hourly")
            client.pause_deployment(hourly.id)

    again = siyu_deploy(
        production_server,
        "--database-url",
        "sqlite:////elsewhere/siyu.db",
        cwd=tmp_path,
        SIYU_MOBILE_SALT="another-salt",
    )

    assert again.returncode == 0, again.stdout + again.stderr
    assert "--database-url" in again.stdout and "--mobile-salt" in again.stdout
    assert "differ" in again.stdout
    assert "another-salt" not in again.stdout + again.stderr
    with against(production_server):
        assert SiyuDatabase.load("siyu").url.get_secret_value() == url
        kept = ExportSource.load("siyu")
        assert kept.mobile_salt.get_secret_value() == salt
        assert kept.row_failure_threshold == 0.05
        assert len(ConversionPaths.load("siyu").products) == 1
        with get_client(sync_client=True) as client:
            assert _schedules(client.read_deployment_by_name("tag-sync/daily")) == [True]
            hourly = client.read_deployment_by_name("contacts-sync/hourly")
            assert hourly.paused
            assert not any(
                _schedules(client.read_deployment_by_name("sends-track/every-15-minutes"))
            )

    # Asked for, every schedule goes on (a paused deployment stays paused); and off again.
    on = siyu_deploy(production_server, "--schedules", "on", cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    with against(production_server), get_client(sync_client=True) as client:
        cadence = client.read_deployment_by_name("group-cadence/weekly")
        assert len(cadence.schedules) > 1 and all(_schedules(cadence))
        assert client.read_deployment_by_name("contacts-sync/hourly").paused
    off = siyu_deploy(production_server, "--schedules", "off", cwd=tmp_path)
    assert off.returncode == 0, off.stderr
    with against(production_server), get_client(sync_client=True) as client:
        assert not any(_schedules(client.read_deployment_by_name("group-cadence/weekly")))
        assert not any(_schedules(client.read_deployment_by_name("tag-sync/daily")))


def test_a_missing_value_is_refused_naming_its_flag_and_nothing_is_saved(
    production_server: str, shared: Path
) -> None:
    from siyu.blocks.environment import load_saved

    name = f"fresh-{secrets.token_hex(4)}"
    config = ServerConfig(
        environment="production",
        block_name=name,
        database_url=SecretStr(f"sqlite:///{shared / 'never.db'}"),
        landing_dir=str(shared / "landing"),
        reports_dir=str(shared / "reports"),
        wecom_secret=SecretStr("s"),
        wecom_agent_id=1,
    )
    with against(production_server):
        with pytest.raises(SetupRefused, match="--wecom-corp-id"):
            prepare_server(config)
        for block_type in BLOCK_TYPES.values():
            assert load_saved(block_type, name) is None
    assert not (shared / "never.db").exists()


def test_relative_directories_are_refused() -> None:
    for field in ("landing_dir", "reports_dir", "entries_dir"):
        with pytest.raises(ValidationError, match="relative"):
            ServerConfig(environment="production", **{field: "landing"})
    from siyu.blocks.export_source import ExportSource

    with pytest.raises(ValidationError, match="relative"):
        ExportSource(landing_dir="landing", reports_dir="/r", mobile_salt=SecretStr("x"))


def test_the_embedded_setup_saves_every_block_including_the_playbooks(
    production_server: str, siyu_home: Path, monkeypatch
) -> None:
    from siyu.blocks.environment import load_saved
    from siyu.schemas.settings import Settings

    monkeypatch.setenv("SIYU_MOBILE_SALT", "embedded-setup-salt")
    name = f"embedded-{secrets.token_hex(4)}"
    config = ServerConfig.embedded(
        Settings.from_env(),
        wecom_base_url="http://127.0.0.1:9/cgi-bin/",
        robot_url="http://127.0.0.1:9/cgi-bin/webhook/send?key={{key}}",
        robot_key="siyu-ops",
    ).model_copy(update={"block_name": name})

    with against(production_server):
        first = prepare_server(config)
        again = prepare_server(config)
        for block_type in SIYU_BLOCK_TYPES:
            assert load_saved(block_type, name) is not None, block_type.__name__

    assert not first.problems and not again.problems
    for block_type in PLAYBOOK_TYPES:
        label = f"block {block_type.get_block_type_slug()}/{name}"
        assert f"{label}: saved with its defaults" in first.render()
        assert f"{label}: kept as saved" in again.render()
    assert "saved" in first.render() and "embedded-setup-salt" not in first.render()
    assert (siyu_home / "siyu.db").is_file()  # migrated


def test_a_worker_needs_only_prefect_api_url_and_leaves_nothing_where_it_runs(
    production_server: str, first_deploy, sandbox, seed_dir: Path, tmp_path: Path
) -> None:
    """A process worker started with PREFECT_API_URL alone runs a deployment to its end."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    assert first_deploy[0].returncode == 0, first_deploy[0].stderr
    sandbox.seed(seed_dir)
    machine = tmp_path / "worker-machine"
    machine.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(machine / "home"),
        "PREFECT_API_URL": production_server,
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(  # noqa: S603 - the venv's prefect, fixed arguments
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "siyu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=machine,
        env=env,
        start_new_session=True,
    )
    try:
        with against(production_server):
            run = run_deployment("contacts-sync/hourly", timeout=0)
            deadline = time.monotonic() + 180
            with get_client(sync_client=True) as client:
                while not (state := client.read_flow_run(run.id).state).is_final():
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the worker did not finish the run"
                    time.sleep(1)
        assert state.is_completed(), (state.message, (tmp_path / "worker.log").read_text()[-3000:])
        assert "contact pairs" in state.message
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
    # The run kept its state in the database and the shared directories, none where it ran.
    assert {p.name for p in machine.iterdir()} <= {"home"}  # at most Prefect's own ~/.prefect
    assert not list(machine.rglob(".siyu"))
