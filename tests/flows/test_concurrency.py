"""contacts-sync and a tag push never interleave: both hold one Prefect global concurrency slot."""

from __future__ import annotations

import threading
import time

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from siyu.deployments.serve import ensure_concurrency_limits
from siyu.flows.contacts_sync import contacts_sync
from siyu.tasks.contacts import CONTACT_STATE_LIMIT


def test_contacts_sync_waits_while_the_contact_state_is_held(system):
    ensure_concurrency_limits()
    ensure_concurrency_limits()  # idempotent
    try:
        finished = threading.Event()
        with concurrency(
            CONTACT_STATE_LIMIT, occupy=1, lease_duration=60
        ):  # a tag push in progress
            worker = threading.Thread(target=lambda: (contacts_sync(), finished.set()))
            worker.start()
            time.sleep(3)
            assert not finished.is_set()
        worker.join(timeout=120)
        assert finished.is_set()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(CONTACT_STATE_LIMIT)
