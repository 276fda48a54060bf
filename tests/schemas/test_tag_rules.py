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
