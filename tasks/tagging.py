"""Tags from the export: evaluate the rule set over a frame, and diff desired against synced tags.

Tag sets are bit sets: bit i stands for the i-th managed tag of the rule set (at most 64), so the
rules, the diff and the per-tag counts are a handful of numpy operations over every pair at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siyu.schemas.tag_rules import FlagRule, RangeRule, TagRuleSet, ValueRule
from siyu.tasks.matching import Binding, bind_contacts, match_mobiles

ONE = np.uint64(1)


def desired_tag_bits(frame: pd.DataFrame, rules: TagRuleSet) -> np.ndarray:
    """Each row's managed tags as a uint64 bit set, evaluated column-wise (no per-row loop)."""
    bits = np.zeros(len(frame), dtype=np.uint64)
    position = 0
    for rule in rules.rules:
        for tag in rule.tags:
            mask = _tag_mask(frame, rule, tag)
            bits |= np.where(mask, ONE << np.uint64(position), np.uint64(0))
            position += 1
    return bits


def desired_for_contacts(
    accepted: pd.DataFrame, contact_mobiles: pd.DataFrame, rules: TagRuleSet, salt: bytes
) -> tuple[pd.DataFrame, Binding]:
    """The managed tags every bound (employee, contact) pair should carry.

    `accepted`: the export's accepted rows (customer_id, mobile and the rule columns).
    `contact_mobiles`: userid, external_userid, mobile_hash of reachable contacts.
    Returns pairs (userid, external_userid, customer_id, desired) and the binding's counts.
    """
    positions, hashes = match_mobiles(
        accepted["mobile"].tolist(), salt, set(contact_mobiles["mobile_hash"])
    )
    matched = accepted.iloc[positions]
    customers = pd.DataFrame(
        {
            "customer_id": matched["customer_id"].to_numpy(),
            "mobile_hash": hashes,
            "desired": desired_tag_bits(matched, rules),
        }
    )
    binding = bind_contacts(customers, contact_mobiles)
    pairs = binding.pairs.merge(customers[["customer_id", "desired"]], on="customer_id")
    return pairs, binding


def _tag_mask(frame: pd.DataFrame, rule, tag) -> np.ndarray:
    if isinstance(rule, RangeRule):
        values = frame[rule.field].to_numpy(dtype="float64", na_value=np.nan)
        mask = values >= tag.low
        if tag.high is not None:
            mask &= values < tag.high
        return mask
    if isinstance(rule, FlagRule):
        return frame[tag.field].fillna(False).to_numpy(dtype=bool)
    if isinstance(rule, ValueRule):
        return (frame[rule.field] == tag.value).fillna(False).to_numpy(dtype=bool)
    raise TypeError(f"unknown rule kind {type(rule).__name__}")


def bits_to_positions(bits: int) -> list[int]:
    """Positions of the set bits, lowest first."""
    bits = int(bits)
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


def positions_to_bits(positions: list[int] | np.ndarray) -> int:
    """The bit set holding these positions."""
    out = 0
    for p in positions:
        out |= 1 << int(p)
    return out


@dataclass
class TagDiff:
    """What to change per (employee, contact) pair, and the tag counts before and after."""

    changes: pd.DataFrame  # userid, external_userid, customer_id, add_bits, remove_bits (uint64)
    counts_before: np.ndarray  # per managed tag: pairs carrying it before the push
    counts_after: np.ndarray  # per managed tag: pairs carrying it once the push is done


def diff_tags(
    pairs: pd.DataFrame, synced: pd.DataFrame, n_tags: int, retired_bits: int = 0
) -> TagDiff:
    """Desired minus synced, per pair.

    `pairs`: userid, external_userid, customer_id, desired (uint64): the pairs to manage.
    `synced`: userid, external_userid, bits (uint64): managed tags last known on each pair.
    `retired_bits`: tags siyu managed and the rules no longer name. No pair desires them, and
    they are removed from every pair that carries one, bound to a customer of this export or not.
    Otherwise only pairs in `pairs` are touched; a pair without synced tags starts from none.
    """
    merged = pairs.merge(synced, on=["userid", "external_userid"], how="left")
    retired = np.uint64(retired_bits)
    if retired_bits:
        # Pairs outside this export that carry a retired tag: they lose it and keep the rest.
        others = synced.merge(
            pairs[["userid", "external_userid"]],
            on=["userid", "external_userid"],
            how="left",
            indicator=True,
        )
        others = others[others["_merge"] == "left_only"]
        carrying = others["bits"].to_numpy(dtype=np.uint64) & retired
        others = others.loc[carrying != 0, ["userid", "external_userid", "bits"]]
        others["customer_id"] = None
        others["desired"] = others["bits"].to_numpy(dtype=np.uint64) & ~retired
        merged = pd.concat([merged, others[merged.columns]], ignore_index=True)
    before = merged["bits"].fillna(0).to_numpy(dtype=np.uint64)
    desired = merged["desired"].to_numpy(dtype=np.uint64) & ~retired
    add = desired & ~before
    remove = before & ~desired
    changed = (add | remove) != 0
    changes = merged.loc[changed, ["userid", "external_userid", "customer_id"]].copy()
    changes["add_bits"] = add[changed]
    changes["remove_bits"] = remove[changed]
    return TagDiff(
        changes=changes.reset_index(drop=True),
        counts_before=count_bits(before, n_tags),
        counts_after=count_bits(desired, n_tags),
    )


def count_bits(bits: np.ndarray, n_tags: int) -> np.ndarray:
    """How many entries carry each of the first n_tags bits."""
    return np.array(
        [int(((bits >> np.uint64(i)) & ONE).sum()) for i in range(n_tags)], dtype=np.int64
    )
