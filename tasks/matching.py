"""Match bank customers to WeCom contacts by the salted hash of a mobile, never the mobile itself."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

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
    # Hashes as objects on both sides: a side with no hash at all (no contacts yet, or no
    # customer matching any contact) is an all-NaN float column, which pandas refuses to join.
    hashed = customers[["customer_id", "mobile_hash"]].dropna().astype({"mobile_hash": object})
    joined = (
        contact_mobiles.astype({"mobile_hash": object})
        .merge(hashed, on="mobile_hash", how="inner")[["userid", "external_userid", "customer_id"]]
        .drop_duplicates()
    )
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


# The share of contacts bound to export rows may fall by this much against the last synced
# export before the sync refuses to run (0.5: half of its bound share is gone).
DEFAULT_BINDING_DROP_THRESHOLD = 0.5


@dataclass(frozen=True)
class BindingCount:
    """How many contacts (pairs with a remark mobile) one sync bound to customers of its export."""

    bound: int
    contacts: int
    export_date: str | None = None  # the business date of that sync's export, ISO

    @property
    def share(self) -> float:
        """Bound share of the contacts; 0 when there were none."""
        return self.bound / self.contacts if self.contacts else 0.0


def binding_collapse(
    today: BindingCount,
    last: BindingCount | None,
    threshold: float = DEFAULT_BINDING_DROP_THRESHOLD,
    *,
    business_date: str | None = None,
) -> str | None:
    """Why this binding is a failed sync, in words, when its bound share collapsed; else None.

    A worker with another mobile salt, or an export whose mobile column moved, binds almost no
    contact: every pair looks unbound, the diff is empty, and the sync would finish green with
    nothing done. Compared with the last synced export's binding; a first sync (no last one,
    or one that bound nobody) is not compared.
    """
    if last is None or last.bound == 0 or last.contacts == 0:
        return None
    drop = 1.0 - today.share / last.share
    if drop <= threshold:
        return None
    return (
        f"bound {today.bound:,} of {today.contacts:,} contacts "
        f"({_when(last.export_date, business_date)} {last.bound:,}): the mobile salt or the "
        "export's mobile column changed? nothing was changed"
    )


def _when(last_date: str | None, business_date: str | None) -> str:
    """'yesterday' when the last sync's export is of the day before, else its date."""
    if last_date and business_date:
        if date.fromisoformat(last_date) == date.fromisoformat(business_date) - timedelta(days=1):
            return "yesterday"
        return f"last sync, {last_date}:"
    return "last sync:"
