"""Winners by rule: first N correct by time, a seeded lottery, everyone who played; members only, once."""

from __future__ import annotations

import pandas as pd

from siyu.blocks.group_cadence import ActivityLibrary
from siyu.tasks.activities import choose_winners, members_frame, read_entries

T0 = pd.Timestamp("2026-12-08T12:00:00Z")
ARGS = dict(
    activity_key="weekly:tue-game:2026-W50",
    round_=0,
    opens_at=T0,
    closes_at=T0 + pd.Timedelta("45min"),
)


def entries(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [(m, c, a, T0 + pd.Timedelta(seconds=s)) for m, c, a, s in rows],
        columns=["external_userid", "chat_id", "answer", "time"],
    )


def quiz(**update):
    return ActivityLibrary().script("quiz").model_copy(update=update)


def test_first_correct_by_time_ties_by_member_id_members_only_and_in_window():
    members = members_frame({"wrA": ["m1", "m2", "m3", "m4", "m5"]})
    frame = entries([
        ("m3", "wrA", "b", 10), ("m2", "wrA", "b", 10),  # a tie: m2 before m3
        ("m1", "wrA", "a", 5),  # wrong
        ("x9", "wrA", "b", 1),  # not a member
        ("m4", "wrA", "b", 99_999),  # after the window
        ("m5", "wrA", "B ", 20),  # case and spaces do not matter
    ])  # fmt: skip
    winners, counts = choose_winners(frame, members, quiz(winners_per_round=2), **ARGS)
    assert winners["member"].tolist() == ["m2", "m3"]
    assert counts == {"entries": 6, "players": 4, "correct": 3}


def test_a_members_first_answer_counts_and_one_group_a_member():
    members = members_frame({"wrA": ["m1", "m2"], "wrB": ["m1", "m3"]})
    frame = entries([
        ("m1", "wrA", "a", 1), ("m1", "wrA", "b", 2),  # second guess ignored
        ("m1", "wrB", "b", 3),  # plays in wrA, where they answered first
        ("m2", "wrA", "b", 4), ("m3", "wrB", "b", 5),
    ])  # fmt: skip
    winners, _ = choose_winners(frame, members, quiz(), **ARGS)
    assert sorted(zip(winners["chat_id"], winners["member"], strict=True)) == [
        ("wrA", "m2"), ("wrB", "m3"),
    ]  # fmt: skip


def test_a_seeded_lottery_is_the_same_whatever_the_file_order_and_changes_with_the_seed():
    people = [f"m{i}" for i in range(30)]
    members = members_frame({"wrA": people})
    frame = entries([(m, "wrA", "b", i) for i, m in enumerate(people)])
    script = quiz(winner_rule="lottery", winners_per_round=5)
    first, _ = choose_winners(frame, members, script, **ARGS)
    shuffled, _ = choose_winners(frame.sample(frac=1, random_state=1), members, script, **ARGS)
    other, _ = choose_winners(frame, members, script.model_copy(update={"seed": 99}), **ARGS)
    assert first["member"].tolist() == shuffled["member"].tolist()
    assert first["member"].tolist() != other["member"].tolist()
    assert first["member"].tolist() != people[:5]  # not simply the earliest


def test_the_join_hook_takes_everyone_who_played():
    members = members_frame({"wrA": ["m1", "m2", "m3"]})
    frame = entries([("m1", "wrA", "7", 1), ("m2", "wrA", "anything", 2)])
    winners, _ = choose_winners(frame, members, ActivityLibrary().script("join-hook"), **ARGS)
    assert winners["member"].tolist() == ["m1", "m2"]


def test_entries_are_read_from_the_landing_csv_and_a_missing_file_is_no_entries(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("external_userid,chat_id,answer,time\nm1,wrA,b,2026-12-08T20:01:00+08:00\n")
    frame = read_entries(path)
    assert frame["time"].iloc[0] == pd.Timestamp("2026-12-08T12:01:00Z")
    assert read_entries(tmp_path / "none.csv").empty
