"""Match bank customers to WeCom contacts by the salted hash of a mobile, never the mobile itself."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import pandas as pd


def hash_mobiles(mobiles: Iterable[str | None], salt: bytes) -> list[str | None]:
    """Salted SHA-256 (hex) of each mobile; None stays None. The salt is a secret (a block field)."""
    base = hashlib.sha256(salt)
    out: list[str | None] = []
    append = out.append
    for mobile in mobiles:
        if mobile is None or mobile != mobile:  # None or NaN
            append(None)
            continue
        h = base.copy()
        h.update(mobile.encode())
        append(h.hexdigest())
    return out


def match_mobiles(
    mobiles: Iterable[str | None], salt: bytes, wanted: Collection[str]
) -> tuple[list[int], list[str]]:
    """Positions (and hashes) of the mobiles whose salted hash is in `wanted`.

    Hashing and probing in one pass: of a million customers only the few bound to a contact
    leave this loop, so nothing downstream touches every row.
    """
    base = hashlib.sha256(salt)
    positions: list[int] = []
    hashes: list[str] = []
    for i, mobile in enumerate(mobiles):
        if mobile is None or mobile != mobile:  # None or NaN
            continue
        h = base.copy()
        h.update(mobile.encode())
        digest = h.hexdigest()
        if digest in wanted:
            positions.append(i)
            hashes.append(digest)
    return positions, hashes


@dataclass
class Binding:
    """Which (employee, contact) pairs belong to which customer, and what could not be bound."""

    pairs: pd.DataFrame  # userid, external_userid, customer_id
    ambiguous_pairs: int  # pairs whose remark mobiles point at more than one customer
    unmatched_pairs: int  # pairs with no remark mobile of a customer in this export


def bind_contacts(customers: pd.DataFrame, contact_mobiles: pd.DataFrame) -> Binding:
    """Join customers (customer_id, mobile_hash) to contacts (userid, external_userid, mobile_hash).

    A customer followed by several employees binds every pair. A pair whose remark mobiles match
    different customers is ambiguous and left unbound (the report counts it).
    """
    all_pairs = contact_mobiles[["userid", "external_userid"]].drop_duplicates()
    joined = contact_mobiles.merge(
        customers[["customer_id", "mobile_hash"]].dropna(), on="mobile_hash", how="inner"
    )[["userid", "external_userid", "customer_id"]].drop_duplicates()
    per_pair = joined.groupby(["userid", "external_userid"], sort=False)["customer_id"].transform(
        "size"
    )
    ambiguous = joined[per_pair > 1]
    bound = joined[per_pair == 1].reset_index(drop=True)
    n_ambiguous = len(ambiguous[["userid", "external_userid"]].drop_duplicates())
    return Binding(
        pairs=bound,
        ambiguous_pairs=n_ambiguous,
        unmatched_pairs=len(all_pairs) - len(bound) - n_ambiguous,
    )
