"""Runs at the same time never send one change twice: the outbox claim decides, not Prefect slots."""

from __future__ import annotations

import threading

from siyu.flows.contacts_sync import contacts_sync
from tests.flows.test_tag_sync import bound_pairs, expected_tags, run_tag_sync, tags_by_pair


def _together(*targets) -> list:
    """Start every target at once (a barrier), wait for all, return their results in order."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)

    def run(i, target):
        barrier.wait()
        results[i] = target()

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_two_tag_syncs_of_one_export_started_together_send_each_change_once(system):
    assert contacts_sync(return_state=True).is_completed()

    first, second = _together(run_tag_sync, run_tag_sync)

    assert first.is_completed(), first.message
    assert second.is_completed(), second.message
    pairs = bound_pairs(system)
    assert system.mark_tag_calls() == len(pairs)  # not twice that
    export = system.export_frame().set_index("customer_id")
    after = tags_by_pair(system)
    for pair, customer in pairs.items():
        assert after[pair][0] == expected_tags(export.loc[customer]), pair


def test_contacts_sync_during_a_push_leaves_the_synced_state_right(system):
    assert contacts_sync(return_state=True).is_completed()

    push, pull = _together(run_tag_sync, lambda: contacts_sync(return_state=True))

    assert push.is_completed(), push.message
    assert pull.is_completed(), pull.message
    calls = system.mark_tag_calls()
    preview = run_tag_sync(dry_run=True)
    assert preview.is_completed(), preview.message
    assert system.mark_tag_calls() == calls
    assert preview.result()["pairs_changed"] == 0  # siyu's record matches WeCom: nothing to redo
