"""The TagRules block: the tag rule set as an ops-editable document in the Prefect UI."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from siyu.schemas.tag_rules import DEFAULT_RULES, TagRuleSet


class TagRules(Block):
    """Which WeCom tags each bank customer gets. Load with `TagRules.load("siyu")`.

    Edit the rules in the UI's Blocks page; the next tag sync applies them (as a diff).
    """

    _block_type_name = "siyu Tag Rules"
    _block_type_slug = "siyu-tag-rules"
    _description = "Tag groups and tags siyu manages, and the export columns that decide them."

    rule_set: TagRuleSet = Field(
        default_factory=lambda: DEFAULT_RULES.model_copy(deep=True),
        description="The rules; siyu manages exactly the tag groups named here",
    )
