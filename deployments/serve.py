"""siyu's deployments as `serve()` runs them, and what a Prefect server needs before they run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from siyu.deployments.specs import DEPLOYMENTS, TIMEZONE

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "CONTACTS_SYNC_HOURLY",
    "DEPLOYMENT_NAMES",
    "TAG_SYNC_DAILY",
    "TIMEZONE",
    "deployments",
    "prepare_server",
    "serve_all",
]

TAG_SYNC_DAILY = "tag-sync/daily"
CONTACTS_SYNC_HOURLY = "contacts-sync/hourly"
DEPLOYMENT_NAMES: tuple[str, ...] = tuple(spec.full_name for spec in DEPLOYMENTS)


def deployments() -> list[RunnerDeployment]:
    """Every deployment siyu serves: the table in specs.py, as prefect.yaml declares it too."""
    return [spec.to_runner_deployment() for spec in DEPLOYMENTS]


def prepare_server() -> None:
    """Give a Prefect server (embedded or production) the dead-run detection siyu needs.

    Safe to repeat: what exists is kept.
    """
    from siyu.deployments.alerts import ensure_crash_detection

    ensure_crash_detection()


def serve_all(runner_deployments: list[RunnerDeployment] | None = None) -> None:
    """Serve every deployment (or the given ones) in this process until interrupted (blocks).

    PREFECT_API_URL must already point at the Prefect server.
    """
    from prefect import serve

    serve(*(deployments() if runner_deployments is None else runner_deployments))
