"""Crash recovery: a crashed run of a deployment is run again once, with its parameters; never twice."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect import flow

from siyu.deployments import recovery
from siyu.deployments.specs import DEPLOYMENTS

FLOW_NAME = "siyu-test-recovered"
T = TypeVar("T")


@flow(name=FLOW_NAME, persist_result=False)
def recovered(cohort: int, touch: int = 1, note: str = "", dry_run: bool = False) -> None:
    """Never run here: the test only needs its deployment, whose runs nobody picks up."""


def _delete_recovery() -> None:
    from prefect.automations import Automation

    with contextlib.suppress(ValueError):
        Automation.read(name=recovery.RECOVERY).delete()


@pytest.fixture
def clean_recovery(prefect_server) -> Iterator[None]:
    _delete_recovery()
    yield
    _delete_recovery()


def _wait(what: Callable[[], T], timeout: float, describe: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {describe}")


def test_ensure_recovery_creates_one_automation_rerunning_every_deployed_flow(
    clean_recovery,
) -> None:
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment

    recovery.ensure_recovery()
    recovery.ensure_recovery()  # kept, not doubled

    automation = Automation.read(name=recovery.RECOVERY)
    trigger = automation.trigger
    assert trigger.expect == {"prefect.flow-run.Crashed"}
    flows_spec, deployment_spec = trigger.match_related
    assert set(flows_spec["prefect.resource.name"]) == {spec.flow_name for spec in DEPLOYMENTS}
    assert deployment_spec["prefect.resource.role"] == ["deployment"]
    (action,) = automation.actions
    assert isinstance(action, RunDeployment)
    assert action.source == "inferred"
    assert action.parameters == recovery.RERUN_PARAMETERS


def _runs_of(client: Any, deployment_id: UUID) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def _refusals(client: Any, automation_id: UUID) -> list[Any]:
    """The recovery automation's failed actions (a refusal to rerun a rerun is one)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(
        limit=50,
        filter=EventFilter(
            event=EventNameFilter(name=["prefect.automation.action.failed"]),
            resource=EventResourceFilter(id=[f"prefect.automation.{automation_id}"]),
        ),
    )
    return page.events


def test_a_crashed_run_is_run_again_once_and_a_crashed_rerun_is_not(clean_recovery) -> None:
    from prefect import get_client
    from prefect.automations import Automation
    from prefect.states import Crashed

    recovery.recovery_automation(flows=[FLOW_NAME]).create()
    automation = Automation.read(name=recovery.RECOVERY)
    deployment_id = recovered.to_deployment(name="recovery-test").apply()
    parameters = {"cohort": 7, "touch": 3, "note": "周一 <b>&'\"", "dry_run": True}
    with get_client(sync_client=True) as client:
        original = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        client.set_flow_run_state(original.id, Crashed(message="lost its machine"), force=True)

        reruns = _wait(
            lambda: [r for r in _runs_of(client, deployment_id) if r.id != original.id],
            60,
            "the automation to run the crashed run's deployment again",
        )
        (rerun,) = reruns
        assert rerun.parameters == parameters  # the same run, types and all
        assert rerun.state.is_scheduled()  # any worker of the pool takes it now
        # The marker: Prefect keeps who made the run, and the UI shows it.
        assert rerun.created_by is not None
        assert rerun.created_by.type == "AUTOMATION"
        assert rerun.created_by.id == automation.id

        client.set_flow_run_state(rerun.id, Crashed(message="lost again"), force=True)
        (refusal,) = _wait(
            lambda: _refusals(client, automation.id),
            60,
            "the automation to refuse a rerun of its own rerun",
        )
        assert recovery.NOT_AGAIN in refusal.payload["reason"]
        # It refused rather than made a third run: the crash is left to ops (and the alert).
        assert {r.id for r in _runs_of(client, deployment_id)} == {original.id, rerun.id}
