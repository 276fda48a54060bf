"""One setup of a Prefect server for siyu: `siyu up` (embedded) and `siyu deploy` (production).

`siyu deploy` sets up the production Prefect server PREFECT_API_URL points at, then deploys
every entry of specs.DEPLOYMENTS to the process work pool `siyu`. Its flags (stable):

    siyu deploy
      --database-url URL     siyu's database, e.g. postgresql+psycopg2://siyu@db:5432/siyu
                             (or SIYU_DATABASE_URL; the URL carries a password: prefer the variable)
      --landing-dir DIR      absolute, shared: where core-banking exports land (every worker reads it)
      --reports-dir DIR      absolute, shared: where the gate's Data Docs are written
      --entries-dir DIR      absolute, shared: where game entries land (the cadence's winners)
      --branches A,B,...     the bank's branch codes (default: the export schema's)
      --wecom-base-url URL   default https://qyapi.weixin.qq.com/cgi-bin/
      --wecom-corp-id ID
      --wecom-agent-id N
      --wecom-secret S       (or SIYU_WECOM_SECRET: preferred, a flag shows in `ps`)
      --mobile-salt S        (or SIYU_MOBILE_SALT); with neither, one is generated ONCE and saved
                             in the Export Source block; never again (a new salt unbinds everyone)
      --robot-url URL        the ops group robot, `{{key}}` where its key goes
                             (default: <wecom-base-url>webhook/send?key={{key}})
      --robot-key K          (or SIYU_ROBOT_KEY)
      --pay-base-url URL     WeChat Pay (default https://api.mch.weixin.qq.com/)
      --pay-mch-id ID        the merchant id; with it the Payout Account block is saved
      --pay-api-key K        (or SIYU_PAY_API_KEY)
      --pay-secret K         (or SIYU_PAY_SECRET): the WeCom payment secret
      --schedules on|off     switch every schedule on or off; without it, schedules of a new
                             deployment start paused and existing ones keep their state

Every value is needed only while its block is not saved: a block saved before (perhaps edited by
ops since) is kept as it is, and a given value that differs from it is reported, not written. So
a second `siyu deploy` (with or without flags) changes nothing ops edited; it re-registers the
block types, re-deploys the code's deployments and keeps each schedule's on/off state.

A worker needs only PREFECT_API_URL (and siyu installed): every connection comes from the
blocks saved here; SIYU_ENVIRONMENT stays unset (production: a missing block is an error).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from siyu.schemas.settings import EMBEDDED, PRODUCTION, EnvironmentKind

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from siyu.deployments.specs import DeploymentSpec
    from siyu.schemas.settings import Settings

ScheduleSwitch = Literal["on", "off"]
DEFAULT_WECOM_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/"
ROBOT_PATH = "webhook/send?key={{key}}"


class SetupRefused(ValueError):
    """A value the setup needs was not given (or cannot work on every worker); says which flag."""


class ServerConfig(BaseModel):
    """What a Prefect server is set up with: the values of the blocks it does not hold yet.

    Embedded (`siyu up`) fills it from the SIYU_* settings; production (`siyu deploy`) from the
    command line, where a value left out is asked for only if its block is missing.
    """

    environment: EnvironmentKind = Field(description="embedded (siyu up) or production")
    block_name: str = Field(default="siyu", description="The name every siyu block is saved under")
    database_url: SecretStr | None = Field(default=None, description="siyu's database URL")
    landing_dir: str | None = Field(default=None, description="Absolute export landing dir")
    reports_dir: str | None = Field(default=None, description="Absolute reports dir")
    entries_dir: str | None = Field(default=None, description="Absolute game entries dir")
    branches: tuple[str, ...] | None = Field(default=None, description="The bank's branch codes")
    wecom_base_url: str | None = Field(default=None, description="WeCom API root")
    wecom_corp_id: str | None = Field(default=None, description="WeCom corp id")
    wecom_secret: SecretStr | None = Field(default=None, description="WeCom app secret")
    wecom_agent_id: int | None = Field(default=None, description="WeCom app agent id")
    shared_pacing: bool = Field(
        default=True, description="WeCom limits shared by every worker (production: always)"
    )
    mobile_salt: SecretStr | None = Field(default=None, description="Salt of mobile hashes")
    robot_url: str | None = Field(default=None, description="Ops robot URL with {{key}}")
    robot_key: SecretStr | None = Field(default=None, description="Ops robot key")
    pay_base_url: str | None = Field(default=None, description="WeChat Pay API root")
    pay_mch_id: str | None = Field(default=None, description="WeChat Pay merchant id")
    pay_api_key: SecretStr | None = Field(default=None, description="Merchant API key")
    pay_secret: SecretStr | None = Field(default=None, description="WeCom payment secret")
    work_pool: str | None = Field(default=None, description="Work pool to create (deploy only)")

    @field_validator("landing_dir", "reports_dir", "entries_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_absolute():
            raise ValueError(
                f"{value!r} is relative: a worker runs each flow in a fresh temporary directory, "
                "so give the absolute path of a directory every worker reads (a shared mount)"
            )
        return value

    @classmethod
    def embedded(
        cls,
        settings: Settings,
        *,
        wecom_base_url: str | None = None,
        robot_url: str | None = None,
        robot_key: str | None = None,
    ) -> ServerConfig:
        """The embedded server's values: the SIYU_* settings and their sandbox defaults."""
        base_url = wecom_base_url or settings.wecom_base_url
        return cls(
            environment=EMBEDDED,
            database_url=SecretStr(settings.database_url),
            landing_dir=str(settings.landing_dir),
            reports_dir=str(settings.reports_dir),
            entries_dir=str(settings.landing_dir / "entries"),
            branches=settings.branches,
            wecom_base_url=base_url,
            wecom_corp_id=settings.wecom_corp_id,
            wecom_secret=settings.wecom_secret,
            wecom_agent_id=settings.wecom_agent_id,
            # One process serves every run; the WeComApp block may switch sharing on.
            shared_pacing=False,
            mobile_salt=SecretStr(settings.mobile_salt().decode()),
            robot_url=robot_url,
            robot_key=SecretStr(robot_key) if robot_key is not None else None,
            pay_base_url=os.environ.get("SIYU_PAY_BASE_URL"),
            pay_mch_id=os.environ.get("SIYU_PAY_MCH_ID", "1900000109"),
            pay_api_key=SecretStr(os.environ.get("SIYU_PAY_API_KEY", "")),
        )


