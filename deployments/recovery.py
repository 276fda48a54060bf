"""Crash recovery without a hand: a crashed siyu run is run again once, on whichever worker is free.

A run is Crashed when its process or machine died: the heartbeat automation (alerts.py) marks a
silent run so, a worker marks a run whose process exited unexpectedly. One Prefect automation
answers each such event with Prefect's own RunDeployment action: the same deployment (inferred
from the event), the same parameters (templated from the crashed run), scheduled now, so any
worker of the pool picks it up. The outbox makes the rerun safe: what the crashed run sent is
not sent again, what it left unknown is reconciled first.

Once, never a loop. The rerun is created by this automation, and Prefect records that on the
run (`created_by`, shown in the UI as "created by automation ..."): that is its marker. When a
rerun crashes too, the parameter template sees the marker and renders a refusal instead of
parameters, so the action makes no run and says why in the automation's events. Ops hear of
both crashes through the alerts (alerts.py) and find the cause before running it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from siyu.deployments.specs import DEPLOYMENTS

if TYPE_CHECKING:
    from prefect.automations import Automation

RECOVERY = "siyu: run a crashed run once more"
RECOVERED_FLOWS = sorted({spec.flow_name for spec in DEPLOYMENTS})
# What the action reports (its failure reason) when a rerun crashed in turn. Short: Prefect's
# reason quotes the refused value only up to ~48 characters.
NOT_AGAIN = "the automatic rerun crashed too: left to ops"
# The crashed run's parameters as JSON, unless the run is this automation's own rerun: then a
# JSON string, which is no parameter set, so no run is made. `created_by` is the marker Prefect
# keeps on every run an automation made; `automation` is the automation that is acting.
_PARAMETERS_TEMPLATE = (
    "{% if flow_run.created_by and flow_run.created_by.id|string == automation.id|string %}"
    '"' + NOT_AGAIN + '"'
    "{% else %}{{ flow_run.parameters | tojson }}{% endif %}"
)
RERUN_PARAMETERS = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": _PARAMETERS_TEMPLATE},
}


def recovery_automation(flows: list[str] | None = None) -> Automation:
    """The automation that reruns, once, every crashed run of a deployment of `flows`.

    Only runs of a deployment are rerun (the action infers the deployment from the event; a
    run started from the command line has none and is only alerted).
    """
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=RECOVERY,
        description=(
            "A siyu run that crashed (its process or machine was lost) is run again once, with "
            "the same parameters, on any worker; a rerun that crashes too is only alerted."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=[
                ResourceSpecification(
                    {
                        "prefect.resource.role": "flow",
                        "prefect.resource.name": list(flows or RECOVERED_FLOWS),
                    }
                ),
                # Runs of a deployment only: there is nothing to rerun a CLI run with.
                ResourceSpecification({"prefect.resource.role": "deployment"}),
            ],
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[RunDeployment(source="inferred", parameters=RERUN_PARAMETERS)],
    )


def ensure_recovery(flows: list[str] | None = None) -> None:
    """Create the crash-recovery automation where the server has none; an edited one is kept."""
    from prefect.automations import Automation

    try:
        Automation.read(name=RECOVERY)
    except ValueError:
        recovery_automation(flows).create()
