"""The hourly contacts sync: pull every employee's WeCom contacts and bind them to bank customers."""

from __future__ import annotations

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.states import Completed, State

from siyu.blocks.environment import load_environment
from siyu.tasks.contacts import CONTACT_STATE_LIMIT, pull_and_store_contacts


@flow(name="contacts-sync", persist_result=False, log_prints=False)
def contacts_sync() -> State:
    """Pull every employee's external contacts from WeCom, with remark mobiles hashed and tags."""
    env = load_environment()
    # Never while a tag push runs. A killed holder's 60 s lease lapses and the server frees it.
    with concurrency(CONTACT_STATE_LIMIT, occupy=1, lease_duration=60):
        stored = pull_and_store_contacts(env.wecom, env.database, env.export_source)
    return Completed(
        message=(
            f"{stored.pairs:,} contact pairs of {stored.employees} employees "
            f"({stored.pairs_with_mobile:,} with a remark mobile; {stored.new_pairs:,} new, "
            f"{stored.gone_pairs:,} gone)"
        ),
        data=stored.__dict__,
    )
