"""Mobiles hashed with a secret salt; customers bound to (employee, contact) pairs by the hash."""

import pandas as pd

from siyu.tasks.matching import bind_contacts, hash_mobiles


def test_hash_is_salted_stable_and_not_the_mobile():
    a = hash_mobiles(["13800000001", None], b"salt-a")
    b = hash_mobiles(["13800000001"], b"salt-b")
    assert a[1] is None
    assert a[0] == hash_mobiles(["13800000001"], b"salt-a")[0]
    assert a[0] != b[0]
    assert "13800000001" not in a[0] and len(a[0]) == 64


def test_bind_every_pair_of_a_customer_and_skip_ambiguous_pairs():
    h = dict(
        zip(
            "abcd", hash_mobiles(["13800000001", "13800000002", "13800000003", "13900000009"], b"s")
        )
    )
    customers = pd.DataFrame(
        {"customer_id": ["C1", "C2", "C3"], "mobile_hash": [h["a"], h["b"], h["c"]]}
    )
    contact_mobiles = pd.DataFrame(
        [
            ("u1", "wm1", h["a"]),
            ("u2", "wm1", h["a"]),  # the same customer follows two managers: both pairs bound
            ("u1", "wm2", h["b"]),
            ("u1", "wm2", h["c"]),  # one pair, two customers' mobiles: ambiguous
            ("u1", "wm3", h["d"]),  # not a customer
        ],
        columns=["userid", "external_userid", "mobile_hash"],
    )
    binding = bind_contacts(customers, contact_mobiles)
    assert sorted(map(tuple, binding.pairs.to_numpy().tolist())) == [
        ("u1", "wm1", "C1"),
        ("u2", "wm1", "C1"),
    ]
    assert binding.ambiguous_pairs == 1
    assert binding.unmatched_pairs == 1
