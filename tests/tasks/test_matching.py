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


def test_a_collapsed_binding_is_refused_in_words_against_yesterday():
    from siyu.tasks.matching import BindingCount, binding_collapse

    yesterday = BindingCount(bound=2_993, contacts=2_993, export_date="2026-11-23")
    message = binding_collapse(
        BindingCount(bound=0, contacts=2_993), yesterday, business_date="2026-11-24"
    )
    assert message == (
        "bound 0 of 2,993 contacts (yesterday 2,993): the mobile salt or the export's mobile "
        "column changed? nothing was changed"
    )
    older = BindingCount(bound=2_900, contacts=3_000, export_date="2026-11-20")
    assert "(last sync, 2026-11-20: 2,900)" in binding_collapse(
        BindingCount(bound=10, contacts=3_000), older, business_date="2026-11-24"
    )


def test_a_normal_day_a_first_sync_and_the_threshold_as_data_are_respected():
    from siyu.tasks.matching import BindingCount, binding_collapse

    last = BindingCount(bound=2_000, contacts=3_000, export_date="2026-11-23")
    # New contacts not yet customers lower the share a little: no refusal.
    assert binding_collapse(BindingCount(bound=1_950, contacts=3_300), last) is None
    # A first-ever sync, or a last one that bound nobody, is not compared.
    assert binding_collapse(BindingCount(bound=0, contacts=3_000), None) is None
    nobody = BindingCount(bound=0, contacts=3_000)
    assert binding_collapse(BindingCount(bound=0, contacts=3_000), nobody) is None
    # The same 40 % drop passes a 0.5 threshold and fails a 0.3 one.
    today = BindingCount(bound=1_200, contacts=3_000)
    assert binding_collapse(today, last, 0.5) is None
    assert binding_collapse(today, last, 0.3) is not None


def test_no_contacts_yet_or_no_hash_at_all_binds_nothing_without_an_error():
    customers = pd.DataFrame({"customer_id": ["C1", "C2"], "mobile_hash": [None, None]})
    no_contacts = pd.DataFrame(
        {
            "userid": pd.Series([], dtype=object),
            "external_userid": pd.Series([], dtype=object),
            "mobile_hash": pd.Series([], dtype=object),
        }
    )
    assert customers["mobile_hash"].astype(float).dtype == "float64"  # the all-NaN side

    binding = bind_contacts(customers.astype({"mobile_hash": float}), no_contacts)

    assert binding.pairs.empty and binding.ambiguous_pairs == 0 and binding.unmatched_pairs == 0