@dataclass
class SetupReport:
    """What the setup did, one line per thing, and what still needs someone."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def did(self, what: str, outcome: str) -> None:
        self.lines.append(f"{what}: {outcome}")

    def problem(self, what: str, outcome: str) -> None:
        self.problems.append(f"{what}: {outcome}")

    def render(self) -> str:
        text = list(self.lines)
        if self.problems:
            text += ["", "needs someone:"] + [f"  {line}" for line in self.problems]
        return "\n".join(text)


def _label(block_type: type[Block], name: str) -> str:
    return f"block {block_type.get_block_type_slug()}/{name}"


def _required(value: Any, flag: str, block: str) -> Any:
    """A value the missing block needs; refused, naming the flag, when it was not given."""
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
        raise SetupRefused(f"{block} is not saved yet: give {flag} to save it")
    return value


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def _new_wecom(config: ServerConfig, label: str) -> Block:
    from siyu.blocks.wecom import WeComApp

    return WeComApp(
        corp_id=_required(config.wecom_corp_id, "--wecom-corp-id", label),
        secret=_required(config.wecom_secret, "--wecom-secret (or SIYU_WECOM_SECRET)", label),
        agent_id=_required(config.wecom_agent_id, "--wecom-agent-id", label),
        base_url=config.wecom_base_url or DEFAULT_WECOM_BASE_URL,
        shared_pacing=config.shared_pacing,
    )


def _new_database(config: ServerConfig, label: str) -> Block:
    from siyu.blocks.database import SiyuDatabase

    url = _required(config.database_url, "--database-url (or SIYU_DATABASE_URL)", label)
    return SiyuDatabase(url=url)


def _new_export_source(config: ServerConfig, label: str) -> Block:
    from siyu.blocks.export_source import ExportSource

    values: dict[str, Any] = {
        "landing_dir": _required(config.landing_dir, "--landing-dir", label),
        "reports_dir": _required(config.reports_dir, "--reports-dir", label),
        # Made once, here, and kept in the block: every worker hashes with the same one.
        "mobile_salt": _secret(config.mobile_salt) or secrets.token_hex(32),
    }
    if config.branches:
        values["branches"] = list(config.branches)
    return ExportSource(**values)


def _new_tag_rules(config: ServerConfig, label: str) -> Block:
    from siyu.blocks.tag_rules import TagRules

    return TagRules()


def _new_entries(config: ServerConfig, label: str) -> Block:
    from siyu.blocks.group_cadence import EntriesSource

    return EntriesSource(landing_dir=_required(config.entries_dir, "--entries-dir", label))


def _new_payout(config: ServerConfig, label: str, corp_id: str) -> Block:
    from siyu.blocks.group_cadence import DEFAULT_PAY_BASE_URL, PayoutAccount

    # Its pacing is shared by default: WeChat Pay counts payouts per merchant, not per worker.
    return PayoutAccount(
        pay_base_url=config.pay_base_url or DEFAULT_PAY_BASE_URL,
        mch_id=_required(config.pay_mch_id, "--pay-mch-id", label),
        wxappid=corp_id,
        api_key=SecretStr(_secret(config.pay_api_key)),
        payment_secret=SecretStr(_secret(config.pay_secret)),
    )


# The values a saved block is compared with, by attribute: (field, config field, flag).
_GIVEN_FIELDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "wecom": (
        ("corp_id", "wecom_corp_id", "--wecom-corp-id"),
        ("agent_id", "wecom_agent_id", "--wecom-agent-id"),
        ("base_url", "wecom_base_url", "--wecom-base-url"),
        ("secret", "wecom_secret", "--wecom-secret"),
    ),
    "database": (("url", "database_url", "--database-url"),),
    "export_source": (
        ("landing_dir", "landing_dir", "--landing-dir"),
        ("reports_dir", "reports_dir", "--reports-dir"),
        ("mobile_salt", "mobile_salt", "--mobile-salt"),
    ),
    "tag_rules": (),
}


def _differences(block: Block, config: ServerConfig, attribute: str) -> list[str]:
    """The flags given with a value other than the saved block's (never printing a value)."""
    flags = []
    for block_field, config_field, flag in _GIVEN_FIELDS.get(attribute, ()):
        given = getattr(config, config_field)
        if given is None:
            continue
        saved = getattr(block, block_field)
        if isinstance(given, SecretStr):
            given = given.get_secret_value()
        if isinstance(saved, SecretStr):
            saved = saved.get_secret_value()
        if given != saved:
            flags.append(flag)
    return flags


