"""The TagRules block: a typed form, and a broken saved document refused in words on load."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate

from siyu.blocks.tag_rules import TagRules, TagRulesInvalid
from siyu.schemas.tag_rules import DEFAULT_RULES

NAME = "tag-rules-block-test"


@pytest.fixture
def saved(prefect_server):
    block = TagRules()
    block.save(NAME, overwrite=True)
    yield block._block_document_id
    with get_client(sync_client=True) as client:
        client.delete_block_document(block._block_document_id)


def _store(document_id, rule_set) -> None:
    with get_client(sync_client=True) as client:
        client.update_block_document(document_id, BlockDocumentUpdate(data={"rule_set": rule_set}))


def test_saved_rules_load_back(saved):
    assert TagRules.load(NAME).rule_set == DEFAULT_RULES


def test_a_kind_typo_is_refused_on_load_naming_the_rule(saved):
    data = DEFAULT_RULES.model_dump()
    data["rules"][3]["kind"] = "rnage"
    _store(saved, data)
    with pytest.raises(TagRulesInvalid) as caught:
        TagRules.load(NAME)
    message = str(caught.value)
    assert "rule 4 (group 代发工资): kind 'rnage' is not one of 'range', 'flag', 'value'" in message
    assert NAME in message and "Blocks page" in message
    assert "validate=False" not in message
    assert not isinstance(caught.value, ValueError)  # never mistaken for a missing block


def test_an_inverted_range_is_refused_on_load_in_words(saved):
    data = DEFAULT_RULES.model_dump()
    data["rules"][0]["tags"][0]["high"] = 0.0001
    data["rules"][0]["tags"][0]["low"] = 10
    _store(saved, data)
    with pytest.raises(TagRulesInvalid, match=r"rule 1 \(group 资产等级\): .*must be above"):
        TagRules.load(NAME)


def test_the_block_form_is_typed_fields_not_a_json_box():
    schema = TagRules.model_json_schema()
    rule_set = schema["definitions"]["TagRuleSet"]
    items = rule_set["properties"]["rules"]["items"]
    assert [ref["$ref"].rsplit("/", 1)[-1] for ref in items["oneOf"]] == [
        "RangeRule",
        "FlagRule",
        "ValueRule",
    ]
    for kind, model in (("range", "RangeRule"), ("flag", "FlagRule"), ("value", "ValueRule")):
        props = schema["definitions"][model]["properties"]
        assert props["kind"]["const"] == kind
        assert all(p.get("description") for p in props.values()), model
    assert schema["definitions"]["RangeTag"]["properties"]["low"]["minimum"] == 0
