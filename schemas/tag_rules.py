"""Tag rules as data: which WeCom tags a bank customer should carry, editable without code."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# WeCom caps tag and tag-group names (reported 30 characters; keep it here, in one place).
NAME_MAX = 30
# Desired and synced tags are compared as bit sets (one bit per managed tag), see tasks/tagging.py.
MAX_MANAGED_TAGS = 64

# A yuan amount no bank customer reaches: a typo with three zeros too many is refused.
MAX_YUAN = 1e12

TagName = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX, description="WeCom tag name, 1-30 characters")
]
GroupName = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX, description="WeCom tag group the tags live in"),
]


class RangeTag(BaseModel):
    """A tag for values in [low, high): high None means no upper bound."""

    model_config = ConfigDict(title="Range tag", extra="forbid")

    name: TagName
    low: float = Field(ge=0, le=MAX_YUAN, description="Inclusive lower bound, yuan")
    high: float | None = Field(
        default=None, gt=0, le=MAX_YUAN, description="Exclusive upper bound, yuan; empty = open"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RangeTag:
        if self.high is not None and self.high <= self.low:
            raise ValueError(f"tag {self.name}: high ({self.high}) must be above low ({self.low})")
        return self


class RangeRule(BaseModel):
    """Tags by a money column: each customer gets the tags whose ranges hold the value."""

    model_config = ConfigDict(title="Range rule (by an amount)", extra="forbid")

    kind: Literal["range"] = Field(default="range", description="Rule kind: range")
    group: GroupName
    field: Literal["aum", "aum_peak"] = Field(description="Export column the ranges apply to")
    tags: list[RangeTag] = Field(min_length=1, description="One tag per range")


class FlagTag(BaseModel):
    """A tag carried when a product or payroll flag is set."""

    model_config = ConfigDict(title="Flag tag", extra="forbid")

    name: TagName
    field: Literal[
        "payroll",
        "holds_wealth",
        "holds_fund",
        "holds_insurance",
        "holds_loan",
        "holds_credit_card",
    ] = Field(description="Yes/no export column that sets the tag")


class FlagRule(BaseModel):
    """Tags by yes/no columns: one tag per flag that is set."""

    model_config = ConfigDict(title="Flag rule (by yes/no columns)", extra="forbid")

    kind: Literal["flag"] = Field(default="flag", description="Rule kind: flag")
    group: GroupName
    tags: list[FlagTag] = Field(min_length=1, description="One tag per flag column")


class ValueTag(BaseModel):
    """A tag carried when a column holds one exact value."""

    model_config = ConfigDict(title="Value tag", extra="forbid")

    name: TagName
    value: str = Field(min_length=1, description="The value as the export writes it, e.g. 直营")


class ValueRule(BaseModel):
    """Tags by a categorical column (customer class, branch)."""

    model_config = ConfigDict(title="Value rule (by a category)", extra="forbid")

    kind: Literal["value"] = Field(default="value", description="Rule kind: value")
    group: GroupName
    field: Literal["customer_class", "branch_code"] = Field(
        description="Export column whose value sets the tag"
    )
    tags: list[ValueTag] = Field(min_length=1, description="One tag per value")


TagRule = Annotated[RangeRule | FlagRule | ValueRule, Field(discriminator="kind")]


class TagRuleSet(BaseModel):
    """The whole rule set. siyu manages exactly the tag groups named here and no others."""

    model_config = ConfigDict(title="Tag rules", extra="forbid")

    rules: list[TagRule] = Field(
        min_length=1, description="Each rule: a kind (range, flag or value), a group and its tags"
    )

    @model_validator(mode="after")
    def _names_unique(self) -> TagRuleSet:
        seen: set[tuple[str, str]] = set()
        for rule in self.rules:
            for tag in rule.tags:
                key = (rule.group, tag.name)
                if key in seen:
                    raise ValueError(f"tag {tag.name} appears twice in group {rule.group}")
                seen.add(key)
        if len(seen) > MAX_MANAGED_TAGS:
            raise ValueError(f"{len(seen)} tags: siyu manages at most {MAX_MANAGED_TAGS}")
        return self

    def managed_tags(self) -> list[tuple[str, str]]:
        """(group, tag) of every managed tag, in rule order: the bit order of tag sets."""
        return [(rule.group, tag.name) for rule in self.rules for tag in rule.tags]

    def groups(self) -> list[str]:
        """Managed tag group names, in order, without repeats."""
        return list(dict.fromkeys(rule.group for rule in self.rules))


def rule_errors_in_words(data: Any, exc: ValidationError) -> str:
    """A rule set's validation errors as ops read them: which rule, which field, what is wrong.

    "rule 2 (group 资产等级): kind 'rnage' is not one of 'range', 'flag', 'value'".
    """
    rules = data.get("rules") if isinstance(data, dict) else None
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = "the rule set"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
            group = rule.get("group") if isinstance(rule, dict) else None
            where = f"rule {index + 1}" + (f" (group {group})" if group else "")
            loc = loc[2:]
            if loc and loc[0] in ("range", "flag", "value"):
                loc = loc[1:]  # the union's branch name, already implied by the rule's kind
        words = [
            f"tag {p + 1}" if isinstance(p, int) else str(p)
            for i, p in enumerate(loc)
            if not (p == "tags" and i + 1 < len(loc) and isinstance(loc[i + 1], int))
        ]
        path = " ".join(words)
        if error["type"] == "union_tag_invalid":
            ctx = error.get("ctx", {})
            what = f"kind {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
        elif error["type"] == "union_tag_not_found":
            what = "it has no kind (one of 'range', 'flag', 'value')"
        else:
            what = error["msg"][0].lower() + error["msg"][1:]
        lines.append(f"{where}: {path + ': ' if path else ''}{what}")
    return "; ".join(lines)


WAN = 10_000.0  # 万: ten thousand yuan

DEFAULT_RULES = TagRuleSet(
    rules=[
        RangeRule(
            group="资产等级",
            field="aum",
            tags=[
                RangeTag(name="资产5万以下", low=0, high=5 * WAN),
                RangeTag(name="资产5万-20万", low=5 * WAN, high=20 * WAN),
                RangeTag(name="资产20万-100万", low=20 * WAN, high=100 * WAN),
                RangeTag(name="资产100万以上", low=100 * WAN),
            ],
        ),
        RangeRule(
            group="历史资产",
            field="aum_peak",
            tags=[RangeTag(name="历史资产10万以上", low=10 * WAN)],
        ),
        ValueRule(
            group="客户类别",
            field="customer_class",
            tags=[ValueTag(name="直营客户", value="直营"), ValueTag(name="代工客户", value="代工")],
        ),
        FlagRule(group="代发工资", tags=[FlagTag(name="代发工资客户", field="payroll")]),
        FlagRule(
            group="持有产品",
            tags=[
                FlagTag(name="理财", field="holds_wealth"),
                FlagTag(name="基金", field="holds_fund"),
                FlagTag(name="保险", field="holds_insurance"),
                FlagTag(name="贷款", field="holds_loan"),
                FlagTag(name="信用卡", field="holds_credit_card"),
            ],
        ),
    ]
)
