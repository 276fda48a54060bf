"""The rule set is data: validated so that a bad edit is refused with a clear reason."""

import pytest
from pydantic import ValidationError

from siyu.schemas.tag_rules import DEFAULT_RULES, TagRuleSet


def test_default_rules_cover_the_issue():
    assert DEFAULT_RULES.groups() == ["资产等级", "历史资产", "客户类别", "代发工资", "持有产品"]
    assert len(DEFAULT_RULES.managed_tags()) == 13


def test_round_trips_through_json():
    assert TagRuleSet.model_validate_json(DEFAULT_RULES.model_dump_json()) == DEFAULT_RULES


@pytest.mark.parametrize(
    "rule, reason",
    [
        (
            {
                "kind": "range",
                "group": "g",
                "field": "aum",
                "tags": [{"name": "t", "low": 5, "high": 1}],
            },
            "must be above",
        ),
        (
            {"kind": "flag", "group": "g", "tags": [{"name": "x" * 31, "field": "payroll"}]},
            "at most 30",
        ),
        (
            {
                "kind": "flag",
                "group": "g",
                "tags": [{"name": "t", "field": "payroll"}, {"name": "t", "field": "holds_fund"}],
            },
            "twice",
        ),
        (
            {
                "kind": "value",
                "group": "g",
                "field": "mobile",
                "tags": [{"name": "t", "value": "1"}],
            },
            "customer_class",
        ),
    ],
)
def test_bad_rules_are_refused(rule, reason):
    with pytest.raises(ValidationError, match=reason):
        TagRuleSet.model_validate({"rules": [rule]})


def test_a_kind_typo_is_named_in_words_with_its_rule_and_group():
    from siyu.schemas.tag_rules import rule_errors_in_words

    data = DEFAULT_RULES.model_dump()
    data["rules"][0]["kind"] = "rnage"
    with pytest.raises(ValidationError) as caught:
        TagRuleSet.model_validate(data)
    words = rule_errors_in_words(data, caught.value)
    assert words == "rule 1 (group 资产等级): kind 'rnage' is not one of 'range', 'flag', 'value'"


def test_bounds_and_unknown_fields_are_refused_in_words():
    from siyu.schemas.tag_rules import rule_errors_in_words

    data = DEFAULT_RULES.model_dump()
    data["rules"][0]["tags"][1]["low"] = -5
    data["rules"][3]["colour"] = "red"  # a field no rule kind has: a typo, not ignored
    with pytest.raises(ValidationError) as caught:
        TagRuleSet.model_validate(data)
    words = rule_errors_in_words(data, caught.value)
    assert "rule 1 (group 资产等级): tag 2 low: input should be greater than or equal to 0" in words
    assert "rule 4 (group 代发工资): colour: extra inputs are not permitted" in words


def test_the_form_schema_offers_the_rule_kinds_as_typed_choices():
    schema = TagRuleSet.model_json_schema()
    rules = schema["properties"]["rules"]["items"]
    assert rules["discriminator"]["propertyName"] == "kind"
    kinds = {
        schema["$defs"][ref["$ref"].split("/")[-1]]["properties"]["kind"]["const"]
        for ref in rules["oneOf"]
    }
    assert kinds == {"range", "flag", "value"}
    range_tag = schema["$defs"]["RangeTag"]["properties"]
    assert range_tag["low"]["minimum"] == 0 and "maximum" in range_tag["low"]
    assert schema["$defs"]["RangeRule"]["properties"]["field"]["enum"] == ["aum", "aum_peak"]
