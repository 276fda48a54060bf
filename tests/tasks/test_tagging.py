"""Rules evaluated over a frame, and the diff of desired against synced tag sets."""

import numpy as np
import pandas as pd

from siyu.schemas.tag_rules import DEFAULT_RULES
from siyu.tasks.tagging import (
    bits_to_positions,
    count_bits,
    desired_tag_bits,
    diff_tags,
    positions_to_bits,
)

TAGS = DEFAULT_RULES.managed_tags()


def names(bits) -> set[str]:
    return {TAGS[i][1] for i in bits_to_positions(bits)}


def frame(**cols):
    n = len(next(iter(cols.values())))
    base = {
        "aum": [0.0] * n,
        "aum_peak": [0.0] * n,
        "customer_class": ["直营"] * n,
        "branch_code": ["BR001"] * n,
    }
    for flag in (
        "payroll",
        "holds_wealth",
        "holds_fund",
        "holds_insurance",
        "holds_loan",
        "holds_credit_card",
    ):
        base[flag] = pd.array([False] * n, dtype="boolean")
    base.update(cols)
    return pd.DataFrame(base)


def test_aum_tiers_are_half_open_ranges():
    f = frame(aum=[0.0, 49_999.99, 50_000.0, 199_999.0, 200_000.0, 999_999.99, 1_000_000.0, 5e7])
    tiers = [
        names(b) & {t for g, t in TAGS if g == "资产等级"}
        for b in desired_tag_bits(f, DEFAULT_RULES)
    ]
    assert tiers == [
        {"资产5万以下"},
        {"资产5万以下"},
        {"资产5万-20万"},
        {"资产5万-20万"},
        {"资产20万-100万"},
        {"资产20万-100万"},
        {"资产100万以上"},
        {"资产100万以上"},
    ]


def test_history_peak_class_payroll_and_products():
    f = frame(
        aum_peak=[99_999.0, 100_000.0],
        customer_class=["直营", "代工"],
        payroll=pd.array([True, False], dtype="boolean"),
        holds_fund=pd.array([False, True], dtype="boolean"),
        holds_credit_card=pd.array([True, True], dtype="boolean"),
    )
    first, second = desired_tag_bits(f, DEFAULT_RULES)
    assert names(first) == {"资产5万以下", "直营客户", "代发工资客户", "信用卡"}
    assert names(second) == {"资产5万以下", "历史资产10万以上", "代工客户", "基金", "信用卡"}


def test_unknown_values_give_no_tag():
    f = frame(aum=[np.nan], customer_class=[None], payroll=pd.array([None], dtype="boolean"))
    assert names(desired_tag_bits(f, DEFAULT_RULES)[0]) == set()


def test_bits_round_trip():
    assert bits_to_positions(positions_to_bits([0, 3, 63])) == [0, 3, 63]


def pairs_frame(rows):
    return pd.DataFrame(
        rows, columns=["userid", "external_userid", "customer_id", "desired"]
    ).astype({"desired": np.uint64})


def synced_frame(rows):
    return pd.DataFrame(rows, columns=["userid", "external_userid", "bits"]).astype(
        {"bits": np.uint64}
    )


def test_diff_adds_removes_and_skips_unchanged():
    pairs = pairs_frame(
        [
            ("u1", "wm1", "C1", 0b0110),  # had 0b0011: add bit 2, remove bit 0
            ("u1", "wm2", "C2", 0b0001),  # unchanged
            ("u2", "wm1", "C1", 0b0110),  # no synced row yet: add both
        ]
    )
    synced = synced_frame([("u1", "wm1", 0b0011), ("u1", "wm2", 0b0001), ("u9", "wm9", 0b1)])
    diff = diff_tags(pairs, synced, 4)
    changes = {
        (r.userid, r.external_userid): (r.add_bits, r.remove_bits)
        for r in diff.changes.itertuples()
    }
    assert changes == {("u1", "wm1"): (0b0100, 0b0001), ("u2", "wm1"): (0b0110, 0)}
    assert list(diff.counts_before) == [2, 1, 0, 0]
    assert list(diff.counts_after) == [1, 2, 2, 0]


def test_diff_of_desired_equal_to_synced_is_empty():
    pairs = pairs_frame([("u1", "wm1", "C1", 5)])
    assert diff_tags(pairs, synced_frame([("u1", "wm1", 5)]), 3).changes.empty


def test_count_bits():
    assert list(count_bits(np.array([1, 3, 2], dtype=np.uint64), 3)) == [2, 2, 0]


def test_a_retired_tag_is_removed_from_every_pair_that_carries_it():
    # Bits 0-1 are the rules' tags, bit 2 a tag the rules no longer name (re-banded away).
    pairs = pairs_frame(
        [
            ("u1", "wm1", "C1", 0b001),  # carries the retired tag and keeps bit 0
            ("u1", "wm2", "C2", 0b010),  # never carried it: unchanged
        ]
    )
    synced = synced_frame(
        [
            ("u1", "wm1", 0b101),
            ("u1", "wm2", 0b010),
            ("u9", "wm9", 0b110),  # no customer in this export: loses only the retired tag
            ("u8", "wm8", 0b010),  # no customer, no retired tag: left as it is
        ]
    )
    diff = diff_tags(pairs, synced, 3, retired_bits=0b100)
    changes = {
        (r.userid, r.external_userid): (int(r.add_bits), int(r.remove_bits))
        for r in diff.changes.itertuples()
    }
    assert changes == {("u1", "wm1"): (0, 0b100), ("u9", "wm9"): (0, 0b100)}
    assert diff.counts_before[2] == 2 and diff.counts_after[2] == 0


def test_without_retired_tags_pairs_outside_the_export_are_left_alone():
    pairs = pairs_frame([("u1", "wm1", "C1", 0b01)])
    synced = synced_frame([("u1", "wm1", 0b01), ("u9", "wm9", 0b11)])
    assert diff_tags(pairs, synced, 2).changes.empty