def prepare_server(config: ServerConfig) -> SetupReport:
    """Give the Prefect server PREFECT_API_URL points at all siyu needs; safe to repeat.

    Registers every siyu block type; saves each block where none is saved (ops' edits are
    kept); migrates siyu's database; creates the WeCom rate limits, the ops robot and the
    automations; and, with `config.work_pool`, the process work pool. Refuses (SetupRefused)
    before saving anything when a missing block's value was not given.
    """
    from siyu.blocks.environment import (
        BLOCK_TYPES,
        PLAYBOOK_TYPES,
        SIYU_BLOCK_TYPES,
        load_saved,
    )
    from siyu.blocks.group_cadence import EntriesSource, PayoutAccount

    report = SetupReport()
    name = config.block_name
    for block_type in SIYU_BLOCK_TYPES:
        block_type.register_type_and_schema()
    report.did("block types", f"{len(SIYU_BLOCK_TYPES)} registered")

    makers: dict[str, Callable[[ServerConfig, str], Block]] = {
        "wecom": _new_wecom,
        "database": _new_database,
        "export_source": _new_export_source,
        "tag_rules": _new_tag_rules,
    }
    saved: dict[str, Block | None] = {
        attribute: load_saved(block_type, name) for attribute, block_type in BLOCK_TYPES.items()
    }
    # Every missing connection is built before any is saved: a refusal leaves the server as it was.
    new = {
        attribute: makers[attribute](config, _label(BLOCK_TYPES[attribute], name))
        for attribute, block in saved.items()
        if block is None
    }
    robot_url, robot_key = _robot(config, report)
    for attribute, block_type in BLOCK_TYPES.items():
        label = _label(block_type, name)
        block = saved[attribute]
        if block is None:
            new[attribute].save(name)
            outcome = "saved"
            if attribute == "export_source" and config.mobile_salt is None:
                outcome = "saved, with a new mobile salt (kept in the block from now on)"
            report.did(label, outcome)
            continue
        if attribute == "export_source" and not block.mobile_salt.get_secret_value():  # type: ignore[attr-defined]
            # No salt yet means nothing was ever bound with it: setting one loses nothing.
            block.mobile_salt = SecretStr(_secret(config.mobile_salt) or secrets.token_hex(32))  # type: ignore[attr-defined]
            block.save(name, overwrite=True)
            report.did(label, "kept, and given the mobile salt it lacked")
            continue
        differ = _differences(block, config, attribute) if config.environment == PRODUCTION else []
        if differ:
            report.did(
                label,
                f"kept as saved; {', '.join(differ)} differ from it: edit the block in the "
                "Blocks page to change them",
            )
        else:
            report.did(label, "kept as saved")

    for block_type in PLAYBOOK_TYPES:
        label = _label(block_type, name)
        if load_saved(block_type, name) is None:
            block_type().save(name)
            report.did(label, "saved with its defaults (edit it in the Blocks page)")
        else:
            report.did(label, "kept as saved")

    _ensure_given_only(config, report, EntriesSource, lambda label: _new_entries(config, label))
    corp_id = config.wecom_corp_id or _saved_corp_id(name)
    _ensure_given_only(
        config, report, PayoutAccount, lambda label: _new_payout(config, label, corp_id)
    )

    _migrate(name, report)
    _ensure_limits(name, report)
    _ensure_automations(robot_url, robot_key, report)
    if config.work_pool:
        report.did(f"work pool {config.work_pool}", ensure_work_pool(config.work_pool))
        _ensure_recovery(report)
    return report


