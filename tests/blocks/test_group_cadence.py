"""The cadence playbooks: the default template, validation ops can read, and the scripts' defaults."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from siyu.blocks.group_cadence import (
    ActivityLibrary,
    ActivityScript,
    CadenceTemplate,
    EntriesSource,
    GroupOverride,
    Promotion,
    Question,
    Slot,
)


def test_the_default_template_is_the_weekly_sop():
    template = CadenceTemplate()
    kinds = {(s.weekday, s.time.hour, s.kind) for s in template.slots}
    assert kinds == {
        ("mon", 10, "product_post"), ("wed", 10, "product_post"), ("fri", 10, "product_post"),
        ("tue", 20, "game"), ("thu", 20, "game"), ("fri", 14, "big_activity"),
    }  # fmt: skip
    assert all(s.delivery == "employee_reminder" for s in template.slots)
    assert all(s.place_product for s in template.slots if s.kind != "product_post")
    library = ActivityLibrary()
    for slot in template.slots:
        if slot.activity:
            assert library.script(slot.activity).winners_per_round >= 1


def test_the_default_scripts_pay_5_to_10_yuan_and_the_join_hook_pays_5_working_days_later():
    library = ActivityLibrary()
    assert all(100 <= s.reward_fen <= 1000 for s in library.scripts)
    hook = library.script("join-hook")
    assert (hook.winner_rule, hook.pay_after_working_days) == ("all_players", 5)
    assert library.script("quiz").winners_per_round == 5


def test_validation_says_what_is_wrong():
    with pytest.raises(ValidationError, match="needs an activity script"):
        Slot(name="tue-game", weekday="tue", time=dt.time(20), kind="game")
    with pytest.raises(ValidationError, match="unknown slots"):
        CadenceTemplate(overrides=[GroupOverride(chat_id="wr1", skip=["sun-brunch"])])
    with pytest.raises(ValidationError, match="not one of the options"):
        Question(text="?", options=["a", "b"], answer="c")
    with pytest.raises(ValidationError, match="ends before it starts"):
        Promotion(
            id="p", title="t", content="c", start=dt.date(2026, 2, 1), end=dt.date(2026, 1, 1)
        )
    with pytest.raises(ValidationError):
        ActivityScript(name="big", kind="quiz", reward_fen=50)  # WeChat Pay pays 1 yuan at least


def test_a_template_chooses_groups_by_owner_and_name_pattern():
    template = CadenceTemplate(owners=["mgr001"], name_patterns=["*信用卡*"])
    assert template.follows("mgr001", "王经理的信用卡福利群")
    assert not template.follows("mgr002", "李经理的信用卡福利群")
    assert not template.follows("mgr001", "理财群")


def test_entries_land_one_file_per_activity_round(tmp_path):
    source = EntriesSource(landing_dir=str(tmp_path))
    assert source.path_for("weekly:fri-big:2026-W50", 2).endswith(
        "entries-weekly_fri-big_2026-W50-r2.csv"
    )


def test_ops_pause_a_group_with_an_override_that_says_what_it_does():
    field = GroupOverride.model_fields["paused"]
    assert field.default is False
    assert field.description == (
        "Paused by ops: every slot of this group is recorded skipped with reason "
        "'group paused by ops'"
    )
    template = CadenceTemplate(overrides=[GroupOverride(chat_id="wr1", paused=True),
                                          GroupOverride(chat_id="wr2", skip=["mon-post"])])  # fmt: skip
    assert template.paused() == {"wr1"}


def test_the_join_hook_is_a_daily_lottery_each_member_wins_once():
    hook = ActivityLibrary().script("join-hook")
    assert hook.once_per_member and hook.window_minutes == 24 * 60
    assert not any(s.once_per_member for s in ActivityLibrary().scripts if s.name != "join-hook")
    # A hook saved before the field existed is still won once per member.
    saved = hook.model_dump(exclude={"once_per_member"})
    assert ActivityScript.model_validate(saved).once_per_member
