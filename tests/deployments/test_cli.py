"""The `siyu` command line: help on every command, sample data, migrations, flow exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy

from siyu.deployments import cli

SIYU = Path(sys.executable).with_name("siyu")
COMMANDS = [
    [],
    ["up"],
    ["sandbox"],
    ["sample"],
    ["db"],
    ["db", "upgrade"],
    ["contacts-sync"],
    ["tag-sync"],
    ["deploy"],
    ["sends", "track"],
]


def run_siyu(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIYU), *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "siyu")
def test_help_works_for_every_command(command: list[str]) -> None:
    result = run_siyu(*command, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: siyu {' '.join(command)}".rstrip())
    assert result.stderr == ""


def test_top_level_help_lists_every_command() -> None:
    result = run_siyu("--help")

    for command in ("up", "sandbox", "sample", "db", "contacts-sync", "tag-sync"):
        assert command in result.stdout


def test_up_help_shows_its_options_and_defaults() -> None:
    result = run_siyu("up", "--help")

    for option in ("--prefect-port", "--sandbox-port", "--customers", "--no-browser-hint"):
        assert option in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_siyu()

    assert result.returncode == 2
    assert "usage: siyu" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["tag-sync", "--date", "2026-11-24"],
        ["tag-sync", "--date", "20261332"],
        ["tag-sync", "--row-failure-threshold", "1.5"],
        [
            "sample",
            "--customers",
            "0",
            "--groups",
            "1",
            "--managers",
            "1",
            "--seed",
            "1",
            "--out",
            "x",
        ],
        ["up", "--prefect-port", "70000"],
        ["deploy", "--landing-dir", "landing"],
        ["deploy", "--reports-dir", "./reports"],
        ["deploy", "--schedules", "maybe"],
        ["deploy", "--wecom-agent-id", "one"],
    ],
    ids=[
        "date-dashes",
        "date-not-a-day",
        "threshold-above-1",
        "no-customers",
        "bad-port",
        "relative-landing",
        "relative-reports",
        "schedules-neither-on-nor-off",
        "agent-id-not-a-number",
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(args: list[str], tmp_path: Path) -> None:
    result = run_siyu(*args, cwd=tmp_path)

    assert result.returncode == 2
    assert "error:" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sample_writes_an_export_and_a_seed(tmp_path: Path) -> None:
    out = tmp_path / "sample"

    result = run_siyu(
        "sample",
        "--customers",
        "300",
        "--groups",
        "2",
        "--managers",
        "3",
        "--seed",
        "5",
        "--out",
        str(out),
        "--date",
        "20261124",
    )

    assert result.returncode == 0, result.stderr
    export = out / "core_export_20261124.csv"
    assert export.is_file()
    frame = pd.read_csv(export, encoding="gbk", dtype=str)
    assert len(frame) == 300
    assert "客户号" in frame.columns
    seed = out / "sandbox_seed"
    for name in ("employees", "follows", "tag_groups", "groups", "group_members"):
        assert (seed / f"{name}.parquet").is_file()
    assert str(export) in result.stdout
    assert str(seed) in result.stdout
    assert "customers: 300" in result.stdout


def test_sample_writes_parquet_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "sample"

    result = run_siyu(
        "sample",
        "--customers",
        "50",
        "--groups",
        "1",
        "--managers",
        "2",
        "--seed",
        "1",
        "--out",
        str(out),
        "--format",
        "parquet",
        "--date",
        "20261124",
    )

    assert result.returncode == 0, result.stderr
    assert len(pd.read_parquet(out / "core_export_20261124.parquet")) == 50


def test_sample_output_carries_no_personal_data(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    result = run_siyu(
        "sample",
        "--customers",
        "100",
        "--groups",
        "1",
        "--managers",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        "--date",
        "20261124",
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out / "core_export_20261124.csv", encoding="gbk", dtype=str)

    printed = result.stdout + result.stderr
    assert not any(mobile in printed for mobile in frame["手机号"])
    assert not any(name in printed for name in frame["姓名"])


def test_db_upgrade_creates_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'siyu.db'}"

    first = run_siyu("db", "upgrade", "--url", url)
    again = run_siyu("db", "upgrade", "--url", url)

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"exports", "quarantined_rows", "contacts", "outbox", "alembic_version"} <= tables


def test_db_upgrade_defaults_to_the_database_in_siyu_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env_run = subprocess.run(
        [str(SIYU), "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SIYU_HOME": str(home)},
    )

    assert env_run.returncode == 0, env_run.stderr
    assert (home / "siyu.db").is_file()


def test_db_upgrade_never_prints_a_password() -> None:
    assert cli._without_password("postgresql+psycopg2://ops:s3cret@db:5432/siyu") == (
        "postgresql+psycopg2://ops:***@db:5432/siyu"
    )
    assert cli._without_password("sqlite:///x.db") == "sqlite:///x.db"


@pytest.fixture(autouse=True)
def umask_restored():
    """cli.main() makes the process umask 077 (as in a terminal); the test session keeps its own."""
    previous = os.umask(0o077)
    os.umask(previous)
    yield
    os.umask(previous)


def test_contacts_sync_help_speaks_of_contacts_not_exports() -> None:
    result = run_siyu("contacts-sync", "--help")

    assert "blocked export" not in result.stdout
    assert "PREFECT_API_URL" in result.stdout


def test_tag_sync_help_names_the_threshold_and_the_server() -> None:
    result = run_siyu("tag-sync", "--help")

    assert "--row-failure-threshold" in result.stdout
    assert "PREFECT_API_URL" in result.stdout


class _FakeFlow:
    """Stands in for a flow: returns a given final state, like flow(return_state=True)."""

    def __init__(self, state) -> None:
        self.state = state
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.state


def test_contacts_sync_exits_0_and_prints_the_message_when_completed(monkeypatch, capsys) -> None:
    from prefect.states import Completed

    import siyu.flows.contacts_sync as module

    fake = _FakeFlow(Completed(message="bound 1,204 of 1,250 contacts"))
    monkeypatch.setattr(module, "contacts_sync", fake)

    code = cli.main(["contacts-sync"])

    assert code == 0
    assert capsys.readouterr().out.strip() == "bound 1,204 of 1,250 contacts"
    assert fake.calls == [{"as_of": None, "return_state": True}]

    # --at: the time to sync for (new contacts enrol as of then), read in Beijing time
    assert cli.main(["contacts-sync", "--at", "2026-12-01T10:40"]) == 0
    assert fake.calls[-1]["as_of"].isoformat() == "2026-12-01T10:40:00+08:00"


def test_tag_sync_exits_2_with_the_message_on_stderr_when_failed(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    from prefect.states import Failed

    import siyu.flows.tag_sync as module

    fake = _FakeFlow(Failed(message="export 2026-11-24 failed 1 of 14 checks - fix and rerun"))
    monkeypatch.setattr(module, "tag_sync", fake)
    export = tmp_path / "core_export_20261124.csv"

    code = cli.main(
        [
            "tag-sync",
            str(export),
            "--dry-run",
            "--date",
            "20261124",
            "--row-failure-threshold",
            "0.05",
        ]
    )

    captured = capsys.readouterr()
    assert code == 2
    assert "failed 1 of 14 checks" in captured.err
    assert captured.out == ""
    (call,) = fake.calls
    assert call["return_state"] is True
    assert call["export_file"] == str(export.resolve())
    assert call["dry_run"] is True
    assert call["business_date"] == "20261124"
    assert call["row_failure_threshold"] == 0.05


def test_tag_sync_defaults_leave_the_choices_to_the_flow(monkeypatch) -> None:
    from prefect.states import Completed

    import siyu.flows.tag_sync as module

    fake = _FakeFlow(Completed(message="ok"))
    monkeypatch.setattr(module, "tag_sync", fake)

    assert cli.main(["tag-sync"]) == 0
    (call,) = fake.calls
    assert not call["export_file"]
    assert call["dry_run"] is False
    # Left out, so the flow's own defaults apply.
    assert "business_date" not in call
    assert "row_failure_threshold" not in call


def test_flow_commands_exit_1_on_other_final_states(monkeypatch, capsys) -> None:
    from prefect.states import Crashed

    import siyu.flows.contacts_sync as module

    monkeypatch.setattr(module, "contacts_sync", _FakeFlow(Crashed(message="worker died")))

    assert cli.main(["contacts-sync"]) == 1
    assert "worker died" in capsys.readouterr().err


def test_flow_commands_exit_1_on_errors(monkeypatch, capsys) -> None:
    import siyu.flows.contacts_sync as module

    def broken(**kwargs):
        raise ConnectionError("Prefect API at http://127.0.0.1:1/api is unreachable")

    monkeypatch.setattr(module, "contacts_sync", broken)

    assert cli.main(["contacts-sync"]) == 1
    err = capsys.readouterr().err
    assert "ConnectionError" in err
    assert "Traceback" not in err


def test_flow_commands_keep_what_they_write_private(monkeypatch, tmp_path: Path) -> None:
    from prefect.states import Completed

    import siyu.flows.contacts_sync as module

    def writes_a_file(**kwargs):
        (tmp_path / "quarantine.csv").write_text("C****0042,reason\n")
        return Completed(message="ok")

    monkeypatch.setattr(module, "contacts_sync", writes_a_file)
    os.umask(0o022)

    assert cli.main(["contacts-sync"]) == 0
    assert (tmp_path / "quarantine.csv").stat().st_mode & 0o777 == 0o600


def test_deploy_help_shows_every_flag_its_setup_announces() -> None:
    import re

    from siyu.deployments import setup

    announced = set(re.findall(r"^\s+(--[a-z-]+)", setup.__doc__ or "", flags=re.MULTILINE))
    result = run_siyu("deploy", "--help")

    assert {"--landing-dir", "--schedules", "--database-url", "--robot-key"} <= announced
    for flag in announced:
        assert flag in result.stdout, flag
    assert "PREFECT_API_URL" in result.stdout


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Prefect or siyu settings at all, and a Prefect home with no profile in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIYU_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), **extra)
    return env


def test_deploy_without_prefect_api_url_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SIYU), "deploy"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_bare_env(tmp_path),
        check=False,
    )

    assert result.returncode == 1
    assert "PREFECT_API_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".siyu").exists()


def test_deploy_to_a_server_that_does_not_answer_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SIYU), "deploy"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_bare_env(tmp_path, PREFECT_API_URL="http://127.0.0.1:1/api"),
        check=False,
    )

    assert result.returncode == 1
    assert "does not answer" in result.stderr and "http://127.0.0.1:1/api" in result.stderr
    assert "Traceback" not in result.stderr


def test_sends_track_takes_the_tracker_settings_as_flags(monkeypatch) -> None:
    from datetime import timedelta

    from prefect.states import Completed

    import siyu.flows.sends_track as module

    fake = _FakeFlow(Completed(message="ok"))
    monkeypatch.setattr(module, "sends_track", fake)

    assert cli.main(["sends", "track"]) == 0
    assert cli.main(["sends", "track", "--remind-after", "3h", "--send-window", "1d12h"]) == 0

    plain, tuned = fake.calls
    assert plain["settings"] is None  # the flow's defaults
    assert tuned["settings"].remind_after == timedelta(hours=3)
    assert tuned["settings"].send_window == timedelta(days=1, hours=12)
    assert tuned["settings"].remind_every == type(tuned["settings"])().remind_every


def test_every_tracker_setting_has_a_flag() -> None:
    from siyu.tasks.tracking import TrackSettings

    assert set(cli.TRACK_SETTING_FLAGS) == set(TrackSettings.model_fields)
    help_text = run_siyu("sends", "track", "--help").stdout
    for name in TrackSettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


@pytest.mark.parametrize("value", ["2 hours", "h", "", "-1h"])
def test_a_duration_that_is_not_one_is_refused(value: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        cli._duration(value)


def test_cadence_and_rewards_take_their_flow_parameters_as_flags(monkeypatch) -> None:
    from prefect.states import Completed

    import siyu.flows.group_cadence as module

    calls: dict[str, _FakeFlow] = {}
    for name in ("group_cadence", "cadence_due", "rewards_settle"):
        calls[name] = _FakeFlow(Completed(message="ok"))
        monkeypatch.setattr(module, name, calls[name])

    assert cli.main(["cadence", "slot", "tue-game", "--no-schedule-winners"]) == 0
    assert cli.main(["cadence", "due", "--in-flight-seconds", "120"]) == 0
    assert cli.main(["rewards", "settle"]) == 0
    assert cli.main(["rewards", "settle", "--in-flight-seconds", "5"]) == 0

    assert calls["group_cadence"].calls[0]["schedule_winners"] is False
    assert calls["cadence_due"].calls[0]["in_flight_seconds"] == 120.0
    plain, tuned = calls["rewards_settle"].calls
    assert "in_flight_seconds" not in plain  # the flow's default
    assert tuned["in_flight_seconds"] == 5.0
