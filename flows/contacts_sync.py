"""The hourly contacts sync: pull every employee's WeCom contacts and bind them to bank customers."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from siyu.blocks.environment import load_environment
from siyu.tasks.contacts import pull_and_store_contacts


@flow(name="contacts-sync", persist_result=False, log_prints=False)
def contacts_sync() -> State:
    """Pull every employee's external contacts from WeCom, with remark mobiles hashed and tags."""
    env = load_environment()
    stored = pull_and_store_contacts(env.wecom, env.database, env.export_source)
    return Completed(
        message=(
            f"{stored.pairs:,} contact pairs of {stored.employees} employees "
            f"({stored.pairs_with_mobile:,} with a remark mobile; {stored.new_pairs:,} new, "
            f"{stored.gone_pairs:,} gone)"
        ),
        data=stored.__dict__,
    )
