"""The one list of siyu's deployments, from which `serve()` and prefect.yaml are both made.

Adding a deployment is one entry in DEPLOYMENTS, then `python -m siyu.deployments.specs >
prefect.yaml` (a test checks the file equals what this table generates).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from siyu.blocks.group_cadence import WEEKDAYS, default_slots

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

# The bank's operations run on Beijing time; a Cron without a time zone would run in UTC.
TIMEZONE = "Asia/Shanghai"
WORK_POOL = "siyu"
# Seconds between the heartbeats of every flow run siyu starts (served, worker or CLI). The
# zombie-run automation (alerts.py) takes a run silent for a few of them for a dead one.
HEARTBEAT_SECONDS = 30
HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


class ScheduleSpec(BaseModel):
    """One schedule of a deployment: a cron in a time zone, with its own parameters."""

    model_config = ConfigDict(frozen=True)

    cron: str = Field(description="Cron expression, read in `timezone`")
    timezone: str = Field(default=TIMEZONE, description="Time zone of the cron")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters laid over the deployment's for this schedule"
    )
    slug: str | None = Field(default=None, description="Stable name of the schedule, if several")
    active: bool = Field(default=True, description="Whether the schedule makes runs")


class DeploymentSpec(BaseModel):
    """One deployment: which flow, when, with what limits; the only place it is described."""

    model_config = ConfigDict(frozen=True)

    flow_name: str = Field(description="The flow's name (its @flow name), e.g. tag-sync")
    name: str = Field(description="The deployment's name, e.g. daily")
    entrypoint: str = Field(
        description="Module path of the flow; module paths work under a normal install"
    )
    description: str = Field(description="What the deployment does, as ops read it in the UI")
    tags: tuple[str, ...] = Field(description="Tags shown and filtered on in the UI")
    concurrency_limit: int | None = Field(
        default=1, ge=1, description="Runs of this deployment at once (None: unlimited)"
    )
    schedules: tuple[ScheduleSpec, ...] = Field(default=(), description="When it runs")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Default parameters of every run"
    )

    @property
    def full_name(self) -> str:
        """`flow/deployment`, as Prefect names a deployment."""
        return f"{self.flow_name}/{self.name}"

    def load_flow(self) -> Flow:
        """The flow object behind the entrypoint."""
        module_name, _, attribute = self.entrypoint.rpartition(".")
        return getattr(importlib.import_module(module_name), attribute)

    def to_runner_deployment(self) -> RunnerDeployment:
        """The deployment as `serve()` takes it."""
        from prefect.schedules import Cron
        from prefect.types.entrypoint import EntrypointType

        return self.load_flow().to_deployment(
            name=self.name,
            schedules=[
                Cron(
                    s.cron,
                    timezone=s.timezone,
                    parameters=dict(s.parameters),
                    slug=s.slug,
                    active=s.active,
                )
                for s in self.schedules
            ],
            concurrency_limit=self.concurrency_limit,
            parameters=dict(self.parameters),
            tags=list(self.tags),
            description=self.description,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )

    def to_prefect_yaml(self) -> dict[str, Any]:
        """The deployment as prefect.yaml declares it for the work pool."""
        schedules = []
        for s in self.schedules:
            entry: dict[str, Any] = {"cron": s.cron, "timezone": s.timezone, "active": s.active}
            if s.slug:
                entry["slug"] = s.slug
            if s.parameters:
                entry["parameters"] = dict(s.parameters)
            schedules.append(entry)
        return {
            "name": self.name,
            "entrypoint": self.entrypoint,
            "description": self.description,
            "tags": list(self.tags),
            "concurrency_limit": self.concurrency_limit,
            "schedules": schedules,
            "parameters": dict(self.parameters),
            "work_pool": {
                "name": WORK_POOL,
                "work_queue_name": "default",
                # Every run a worker starts beats at siyu's pace, so a dead one is told apart.
                "job_variables": {"env": {HEARTBEAT_VARIABLE: str(HEARTBEAT_SECONDS)}},
            },
        }


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        flow_name="tag-sync",
        name="daily",
        entrypoint="siyu.flows.tag_sync.tag_sync",
        description=(
            "Every day at 07:00 Beijing time: gate the newest core-banking export, compute each "
            "contact's tags and push only the difference to WeCom. Run it by hand with dry_run "
            "to preview the changes."
        ),
        tags=("siyu", "tag-sync"),
        # Two syncs of one export at once would race on the outbox and the synced state.
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 7 * * *"),),
    ),
    DeploymentSpec(
        flow_name="contacts-sync",
        name="hourly",
        entrypoint="siyu.flows.contacts_sync.contacts_sync",
        description=(
            "Every hour on the hour: pull every employee's WeCom contacts and bind them to bank "
            "customers by the mobiles in their remarks."
        ),
        tags=("siyu", "contacts-sync"),
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 * * * *"),),
    ),
    DeploymentSpec(
        flow_name="sends-track",
        name="every-15-minutes",
        entrypoint="siyu.flows.sends_track.sends_track",
        description=(
            "Every 15 minutes: settle each created mass message from WeCom's send results "
            "(delivered, not a contact, capped), remind employees who have not confirmed, "
            "cancel what is past its send window, and send deferred messages whose time has come."
        ),
        tags=("siyu", "sends-track"),
        # Two trackers at once would both remind the same employee.
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="*/15 * * * *"),),
    ),
    DeploymentSpec(
        flow_name="path-enroll",
        name="daily",
        entrypoint="siyu.flows.conversion_path.path_enroll",
        description=(
            "Every day at 07:30 Beijing time, after the tag sync: evaluate every path member's "
            "goal on the newest accepted export, enter matching customers in no path into the "
            "day's cohorts (10 % holdout) and schedule each cohort's four path-touch runs. Run "
            "it by hand with dry_run to see who would enter, per path and manager. contacts-sync "
            "also starts a run of it (new_contacts) as soon as it binds new contacts, so their "
            "first touch comes right after they are added."
        ),
        tags=("siyu", "conversion-path"),
        # Two enrolments at once would put one customer in two cohorts.
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="30 7 * * *"),),
    ),
    DeploymentSpec(
        flow_name="path-touch",
        name="cohort-touch",
        entrypoint="siyu.flows.conversion_path.path_touch",
        description=(
            "One touch of one cohort: its runs are scheduled by path-enroll at the touch's due "
            "time. Run one by hand with a cohort id and a touch (1-4); a touch that already ran "
            "does nothing unless forced, and nobody is sent a touch twice."
        ),
        tags=("siyu", "conversion-path"),
        # Cohorts are disjoint (one path per customer), so their touches may run side by side.
        concurrency_limit=4,
    ),
    DeploymentSpec(
        flow_name="group-cadence",
        name="weekly",
        entrypoint="siyu.flows.group_cadence.group_cadence",
        description=(
            "The weekly group SOP: one schedule per slot of the default cadence template (Mon/Wed/"
            "Fri 10:00 posts, Tue/Thu 20:00 games, Fri 14:00 big activity), each carrying its slot. "
            "Run a slot by hand for one group (chat_ids) or all, with dry_run to preview."
        ),
        tags=("siyu", "group-cadence"),
        # Two runs of one slot would race on the ledger rows of the same (group, slot, week).
        concurrency_limit=1,
        schedules=tuple(
            ScheduleSpec(
                cron=f"{s.time.minute} {s.time.hour} * * {WEEKDAYS.index(s.weekday) + 1}",
                parameters={"slot": s.name},
                slug=s.name,
            )
            for s in default_slots()
        ),
    ),
    DeploymentSpec(
        flow_name="activity-winners",
        name="on-demand",
        entrypoint="siyu.flows.group_cadence.activity_winners",
        description=(
            "Winners of one activity, scheduled by its game slot at the announcement time: "
            "chosen by the script's rule from the entries, rewards granted within budget, "
            "the winners (masked) sent to the group owners to announce."
        ),
        tags=("siyu", "group-cadence"),
        concurrency_limit=2,
    ),
    DeploymentSpec(
        flow_name="join-hook",
        name="daily",
        entrypoint="siyu.flows.group_cadence.join_hook",
        description=(
            "Every day at 00:30: open the day's join-hook lottery in every group on the cadence "
            "template and draw the days that ended: each member who joined within 14 days and "
            "played wins once, paid 5 working days after the play by rewards-settle; members who "
            "joined and did not play get nothing."
        ),
        tags=("siyu", "group-cadence", "rewards"),
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="30 0 * * *"),),
    ),
    DeploymentSpec(
        flow_name="rewards-settle",
        name="daily",
        entrypoint="siyu.flows.group_cadence.rewards_settle",
        description=(
            "Every day at 10:00: pay each granted win whose pay day has come as an enterprise red "
            "packet, once per bill number; payouts a crash left unknown are asked about first."
        ),
        tags=("siyu", "group-cadence", "rewards"),
        # Money: never two settlements at once.
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 10 * * *"),),
    ),
    DeploymentSpec(
        flow_name="group-health",
        name="daily",
        entrypoint="siyu.flows.group_cadence.group_health",
        description=(
            "Every day at 09:00: members, joins and leaves, participation and message activity "
            "per group; dying groups (thresholds on the cadence template) listed and alerted."
        ),
        tags=("siyu", "group-cadence"),
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 9 * * *"),),
    ),
    DeploymentSpec(
        flow_name="weekly-report",
        name="monday",
        entrypoint="siyu.flows.weekly_report.weekly_report",
        description=(
            "Every Monday at 09:00 Beijing time: the management report of the week that just "
            "ended (customers, tags, touches and confirmation lag, conversions and uplift, AUM, "
            "groups, participation, rewards against budget), week over week, as a markdown "
            "artifact with charts and one table artifact per figure. Run it by hand with "
            "week_of for any week."
        ),
        tags=("siyu", "report"),
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 9 * * 1"),),
    ),
    DeploymentSpec(
        flow_name="housekeeping",
        name="daily",
        entrypoint="siyu.flows.housekeeping.housekeeping",
        description=(
            "Every day at 03:00 Beijing time: remove send-ledger, outbox and quarantine records "
            "older than their retention periods (the `periods` parameter: edit it on this "
            "deployment) and old Data Docs; unsettled rows stay whatever their age. Run it by "
            "hand with dry_run to count what would go."
        ),
        tags=("siyu", "housekeeping"),
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="0 3 * * *"),),
    ),
    DeploymentSpec(
        flow_name="ops-alerts",
        name="every-5-minutes",
        entrypoint="siyu.flows.ops_alerts.ops_alerts",
        description=(
            "Every five minutes, listening 285 s: queue each failed or crashed siyu run and each siyu.* "
            "event once, and post them to the ops robot as digests (at most 18 a minute), each "
            "with its next step and link."
        ),
        tags=("siyu", "ops"),
        # One flusher at a time: the robot's minute is counted in one place.
        concurrency_limit=1,
        schedules=(ScheduleSpec(cron="*/5 * * * *"),),
    ),
    *(
        DeploymentSpec(
            flow_name=name,
            name="on-demand",
            entrypoint=f"siyu.flows.ops_actions.{name.replace('-', '_')}",
            description=description,
            tags=("siyu", "ops-action"),
            concurrency_limit=1,
        )
        for name, description in (
            (
                "touch-rerun",
                "Rerun one touch of one cohort now (force: even if it ran); nobody is sent it "
                "twice.",
            ),
            (
                "message-cancel",
                "Cancel a mass message its employee has not confirmed; its sends fail 'cancelled'.",
            ),
            ("path-pause", "Pause a conversion path: its touches send nothing until resumed."),
            ("path-resume", "Resume a paused conversion path."),
            ("cadence-pause", "Pause one group's weekly cadence (by chat_id)."),
            ("cadence-resume", "Resume one group's weekly cadence."),
            ("payout-resend", "Resend a failed payout by bill number, after asking WeChat Pay."),
            ("tracking-rerun", "Run the sends tracker now, for a given time."),
        )
    ),
)

PREFECT_YAML_HEADER = """\
# siyu's production deployments, run by workers of the process work pool "siyu" on as many
# machines as needed. GENERATED from siyu/deployments/specs.py (the one list, which `siyu up`
# serves too): edit the list there, then `python -m siyu.deployments.specs > prefect.yaml`.
#
# `siyu deploy` (README, "How it scales") deploys this same table from code, after saving the
# blocks, rate limits and automations the runs need, with schedules paused: use it.
# `prefect deploy --all` from this directory deploys the deployments alone, schedules on.
# On each worker machine (siyu installed): PREFECT_API_URL=... prefect worker start --pool siyu
#
# Entrypoints are module paths of the installed package, so workers need siyu installed (pip
# install), not a checkout: there is nothing to build, push or pull. `pull` is an empty list,
# not null: null would make `prefect deploy` add a step that changes into the deploying
# machine's directory, which a worker machine does not have. Each run gets
# PREFECT_FLOWS_HEARTBEAT_FREQUENCY, so a run whose machine died is marked Crashed.
"""


def prefect_yaml(specs: tuple[DeploymentSpec, ...] = DEPLOYMENTS) -> str:
    """The text of prefect.yaml for `specs`."""
    import yaml

    document = {
        "name": "siyu",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [],
        "deployments": [spec.to_prefect_yaml() for spec in specs],
    }
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return PREFECT_YAML_HEADER + "\n" + body


if __name__ == "__main__":
    print(prefect_yaml(), end="")
