"""The hourly contacts sync: pull every employee's WeCom contacts and bind them to bank customers."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from siyu.blocks.environment import load_environment
from siyu.tasks.contacts import pull_and_store_contacts


@flow(name="contacts-sync", persist_result=False, log_prints=False)
def contacts_sync() -> State:
    """Pull every employee's external contacts from WeCom, with remark mobiles hashed and tags."""
    # Blocks load on first use: this flow never reads env.tag_rules, so a bad edit of the tag
    # rules stops tag-sync alone, never the contacts sync.
    env = load_environment()
    # No exclusive hold on contact state: contacts are upserted, and tag changes a push settles
    # while this pull runs are re-applied after it (store_contacts), so both may run at once.
    stored = pull_and_store_contacts(env.wecom, env.database, env.export_source)
    return Completed(
        message=(
            f"{stored.pairs:,} contact pairs of {stored.employees} employees "
            f"({stored.pairs_with_mobile:,} with a remark mobile; {stored.new_pairs:,} new, "
            f"{stored.gone_pairs:,} gone)"
        ),
        data=stored.__dict__,
    )
