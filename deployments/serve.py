"""siyu's deployments (schedules, limits, tags) and `serve()` of all of them in one process."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

# The bank's operations run on Beijing time; a Cron without a time zone would run in UTC.
TIMEZONE = "Asia/Shanghai"
TAG_SYNC_DAILY = "tag-sync/daily"
CONTACTS_SYNC_HOURLY = "contacts-sync/hourly"
DEPLOYMENT_NAMES: tuple[str, ...] = (TAG_SYNC_DAILY, CONTACTS_SYNC_HOURLY)


def deployments() -> list[RunnerDeployment]:
    """Every deployment siyu serves, the same ones prefect.yaml declares for a work pool."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from siyu.flows.contacts_sync import contacts_sync
    from siyu.flows.tag_sync import tag_sync

    # Module-path entrypoints keep working under a normal (non-editable) install, where a
    # file-path entrypoint would point into site-packages.
    return [
        tag_sync.to_deployment(
            name="daily",
            schedules=[Cron("0 7 * * *", timezone=TIMEZONE)],
            # Two syncs of one export at once would race on the outbox and the synced state.
            concurrency_limit=1,
            tags=["siyu", "tag-sync"],
            description=(
                "Every day at 07:00 Beijing time: gate the newest core-banking export, compute "
                "each contact's tags and push only the difference to WeCom. Run it by hand with "
                "dry_run to preview the changes."
            ),
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        contacts_sync.to_deployment(
            name="hourly",
            schedules=[Cron("0 * * * *", timezone=TIMEZONE)],
            concurrency_limit=1,
            tags=["siyu", "contacts-sync"],
            description=(
                "Every hour on the hour: pull every employee's WeCom contacts and bind them to "
                "bank customers by the mobiles in their remarks."
            ),
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]


def ensure_concurrency_limits() -> None:
    """Create the global concurrency limits the flows hold, where the server has none yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    from siyu.tasks.contacts import CONTACT_STATE_LIMIT

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(CONTACT_STATE_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=CONTACT_STATE_LIMIT, limit=1)
            )


def serve_all(runner_deployments: list[RunnerDeployment] | None = None) -> None:
    """Serve every deployment (or the given ones) in this process until interrupted (blocks).

    PREFECT_API_URL must already point at the Prefect server.
    """
    from prefect import serve

    serve(*(deployments() if runner_deployments is None else runner_deployments))