def _ensure_recovery(report: SetupReport) -> None:
    """On a worker pool, a run whose machine was lost is run again once, on another worker.

    Not for `siyu up`: there a run stopped with siyu is marked Crashed and waits for a person.
    """
    from siyu.deployments.recovery import ensure_recovery

    ensure_recovery()
    report.did("crash recovery", "a crashed run is run again once (automation in place)")


def _robot(config: ServerConfig, report: SetupReport) -> tuple[str, str]:
    """The robot's URL and key, needed (refused when missing) only while its block is not saved."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from siyu.deployments.alerts import ROBOT_BLOCK

    url = config.robot_url or (config.wecom_base_url or DEFAULT_WECOM_BASE_URL) + ROBOT_PATH
    key = _secret(config.robot_key)
    try:
        CustomWebhookNotificationBlock.load(ROBOT_BLOCK)
    except ValueError:
        if "{{key}}" in url and not key:
            raise SetupRefused(
                f"the ops robot block {ROBOT_BLOCK!r} is not saved yet: give --robot-key (or "
                "SIYU_ROBOT_KEY), the key of the ops team's WeCom group robot"
            ) from None
    return url, key


def _saved_corp_id(name: str) -> str:
    from siyu.blocks.environment import load_saved
    from siyu.blocks.wecom import WeComApp

    app = load_saved(WeComApp, name)
    return app.corp_id if app is not None else ""  # type: ignore[attr-defined]


def _ensure_given_only(
    config: ServerConfig,
    report: SetupReport,
    block_type: type[Block],
    make: Callable[[str], Block],
) -> None:
    """Save a money or customer-file block only from given values; say when it is left unsaved."""
    from siyu.blocks.environment import load_saved

    name = config.block_name
    label = _label(block_type, name)
    if load_saved(block_type, name) is not None:
        report.did(label, "kept as saved")
        return
    try:
        block = make(label)
    except SetupRefused as refused:
        # The cadence's winners and payouts are optional at first: the rest of siyu runs.
        report.problem(label, f"not saved ({refused}); the cadence's runs that need it fail")
        return
    block.save(name)
    report.did(label, "saved")


def _migrate(name: str, report: SetupReport) -> None:
    from siyu.blocks.database import SiyuDatabase

    SiyuDatabase.load(name).upgrade()
    report.did("siyu database", "at the newest schema")


def _ensure_limits(name: str, report: SetupReport) -> None:
    """The Prefect rate limits every worker paces WeCom (and payouts) by, where shared."""
    from siyu.blocks.environment import load_saved
    from siyu.blocks.group_cadence import PayoutAccount
    from siyu.blocks.wecom import WeComApp, ensure_rate_limits

    app = WeComApp.load(name)
    if app.shared_pacing:
        made = ensure_rate_limits(app)
        report.did("WeCom rate limits", f"{len(made)} shared limits (wecom-<api>) in place")
    else:
        report.did("WeCom rate limits", "not needed (the WeCom App paces per process)")
    account = load_saved(PayoutAccount, name)
    if account is not None and getattr(account, "shared_pacing", False):
        from siyu.blocks.wecom_pay import ensure_payout_rate_limit

        (limit,) = ensure_payout_rate_limit(account)
        report.did("payout rate limit", f"{limit} in place")


def _ensure_automations(robot_url: str, robot_key: str, report: SetupReport) -> None:
    from siyu.deployments.alerts import ensure_automations

    ensure_automations(robot_url, robot_key)
    report.did("ops robot and automations", "in place (ops' edits kept)")


def ensure_work_pool(name: str) -> str:
    """Create the process work pool `name` unless it exists (its settings are ops' to edit)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="siyu's flow runs; start a worker per machine: "
                    f"prefect worker start --pool {name}",
                )
            )
            return "created (type process)"
    if pool.type != ProcessWorker.type:
        raise SetupRefused(
            f"the work pool {name!r} exists with type {pool.type!r}, not 'process': siyu's "
            "workers run flows as processes of an installed siyu; delete or rename that pool"
        )
    return "kept as it is"


