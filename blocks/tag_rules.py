"""The TagRules block: the tag rule set as an ops-editable, typed form in the Prefect UI."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, ValidationError

from siyu.schemas.tag_rules import DEFAULT_RULES, TagRuleSet, rule_errors_in_words


class TagRulesInvalid(RuntimeError):
    """The saved tag rules do not validate; the message names the bad rule in words.

    Not a ValueError: Prefect says "no such block" with a ValueError, and a broken block must
    never be mistaken for a missing one.
    """


class TagRules(Block):
    """Which WeCom tags each bank customer gets. Load with `TagRules.load("siyu")`.

    Edit the rules in the UI's Blocks page: each rule is a range, flag or value rule with its
    own typed fields. The next tag sync applies them as a diff: tags no rule names any more are
    removed from every contact and then deleted from WeCom.
    """

    _block_type_name = "siyu Tag Rules"
    _block_type_slug = "siyu-tag-rules"
    _description = "Tag groups and tags siyu manages, and the export columns that decide them."

    rule_set: TagRuleSet = Field(
        default_factory=lambda: DEFAULT_RULES.model_copy(deep=True),
        title="Tag rules",
        description="The rules; siyu manages exactly the tag groups named here",
    )

    @classmethod
    def _load_from_block_document(cls, block_document: Any, validate: bool = True) -> TagRules:
        # Prefect answers a bad document with "Unable to load ... validate=False": say instead
        # which rule is wrong and where to fix it.
        try:
            return super()._load_from_block_document(block_document, validate=validate)
        except RuntimeError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            data = (block_document.data or {}).get("rule_set")
            raise TagRulesInvalid(
                f"the tag rules saved as {block_document.name!r} are invalid: "
                f"{_errors_in_words(data, exc.__cause__)} - fix them in the Blocks page "
                "(siyu Tag Rules) and rerun tag-sync"
            ) from None


def _errors_in_words(data: Any, exc: ValidationError) -> str:
    """The rule set's own errors (the block wraps them one level down, under rule_set)."""
    try:
        TagRuleSet.model_validate(data)
    except ValidationError as inner:
        return rule_errors_in_words(data, inner)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
