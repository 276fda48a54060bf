"""The conversion paths block: five default paths, and edits that make no sense are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from siyu.blocks.conversion_paths import (
    DEFAULT_PATHS,
    ConversionPath,
    ConversionPaths,
    EntryCondition,
    GoalCondition,
)


def test_the_default_block_has_five_paths_with_four_touches_at_0_2_9_20() -> None:
    block = ConversionPaths()
    assert len(block.paths) == 5
    for path in block.paths:
        assert [t.day_offset for t in path.touches] == [0, 2, 9, 20]
        assert path.send_window.start.isoformat() == "10:00:00"
        assert path.send_window.end.isoformat() == "11:30:00"
        assert path.holdout_share == 0.10
    assert {p.title for p in block.paths} >= {"代发稳健理财", "资产唤回", "新客礼遇"}
    assert len({p.priority for p in block.paths}) == 5
    assert block.products


def test_a_condition_on_an_unknown_field_is_refused_in_words() -> None:
    with pytest.raises(ValidationError, match="unknown field 'salary'"):
        EntryCondition(field="salary", op="ge", value=1)


def test_a_flag_is_tested_with_is_true_or_is_false() -> None:
    with pytest.raises(ValidationError, match="yes/no field"):
        EntryCondition(field="payroll", op="ge", value=1)
    with pytest.raises(ValidationError, match="needs a yes/no field"):
        GoalCondition(kind="turns_true", field="aum")


def test_touch_offsets_must_rise() -> None:
    data = DEFAULT_PATHS[0].model_dump()
    data["touches"][2]["day_offset"] = 1
    with pytest.raises(ValidationError, match="rise strictly"):
        ConversionPath.model_validate(data)


def test_touch_two_needs_its_plan_and_follow_up() -> None:
    data = DEFAULT_PATHS[0].model_dump()
    del data["touches"][1]["contents"]["detailed_plan"]
    with pytest.raises(ValidationError, match="touch 2 needs content for detailed_plan"):
        ConversionPath.model_validate(data)


def test_two_active_paths_cannot_share_a_priority() -> None:
    paths = [p.model_copy(deep=True) for p in DEFAULT_PATHS]
    paths[1].priority = paths[0].priority
    with pytest.raises(ValidationError, match="share a priority"):
        ConversionPaths(paths=paths)


def test_an_edit_changes_the_path_version() -> None:
    path = DEFAULT_PATHS[0].model_copy(deep=True)
    before = path.version()
    path.touches[0].contents["intro"].text = "新的开场白"
    assert path.version() != before


def test_a_path_is_not_paused_unless_ops_pause_it_and_the_form_says_what_pausing_does() -> None:
    assert not any(p.paused for p in ConversionPaths().paths)
    field = ConversionPath.model_fields["paused"]
    assert "send nothing" in field.description and "path paused by ops" in field.description
    paused = DEFAULT_PATHS[0].model_copy(deep=True)
    paused.paused = True
    assert paused.version() != DEFAULT_PATHS[0].version()  # the ledger sees which edit skipped
    assert ConversionPath.model_validate(paused.model_dump(mode="json")).paused