def work_pool_deployment(spec: DeploymentSpec, work_pool: str) -> Any:
    """The RunnerDeployment of `spec` for the work pool, as prefect.yaml declares it."""
    runner = spec.to_runner_deployment()
    pool = spec.to_prefect_yaml()["work_pool"]
    runner.work_pool_name = work_pool
    runner.work_queue_name = pool["work_queue_name"]
    # Every run a worker starts beats at siyu's pace, so a dead one is told apart.
    runner.job_variables = dict(pool["job_variables"])
    return runner


def _schedule_key(schedule: Any) -> tuple[str, ...]:
    """A schedule's identity across deploys: its slug, or its cron and time zone."""
    if schedule.slug:
        return ("slug", schedule.slug)
    inner = schedule.schedule
    return ("cron", getattr(inner, "cron", ""), getattr(inner, "timezone", "") or "")


def deploy_all(
    work_pool: str,
    schedules: ScheduleSwitch | None = None,
    specs: Sequence[DeploymentSpec] | None = None,
) -> list[str]:
    """Deploy every entry of specs.DEPLOYMENTS to `work_pool`; one line per deployment.

    Schedules: "on" or "off" switches them all; None starts a new deployment's schedules
    paused and keeps each existing schedule's state (and a paused deployment paused).
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from siyu.deployments.specs import DEPLOYMENTS

    lines = []
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS if specs is None else specs:
            runner = work_pool_deployment(spec, work_pool)
            try:
                existing = client.read_deployment_by_name(spec.full_name)
            except ObjectNotFound:
                existing = None
            before = {}
            if existing is not None:
                before = {_schedule_key(s): s.active for s in existing.schedules or []}
                runner.paused = existing.paused
            for schedule in runner.schedules or []:
                if schedules is not None:
                    schedule.active = schedules == "on" and schedule.active
                else:
                    schedule.active = before.get(_schedule_key(schedule), False) and (
                        schedule.active is not False
                    )
            runner.apply(work_pool_name=work_pool)
            total = len(runner.schedules or [])
            on = sum(1 for s in runner.schedules or [] if s.active)
            state = "created" if existing is None else "updated"
            plan = "no schedule" if not total else f"{on} of {total} schedules on"
            if runner.paused:
                plan += ", deployment paused"
            lines.append(f"deployment {spec.full_name}: {state} in pool {work_pool} ({plan})")
    return lines
