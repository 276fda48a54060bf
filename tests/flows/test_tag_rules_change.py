"""Changing the tag rules: a re-band leaves no old tag anywhere; a bad edit stops only tag-sync."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from sqlalchemy.orm import Session

from siyu.blocks.environment import BLOCK_NAME
from siyu.blocks.tag_rules import TagRules
from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import tag_sync
from siyu.schemas.models import ManagedTag, OutboxEntry
from siyu.schemas.tag_rules import DEFAULT_RULES, WAN, RangeTag, TagRuleSet
from tests.flows.conftest import DAY
from tests.flows.test_tag_sync import bound_pairs, expected_tags, tags_by_pair

OLD, LOW, HIGH = "资产20万-100万", "资产20万-50万", "资产50万-100万"


def rebanded_rules() -> TagRuleSet:
    """The default rules with the 20万-100万 tier split at 50万."""
    rules = DEFAULT_RULES.model_copy(deep=True)
    tiers = rules.rules[0]
    assert tiers.group == "资产等级"
    tiers.tags = [t for t in tiers.tags if t.name != OLD] + [
        RangeTag(name=LOW, low=20 * WAN, high=50 * WAN),
        RangeTag(name=HIGH, low=50 * WAN, high=100 * WAN),
    ]
    return TagRuleSet.model_validate(rules.model_dump())


def rebanded_tags(row) -> set[str]:
    """The oracle of the re-banded rules, written out independently of siyu."""
    tags = expected_tags(row)
    if OLD in tags:
        tags = (tags - {OLD}) | {LOW if float(row.aum) < 500_000 else HIGH}
    return tags


@pytest.fixture
def saved_rules(prefect_server) -> Iterator:
    """Save tag rules as ops do (the block `siyu`); removed again after the test."""
    saved: list = []

    def save(block: TagRules):
        block.save(BLOCK_NAME, overwrite=True)
        saved.append(block._block_document_id)
        return block._block_document_id

    yield save
    with get_client(sync_client=True) as client:
        for document_id in set(saved):
            client.delete_block_document(document_id)


def tag_ids(system) -> dict[str, str]:
    """Live managed tag name -> id, as WeCom lists them."""
    with system.client() as client:
        return {t.name: t.id for g in client.get_corp_tag_list() for t in g.tag}


def test_a_rebanded_tier_is_previewed_then_leaves_no_contact_with_the_old_tag(system, saved_rules):
    assert contacts_sync(return_state=True).is_completed()
    assert tag_sync(business_date=DAY, return_state=True).is_completed()
    old_id = tag_ids(system)[OLD]
    pairs = bound_pairs(system)
    export = system.export_frame().set_index("customer_id")
    carriers = [p for p, c in pairs.items() if OLD in expected_tags(export.loc[c])]
    assert len(carriers) > 10
    # A contact who is no customer of this export but carries the old tag (siyu set it while
    # they were one): it must lose the tag too.
    stranger = sorted(set(tags_by_pair(system)) - set(pairs))[0]
    with system.client() as client:
        client.mark_tag(*stranger, add_tag=[old_id])
    assert contacts_sync(return_state=True).is_completed()
    saved_rules(TagRules(rule_set=rebanded_rules()))

    # Preview: what the new rules would change on the export already synced; nothing sent.
    calls = system.sandbox.stats()["calls"]
    with Session(system.engine()) as session:
        stored = session.scalars(sa.select(ManagedTag.tag_name)).all()
        entries = session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry))
    preview = tag_sync(business_date=DAY, dry_run=True, return_state=True)
    assert preview.is_completed(), preview.message
    assert "would change" in preview.message and "retired" in preview.message
    assert preview.result()["pairs_changed"] == len(carriers) + 1
    assert system.sandbox.stats()["calls"].get("externalcontact/mark_tag") == calls.get(
        "externalcontact/mark_tag"
    )
    assert "externalcontact/add_corp_tag" not in set(system.sandbox.stats()["calls"]) - set(calls)
    with Session(system.engine()) as session:
        assert session.scalars(sa.select(ManagedTag.tag_name)).all() == stored
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry)) == entries

    # The real run, on the next export (a synced export stays synced; new rules apply to the
    # next one): new tiers added, the old one removed from every contact, then deleted.
    state = _sync_new_export(system, "core_export_20261124_v2.csv", 0)
    assert state.is_completed(), state.message
    assert state.result()["tags_retired"] == [f"资产等级/{OLD}"]
    assert OLD not in tag_ids(system)
    assert not [p for p in system.sandbox.all_contact_tags() if old_id in p["tag_ids"]]
    after = tags_by_pair(system)
    for pair, customer in pairs.items():
        assert after[pair][0] == rebanded_tags(export.loc[customer]), pair
        assert (
            len(after[pair][0] & {"资产5万以下", "资产5万-20万", LOW, HIGH, "资产100万以上"}) == 1
        )
    removed = [
        r
        for r in system.sandbox.requests(api="externalcontact/mark_tag")
        if old_id in (r["params"].get("remove_tag") or []) and r["errcode"] == 0
    ]
    assert len(removed) == len(carriers) + 1  # taken off each contact before the delete
    with Session(system.engine()) as session:
        assert OLD not in session.scalars(sa.select(ManagedTag.tag_name)).all()
    again = _sync_new_export(system, "core_export_20261124_v3.csv", 1)
    assert again.is_completed() and again.result()["pairs_changed"] == 0
    assert again.result()["tags_retired"] == []


def _sync_new_export(system, name: str, row: int):
    """The day's export again as a new file: one name changed, so the checksum differs."""
    from siyu.sandbox.export_files import write_export

    export = system.export_frame()
    export.loc[row, "name"] = export.loc[row, "name"] + "x"
    path = write_export(export, system.landing / name)
    return tag_sync(export_file=str(path), business_date=DAY, return_state=True)


def save_broken_rules(saved_rules) -> None:
    """What ops did: a typo in a rule's kind, saved through the API (the UI stored it too)."""
    document_id = saved_rules(TagRules())
    data = DEFAULT_RULES.model_dump()
    data["rules"][0]["kind"] = "rnage"
    with get_client(sync_client=True) as client:
        client.update_block_document(document_id, BlockDocumentUpdate(data={"rule_set": data}))


def test_a_bad_rules_edit_stops_tag_sync_in_words_and_never_contacts_sync(system, saved_rules):
    from siyu.schemas.models import Export

    save_broken_rules(saved_rules)
    assert contacts_sync(return_state=True).is_completed()
    state = tag_sync(business_date=DAY, return_state=True)
    assert state.is_failed()
    assert "rule 1 (group 资产等级): kind 'rnage' is not one of" in state.message
    assert "Blocks page" in state.message and "validate=False" not in state.message
    with Session(system.engine()) as session:  # stopped before the export was touched
        assert session.scalar(sa.select(sa.func.count()).select_from(Export)) == 0
    assert system.mark_tag_calls() == 0
