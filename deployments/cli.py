"""The `siyu` command line: start everything, the sandbox, sample data, migrations, the syncs."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

# Heavy modules (prefect, pandas, GX, the sandbox) are imported inside the commands so that
# `siyu --help` answers at once.

EXPORT_FORMATS = ("csv-gbk", "csv-utf8", "csv-utf8-bom", "parquet")
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FLOW_FAILED = 2


def _business_date(value: str) -> str:
    """An argparse type: a real calendar date written YYYYMMDD."""
    if not re.fullmatch(r"\d{8}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a date written YYYYMMDD")
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a calendar date") from exc
    return value


def _share(value: str) -> float:
    """An argparse type: a share between 0 and 1."""
    try:
        share = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from exc
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return share


def _port(value: str) -> int:
    """An argparse type: a TCP port."""
    try:
        port = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from exc
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _iso_date(value: str) -> date:
    """An argparse type: a calendar date written YYYY-MM-DD."""
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date written YYYY-MM-DD") from exc


def _positive(value: str) -> int:
    """An argparse type: a count of at least 1."""
    try:
        count = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} must be at least 1")
    return count


def _absolute_dir(value: str) -> str:
    """An argparse type: an absolute directory (a worker's working directory is a fresh temp)."""
    if not Path(value).is_absolute():
        raise argparse.ArgumentTypeError(
            f"{value!r} is relative: give the absolute path of a directory every worker reads "
            "(a shared mount), e.g. /srv/siyu/landing"
        )
    return value


def _branches(value: str) -> tuple[str, ...]:
    """An argparse type: comma-separated branch codes."""
    codes = tuple(code.strip() for code in value.split(",") if code.strip())
    if not codes:
        raise argparse.ArgumentTypeError(f"{value!r} names no branch code")
    return codes


def cmd_up(args: argparse.Namespace) -> int:
    """Start the sandbox, the Prefect server and every deployment; stop them all on Ctrl-C."""
    from siyu.deployments.up import UpOptions, run_up

    return run_up(
        UpOptions(
            prefect_port=args.prefect_port,
            sandbox_port=args.sandbox_port,
            customers=args.customers,
            browser_hint=not args.no_browser_hint,
        )
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    """Set up the production Prefect server (PREFECT_API_URL) and deploy every deployment."""
    from pydantic import SecretStr

    def given(flag_value: str | None, variable: str) -> str | None:
        return flag_value or os.environ.get(variable) or None

    def secret(flag_value: str | None, variable: str) -> SecretStr | None:
        value = given(flag_value, variable)
        return SecretStr(value) if value else None

    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        print(
            "siyu deploy: PREFECT_API_URL is not set: export the production Prefect server's "
            "API, e.g. PREFECT_API_URL=http://prefect.bank:4200/api (without it Prefect would "
            "deploy to a temporary server of its own)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        unhealthy = client.api_healthcheck()
    if unhealthy is not None:
        print(
            f"siyu deploy: the Prefect server at {api_url} does not answer ({unhealthy}): start "
            "it, or fix PREFECT_API_URL",
            file=sys.stderr,
        )
        return EXIT_ERROR

    from siyu.deployments.setup import ServerConfig, SetupRefused, deploy_all, prepare_server
    from siyu.deployments.specs import WORK_POOL

    config = ServerConfig(
        environment="production",
        database_url=secret(args.database_url, "SIYU_DATABASE_URL"),
        landing_dir=args.landing_dir,
        reports_dir=args.reports_dir,
        entries_dir=args.entries_dir,
        branches=args.branches,
        wecom_base_url=args.wecom_base_url,
        wecom_corp_id=args.wecom_corp_id,
        wecom_secret=secret(args.wecom_secret, "SIYU_WECOM_SECRET"),
        wecom_agent_id=args.wecom_agent_id,
        mobile_salt=secret(args.mobile_salt, "SIYU_MOBILE_SALT"),
        robot_url=args.robot_url,
        robot_key=secret(args.robot_key, "SIYU_ROBOT_KEY"),
        pay_base_url=args.pay_base_url,
        pay_mch_id=args.pay_mch_id,
        pay_api_key=secret(args.pay_api_key, "SIYU_PAY_API_KEY"),
        pay_secret=secret(args.pay_secret, "SIYU_PAY_SECRET"),
        work_pool=WORK_POOL,
    )
    print(f"Prefect server: {api_url}", flush=True)
    try:
        report = prepare_server(config)
    except SetupRefused as refused:
        print(f"siyu deploy: {refused}; nothing was saved", file=sys.stderr)
        return EXIT_ERROR
    print(report.render(), flush=True)
    for line in deploy_all(WORK_POOL, schedules=args.schedules):
        print(line, flush=True)
    print(
        f"\nOn each worker machine (siyu installed): PREFECT_API_URL={api_url} "
        f"prefect worker start --pool {WORK_POOL}",
        flush=True,
    )
    if args.schedules is None:
        print(
            "New schedules start paused: switch them on in the UI, or run "
            "`siyu deploy --schedules on`.",
            flush=True,
        )
    return EXIT_ERROR if report.problems else EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the WeCom sandbox server in the foreground."""
    from siyu.sandbox.server import serve

    serve(args.host, args.port, args.state, args.seed)
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate a sample export and the matching sandbox seed."""
    from siyu.sandbox.sample import SampleSpec, generate

    export_date = datetime.strptime(args.date, "%Y%m%d").date() if args.date else None
    spec = SampleSpec(
        customers=args.customers,
        groups=args.groups,
        managers=args.managers,
        seed=args.seed,
        export_date=export_date,
        fmt=args.format,
    )
    result = generate(spec, args.out)
    print(f"export:   {result.export_path}")
    print(f"seed dir: {result.seed_dir}")
    print(
        f"customers: {result.customers:,}  follows: {result.follows:,}  "
        f"groups: {result.groups:,}  members: {result.members:,}"
    )
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate siyu's database to the newest schema."""
    from siyu.schemas.database import upgrade

    if args.url:
        url = args.url
    else:
        from siyu.schemas.settings import Settings

        url = Settings.from_env().database_url
    upgrade(url)
    print(f"database is at the newest schema: {_without_password(url)}")
    return EXIT_OK


def _without_password(url: str) -> str:
    """The URL as people may read it: a password in it is replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _prepare_flow_run() -> None:
    """What a flow run from the command line needs of its Prefect server, as a served run has.

    The heartbeat pace is the one the dead-run automation expects.
    """
    from siyu.deployments.specs import HEARTBEAT_SECONDS, HEARTBEAT_VARIABLE

    os.environ.setdefault(HEARTBEAT_VARIABLE, str(HEARTBEAT_SECONDS))


def cmd_contacts_sync(args: argparse.Namespace) -> int:
    """Run the contacts sync once, here and now."""
    _prepare_flow_run()
    from siyu.flows.contacts_sync import contacts_sync

    return _report_state(contacts_sync(as_of=args.at, return_state=True))


def cmd_tag_sync(args: argparse.Namespace) -> int:
    """Run the tag sync once, here and now."""
    _prepare_flow_run()
    from siyu.flows.tag_sync import tag_sync

    params: dict[str, Any] = {
        # Absolute, so the run means the same file whatever directory the flow reads from.
        "export_file": str(Path(args.export).resolve()) if args.export else "",
        "dry_run": args.dry_run,
    }
    if args.date:
        params["business_date"] = args.date  # YYYYMMDD: the flow reads it as a date
    if args.row_failure_threshold is not None:
        params["row_failure_threshold"] = args.row_failure_threshold
    return _report_state(tag_sync(**params, return_state=True))


def _as_of(value: str) -> datetime:
    """An argparse type: an ISO time; without an offset it is read in Asia/Shanghai."""
    from zoneinfo import ZoneInfo

    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time, e.g. 2026-12-01T10:00 or 2026-12-01T10:00+08:00"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("Asia/Shanghai"))


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# The sends tracker's settings (a nested model parameter of the flow), one flag each.
TRACK_SETTING_FLAGS = (
    "remind_after",
    "remind_every",
    "reminders_per_day",
    "send_window",
    "in_flight_seconds",
    "alert_after",
)


def _seconds(value: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        seconds = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from exc
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 seconds")
    return seconds


def _duration(value: str) -> timedelta:
    """An argparse type: a duration such as 90m, 2h, 1d12h or 45s."""
    match = _DURATION.fullmatch(value.strip())
    if not value.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 90m, 2h, 1d12h or 45s")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def cmd_sends_track(args: argparse.Namespace) -> int:
    """Run the sends tracker once, for now or for the time given."""
    _prepare_flow_run()
    from siyu.flows.sends_track import sends_track
    from siyu.tasks.tracking import TrackSettings

    given = _given(args, *TRACK_SETTING_FLAGS)
    settings = TrackSettings(**given) if given else None
    return _report_state(sends_track(as_of=args.at, settings=settings, return_state=True))


def cmd_path_enroll(args: argparse.Namespace) -> int:
    """Evaluate conversions and enrol today's (or --date's) cohorts once."""
    _prepare_flow_run()
    from zoneinfo import ZoneInfo

    from siyu.flows.conversion_path import path_enroll

    as_of = None
    if args.date:
        # The day's enrolment as the daily run does it: after the tag sync, before touch 1.
        day = datetime.strptime(args.date, "%Y%m%d")
        as_of = day.replace(hour=9, tzinfo=ZoneInfo("Asia/Shanghai"))
    return _report_state(
        path_enroll(
            as_of=as_of, dry_run=args.dry_run, new_contacts=args.new_contacts, return_state=True
        )
    )


def cmd_path_touch(args: argparse.Namespace) -> int:
    """Run one touch of one cohort by hand."""
    _prepare_flow_run()
    from siyu.flows.conversion_path import path_touch

    state = path_touch(
        cohort=args.cohort, touch=args.touch, as_of=args.at, force=args.force, return_state=True
    )
    return _report_state(state)


def cmd_path_due(args: argparse.Namespace) -> int:
    """Run every path touch that was due by --until and did not run, once."""
    _prepare_flow_run()
    from siyu.flows.conversion_path import path_due

    return _report_state(path_due(until=args.until, return_state=True))


def cmd_cadence_slot(args: argparse.Namespace) -> int:
    """Serve one cadence slot by hand, for all groups or the --chat ones."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import group_cadence

    state = group_cadence(
        slot=args.slot,
        as_of=args.at,
        chat_ids=args.chat or None,
        dry_run=args.dry_run,
        schedule_winners=not args.no_schedule_winners,
        return_state=True,
    )
    return _report_state(state)


def cmd_cadence_due(args: argparse.Namespace) -> int:
    """Run every slot, winners run and payout due by --until that did not run, once."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import cadence_due

    extra = _given(args, "in_flight_seconds")
    return _report_state(
        cadence_due(until=args.until, since=args.since, **extra, return_state=True)
    )


def cmd_activity_winners(args: argparse.Namespace) -> int:
    """Choose, grant and announce one activity's winners."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import activity_winners

    return _report_state(activity_winners(activity=args.activity, as_of=args.at, return_state=True))


def cmd_housekeeping(args: argparse.Namespace) -> int:
    """Remove what outlived its retention period once, for now or for --at."""
    _prepare_flow_run()
    from siyu.flows.housekeeping import housekeeping

    return _report_state(housekeeping(as_of=args.at, dry_run=args.dry_run, return_state=True))


def cmd_report_weekly(args: argparse.Namespace) -> int:
    """Make the weekly management report for the last full week, or the week of --week."""
    _prepare_flow_run()
    from siyu.flows.weekly_report import weekly_report

    return _report_state(
        weekly_report(week_of=args.week, at=args.at, weeks=args.weeks, return_state=True)
    )


def cmd_activity_join_hook(args: argparse.Namespace) -> int:
    """Open today's join-hook lottery in every group and draw the days that ended."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import join_hook

    return _report_state(join_hook(as_of=args.at, return_state=True))


def cmd_rewards_settle(args: argparse.Namespace) -> int:
    """Pay the granted wins whose pay day has come."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import rewards_settle

    extra = _given(args, "in_flight_seconds")
    return _report_state(rewards_settle(as_of=args.at, **extra, return_state=True))


def cmd_groups_health(args: argparse.Namespace) -> int:
    """Assess every group on the cadence template for today or --date."""
    _prepare_flow_run()
    from siyu.flows.group_cadence import group_health

    day = datetime.strptime(args.date, "%Y%m%d").date() if args.date else None
    return _report_state(group_health(date=day, return_state=True))


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among `names` that were given: the flow's own defaults stand for the rest."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _report_state(state: Any) -> int:
    """Print a finished flow run's message and turn its state into the exit code."""
    message = state.message or state.name
    if state.is_completed():
        print(message)
        return EXIT_OK
    if state.is_failed():
        print(message, file=sys.stderr)
        return EXIT_FLOW_FAILED
    print(f"the run ended {state.name}: {message}", file=sys.stderr)
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="siyu",
        description="siyu: a bank's customer operations on WeCom, orchestrated with Prefect.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="start the WeCom sandbox, the Prefect server and every deployment (Ctrl-C stops all)",
        description="Start everything for a local run: the WeCom sandbox, the Prefect server with "
        "its UI, sample data on first start, the blocks, and every deployment served in this "
        "process. Ctrl-C stops it all. Data lives in SIYU_HOME (default ./.siyu).",
    )
    up.add_argument("--prefect-port", type=_port, default=4200, help="Prefect UI/API port")
    up.add_argument("--sandbox-port", type=_port, default=8055, help="WeCom sandbox port")
    up.add_argument(
        "--customers",
        type=_positive,
        default=20_000,
        help="customers in the sample export made on first start",
    )
    up.add_argument(
        "--no-browser-hint",
        action="store_true",
        help="do not print what to open in the browser",
    )
    up.set_defaults(handler=cmd_up)

    deploy = commands.add_parser(
        "deploy",
        help="set up the production Prefect server and deploy every deployment to pool 'siyu'",
        description="Set up the Prefect server PREFECT_API_URL points at as `siyu up` sets up "
        "the embedded one (block types, the blocks, siyu's database schema, the WeCom rate "
        "limits, the ops robot and its automations, the process work pool 'siyu'), then deploy "
        "every deployment to that pool. A value is needed only while its block is not saved: "
        "saved blocks (and ops' edits of them) are kept, so running it again is safe. Secrets "
        "are best given as the variables named (a flag shows in `ps`). Workers then need only "
        "PREFECT_API_URL: `prefect worker start --pool siyu`. Exit code 0: done; 1: refused "
        "or something needs someone (said on the last lines).",
    )
    deploy.add_argument(
        "--database-url", default=None, help="siyu's database (or SIYU_DATABASE_URL)"
    )
    deploy.add_argument(
        "--landing-dir",
        type=_absolute_dir,
        default=None,
        help="absolute shared directory the exports land in (every worker reads it)",
    )
    deploy.add_argument(
        "--reports-dir",
        type=_absolute_dir,
        default=None,
        help="absolute shared directory for the gate's Data Docs",
    )
    deploy.add_argument(
        "--entries-dir",
        type=_absolute_dir,
        default=None,
        help="absolute shared directory game entries land in",
    )
    deploy.add_argument(
        "--branches", type=_branches, default=None, help="branch codes, comma-separated"
    )
    deploy.add_argument(
        "--wecom-base-url", default=None, help="WeCom API root (default: WeCom's own)"
    )
    deploy.add_argument("--wecom-corp-id", default=None, help="WeCom corp id (ww...)")
    deploy.add_argument("--wecom-agent-id", type=int, default=None, help="the app's agent id")
    deploy.add_argument(
        "--wecom-secret", default=None, help="the app's secret (or SIYU_WECOM_SECRET)"
    )
    deploy.add_argument(
        "--mobile-salt",
        default=None,
        help="salt of mobile hashes (or SIYU_MOBILE_SALT); neither: one is made once and kept",
    )
    deploy.add_argument(
        "--robot-url",
        default=None,
        help="ops group robot URL with {{key}} (default: <wecom-base-url>webhook/send?key={{key}})",
    )
    deploy.add_argument("--robot-key", default=None, help="the robot's key (or SIYU_ROBOT_KEY)")
    deploy.add_argument("--pay-base-url", default=None, help="WeChat Pay API root")
    deploy.add_argument(
        "--pay-mch-id", default=None, help="WeChat Pay merchant id: saves the Payout Account"
    )
    deploy.add_argument(
        "--pay-api-key", default=None, help="merchant API key (or SIYU_PAY_API_KEY)"
    )
    deploy.add_argument(
        "--pay-secret", default=None, help="WeCom payment secret (or SIYU_PAY_SECRET)"
    )
    deploy.add_argument(
        "--schedules",
        choices=("on", "off"),
        default=None,
        help="switch every schedule on or off (default: new ones paused, others as they are)",
    )
    deploy.set_defaults(handler=cmd_deploy)

    sandbox = commands.add_parser(
        "sandbox",
        help="run the WeCom sandbox server",
        description="Run the WeCom sandbox server (the part of the WeCom API siyu uses) "
        "in the foreground.",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sandbox.add_argument("--port", type=_port, default=8055, help="port to listen on")
    sandbox.add_argument(
        "--state", type=Path, default=None, help="state file (SQLite); in memory without it"
    )
    sandbox.add_argument("--seed", type=Path, default=None, help="seed directory to load")
    sandbox.set_defaults(handler=cmd_sandbox)

    sample = commands.add_parser(
        "sample",
        help="generate a sample core-banking export and a sandbox seed",
        description="Generate a synthetic core-banking export and the matching WeCom sandbox "
        "seed (employees, contacts, tags, groups).",
    )
    sample.add_argument(
        "--customers", type=_positive, default=1_000, help="customers in export (default 1000)"
    )
    sample.add_argument(
        "--groups", type=int, default=6, help="customer groups (WeCom chats; default 6)"
    )
    sample.add_argument(
        "--managers", type=_positive, default=5, help="account managers (default 5)"
    )
    sample.add_argument(
        "--seed", type=int, default=7, help="random seed: same seed, same data (default 7)"
    )
    sample.add_argument("--out", type=Path, required=True, help="output directory")
    sample.add_argument(
        "--format", choices=EXPORT_FORMATS, default="csv-gbk", help="export file format"
    )
    sample.add_argument(
        "--date",
        type=_business_date,
        default=None,
        help="export date YYYYMMDD (default: today in Asia/Shanghai)",
    )
    sample.set_defaults(handler=cmd_sample)

    db = commands.add_parser(
        "db", help="manage siyu's database", description="Manage siyu's database."
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    db_upgrade = db_commands.add_parser(
        "upgrade",
        help="migrate the database to the newest schema",
        description="Migrate siyu's database to the newest schema (safe to repeat).",
    )
    db_upgrade.add_argument(
        "--url",
        default=None,
        help="SQLAlchemy URL (default: SIYU_DATABASE_URL or SQLite in SIYU_HOME)",
    )
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    flow_env = (
        "Connections come from the blocks named 'siyu' on the Prefect server PREFECT_API_URL "
        "points at (the run shows in that server's UI only then); a missing block is an error, "
        "unless SIYU_ENVIRONMENT=embedded, where SIYU_HOME, SIYU_DATABASE_URL, "
        "SIYU_WECOM_BASE_URL, SIYU_WECOM_CORP_ID, SIYU_WECOM_SECRET, SIYU_WECOM_AGENT_ID and "
        "SIYU_MOBILE_SALT stand in for it."
    )
    contacts = commands.add_parser(
        "contacts-sync",
        help="run the contacts sync once",
        description="Pull every employee's WeCom contacts and bind them to bank customers, once. "
        + flow_env
        + " Exit code 0: completed; 2: the run failed (e.g. WeCom refused the app); 1: any "
        "other error.",
    )
    contacts.add_argument(
        "--at",
        type=_as_of,
        default=None,
        help="the time to sync for, ISO (default: now); new contacts enrol as of then",
    )
    contacts.set_defaults(handler=cmd_contacts_sync)

    tags = commands.add_parser(
        "tag-sync",
        help="run the tag sync once",
        description="Gate the core-banking export, compute tags and push the difference to "
        "WeCom, once. "
        + flow_env
        + " Exit code 0: completed; 2: the run failed (e.g. a blocked export); 1: any other "
        "error.",
    )
    tags.add_argument(
        "export", nargs="?", default=None, help="export file (default: newest in the landing dir)"
    )
    tags.add_argument("--dry-run", action="store_true", help="report the difference, send nothing")
    tags.add_argument(
        "--date",
        type=_business_date,
        default=None,
        help="expected export date YYYYMMDD (default: today in Asia/Shanghai)",
    )
    tags.add_argument(
        "--row-failure-threshold",
        type=_share,
        default=None,
        help="share of quarantined rows above which the sync blocks (default 0.01)",
    )
    tags.set_defaults(handler=cmd_tag_sync)

    sends = commands.add_parser(
        "sends", help="track siyu's sends", description="Track the messages siyu sends."
    )
    sends_commands = sends.add_subparsers(dest="sends_command", metavar="COMMAND", required=True)
    track = sends_commands.add_parser(
        "track",
        help="settle, remind, expire and send deferred messages once",
        description="Read every created mass message's outcome from WeCom and settle the send "
        "ledger, remind employees who have not confirmed, cancel what is past its send window "
        "and send deferred messages whose time has come, once. "
        + flow_env
        + " Exit code 0: completed; 2: the run failed; 1: any other error.",
    )
    track.add_argument(
        "--at",
        type=_as_of,
        default=None,
        help="the time to track for, ISO (default: now in Asia/Shanghai)",
    )
    track.add_argument(
        "--remind-after",
        type=_duration,
        default=None,
        help="first reminder this long after a message is created, e.g. 2h (default 2h)",
    )
    track.add_argument(
        "--remind-every",
        type=_duration,
        default=None,
        help="at least this long between two reminders, e.g. 4h (default 4h)",
    )
    track.add_argument(
        "--reminders-per-day",
        type=int,
        choices=(0, 1, 2, 3),
        default=None,
        help="reminders a message in any 24 h (WeCom allows 3; default 3)",
    )
    track.add_argument(
        "--send-window",
        type=_duration,
        default=None,
        help="a message unconfirmed this long is cancelled, e.g. 2d (default 48h)",
    )
    track.add_argument(
        "--in-flight-seconds",
        type=_seconds,
        default=None,
        help="the outbox's in-flight window for replanned sends (default 30)",
    )
    track.add_argument(
        "--alert-after",
        type=_duration,
        default=None,
        help="a message unconfirmed this long is told to ops, once (default 24h)",
    )
    track.set_defaults(handler=cmd_sends_track)

    path = commands.add_parser(
        "path",
        help="the four-touch conversion path",
        description="Enrol cohorts, run a touch, catch up on due touches.",
    )
    path_commands = path.add_subparsers(dest="path_command", metavar="COMMAND", required=True)
    enroll = path_commands.add_parser(
        "enroll",
        help="evaluate conversions and enrol the day's cohorts once",
        description="Evaluate every member's goal on the newest accepted export, then enter the "
        "customers matching a path's entry rule and in none into the day's cohorts, and schedule "
        "their four touches. "
        + flow_env
        + " Exit code 0: completed; 2: the run failed; 1: any other error.",
    )
    enroll.add_argument(
        "--date",
        type=_business_date,
        default=None,
        help="the day to enrol for, YYYYMMDD (default: now in Asia/Shanghai)",
    )
    enroll.add_argument("--dry-run", action="store_true", help="say who would enter, store nothing")
    enroll.add_argument(
        "--new-contacts",
        action="store_true",
        help="enrol only customers never in a path, without evaluating conversions",
    )
    enroll.set_defaults(handler=cmd_path_enroll)
    touch = path_commands.add_parser(
        "touch",
        help="run one touch of one cohort",
        description="Send touch N of COHORT now (drop converted and unreachable members, pick "
        "variants, send per manager and variant). " + flow_env,
    )
    touch.add_argument("cohort", type=_positive, help="the cohort's id")
    touch.add_argument("touch", type=int, choices=(1, 2, 3, 4), help="the touch, 1 to 4")
    touch.add_argument(
        "--at", type=_as_of, default=None, help="the time to send for, ISO (default: now)"
    )
    touch.add_argument(
        "--force", action="store_true", help="run it even if it ran (nobody gets it twice)"
    )
    touch.set_defaults(handler=cmd_path_touch)
    due = path_commands.add_parser(
        "due",
        help="run every touch that was due and did not run, once",
        description="After an outage: run each path touch due by --until that has not run. "
        + flow_env,
    )
    due.add_argument(
        "--until",
        type=_as_of,
        default=None,
        help="ISO time, e.g. 2026-12-01T23:59:00+08:00 (default: now in Asia/Shanghai)",
    )
    due.set_defaults(handler=cmd_path_due)

    cadence = commands.add_parser(
        "cadence", help="the weekly group cadence", description="The weekly group cadence."
    )
    cadence_commands = cadence.add_subparsers(
        dest="cadence_command", metavar="COMMAND", required=True
    )
    slot = cadence_commands.add_parser(
        "slot",
        help="serve one slot of the cadence template now (or --at)",
        description="Serve one weekly slot to every group on the template. " + flow_env,
    )
    slot.add_argument("slot", help="the template's slot, e.g. mon-post, tue-game, fri-big")
    slot.add_argument("--at", type=_as_of, default=None, help="ISO time (default: now)")
    slot.add_argument("--chat", action="append", default=[], help="only this group (repeatable)")
    slot.add_argument("--dry-run", action="store_true", help="plan and report, send nothing")
    slot.add_argument(
        "--no-schedule-winners",
        action="store_true",
        help="do not schedule the activity-winners run (choose them later by hand)",
    )
    slot.set_defaults(handler=cmd_cadence_slot)
    cadence_due = cadence_commands.add_parser(
        "due",
        help="run every slot, winners run and payout due by --until that did not run, once",
        description="After an outage: catch up the cadence up to --until. " + flow_env,
    )
    cadence_due.add_argument(
        "--until", type=_as_of, default=None, help="ISO time (default: now in Asia/Shanghai)"
    )
    cadence_due.add_argument(
        "--since", type=_as_of, default=None, help="look back from here (default: 7 days)"
    )
    cadence_due.add_argument(
        "--in-flight-seconds",
        type=_seconds,
        default=None,
        help="how long a payout without an answer is left before it is asked about (default 30)",
    )
    cadence_due.set_defaults(handler=cmd_cadence_due)

    activity = commands.add_parser("activity", help="group activities")
    activity_commands = activity.add_subparsers(
        dest="activity_command", metavar="COMMAND", required=True
    )
    winners = activity_commands.add_parser(
        "winners", help="choose, grant and announce an activity's winners"
    )
    winners.add_argument("activity", help="the activity key, e.g. weekly:tue-game:2026-W49")
    winners.add_argument("--at", type=_as_of, default=None, help="ISO time (default: now)")
    winners.set_defaults(handler=cmd_activity_winners)
    hook = activity_commands.add_parser(
        "join-hook", help="open today's join-hook lottery, draw the days that ended"
    )
    hook.add_argument("--at", type=_as_of, default=None, help="ISO time (default: now)")
    hook.set_defaults(handler=cmd_activity_join_hook)

    keep = commands.add_parser(
        "housekeeping",
        help="remove records past their retention periods",
        description="Remove final send-ledger rows, finished outbox rows, quarantined rows and "
        "files and old Data Docs (unsettled rows stay), once. "
        + flow_env
        + " Exit code 0: completed; 2: the run failed; 1: any other error.",
    )
    keep.add_argument(
        "--at", type=_as_of, default=None, help="the time to run for, ISO (default: now)"
    )
    keep.add_argument(
        "--dry-run", action="store_true", help="count what would be removed, remove nothing"
    )
    keep.set_defaults(handler=cmd_housekeeping)

    report = commands.add_parser("report", help="management reports (artifacts in the UI)")
    report_commands = report.add_subparsers(dest="report_command", metavar="COMMAND", required=True)
    weekly = report_commands.add_parser("weekly", help="the weekly management report")
    weekly.add_argument(
        "--week",
        type=_iso_date,
        default=None,
        help="any day of the week to report, YYYY-MM-DD (default: the last full week)",
    )
    weekly.add_argument(
        "--weeks",
        type=_positive,
        default=4,
        help="weeks compared, ending with that one (default 4, at most 12)",
    )
    weekly.add_argument(
        "--at", type=_as_of, default=None, help="the time to report for, ISO (default: now)"
    )
    weekly.set_defaults(handler=cmd_report_weekly)

    rewards = commands.add_parser("rewards", help="reward payouts")
    rewards_commands = rewards.add_subparsers(
        dest="rewards_command", metavar="COMMAND", required=True
    )
    settle = rewards_commands.add_parser("settle", help="pay the granted wins that are due")
    settle.add_argument("--at", type=_as_of, default=None, help="ISO time (default: now)")
    settle.add_argument(
        "--in-flight-seconds",
        type=_seconds,
        default=None,
        help="how long a payout without an answer is left before it is asked about (default 30)",
    )
    settle.set_defaults(handler=cmd_rewards_settle)

    groups = commands.add_parser("groups", help="customer groups")
    groups_commands = groups.add_subparsers(dest="groups_command", metavar="COMMAND", required=True)
    health = groups_commands.add_parser("health", help="assess every group's health, list dying")
    health.add_argument(
        "--date", type=_business_date, default=None, help="YYYYMMDD (default: today)"
    )
    health.set_defaults(handler=cmd_groups_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `siyu` console script."""
    args = build_parser().parse_args(argv)
    from siyu.schemas.settings import keep_files_private

    # Whatever a command writes (the database, reports, quarantine files) is for this user only.
    keep_files_private()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, no traceback, exit 1
        print(f"siyu {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
