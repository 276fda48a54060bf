"""The `siyu` command line: start everything, the sandbox, sample data, migrations, the syncs."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import datetime
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


def _positive(value: str) -> int:
    """An argparse type: a count of at least 1."""
    try:
        count = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} must be at least 1")
    return count


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


def cmd_contacts_sync(args: argparse.Namespace) -> int:
    """Run the contacts sync once, here and now."""
    from siyu.flows.contacts_sync import contacts_sync

    return _report_state(contacts_sync(return_state=True))


def cmd_tag_sync(args: argparse.Namespace) -> int:
    """Run the tag sync once, here and now."""
    from siyu.flows.tag_sync import TagSyncParameters, tag_sync

    params = TagSyncParameters(
        # Absolute, so the run means the same file whatever directory the flow reads from.
        export_file=str(Path(args.export).resolve()) if args.export else None,
        dry_run=args.dry_run,
        business_date=args.date,
        row_failure_threshold=args.row_failure_threshold,
    )
    return _report_state(tag_sync(params=params, return_state=True))


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
        "Configured by SIYU_HOME, SIYU_DATABASE_URL, SIYU_WECOM_BASE_URL, SIYU_WECOM_CORP_ID, "
        "SIYU_WECOM_SECRET and SIYU_WECOM_AGENT_ID. Exit code 0: completed; 2: the run failed "
        "(e.g. a blocked export); 1: any other error."
    )
    contacts = commands.add_parser(
        "contacts-sync",
        help="run the contacts sync once",
        description="Pull every employee's WeCom contacts and bind them to bank customers, once. "
        + flow_env,
    )
    contacts.set_defaults(handler=cmd_contacts_sync)

    tags = commands.add_parser(
        "tag-sync",
        help="run the tag sync once",
        description="Gate the core-banking export, compute tags and push the difference to "
        "WeCom, once. " + flow_env,
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `siyu` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, no traceback, exit 1
        print(f"siyu {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
