"""A tag push on a flaky platform: 45009 on one call in seven, lost requests, lost replies."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from siyu.flows.contacts_sync import contacts_sync
from siyu.sandbox.sample import SampleSpec, generate
from siyu.schemas.database import upgrade
from tests.flows.conftest import DAY, SALT, System
from tests.flows.test_tag_sync import bound_pairs, expected_tags, run_tag_sync, tags_by_pair


# Minutes of work (a month on the clock, or a long push under faults): it runs on SQLite; PostgreSQL's ledger, outbox and
# claims are proven by the shorter flow tests that run on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_push_meeting_45009_lost_requests_and_lost_replies_ends_exact(
    prefect_server, sandbox, database_url, siyu_home, monkeypatch, tmp_path
):
    sample = generate(
        SampleSpec(customers=700, groups=1, managers=3, seed=13, export_date=DAY),
        tmp_path / "sample",
    )
    sandbox.seed(sample.seed_dir)
    for name, value in {
        "SIYU_DATABASE_URL": database_url,
        "SIYU_WECOM_BASE_URL": sandbox.api_base,
        "SIYU_WECOM_CORP_ID": sandbox.corp_id,
        "SIYU_WECOM_SECRET": sandbox.secret,
        "SIYU_MOBILE_SALT": SALT,
    }.items():
        monkeypatch.setenv(name, value)
    upgrade(database_url)
    landing = siyu_home / "landing"
    landing.mkdir(exist_ok=True)
    export = Path(shutil.copy(sample.export_path, landing / sample.export_path.name))
    system = System(sandbox, database_url, landing, export, sample.seed_dir, siyu_home)
    assert contacts_sync(return_state=True).is_completed()
    pairs = bound_pairs(system)
    assert len(pairs) >= 380  # about the 400 changes the platform was seen to stall on

    api = "externalcontact/mark_tag"
    sandbox.fault(api=api, errcode=45009, rate=1 / 7, seed=1)
    sandbox.fault(api=api, drop_connection=True, rate=0.03, seed=2)  # lost request
    sandbox.fault(api=api, drop_connection=True, after_effect=True, rate=0.03, seed=3)  # lost reply
    started = time.monotonic()
    state = run_tag_sync()
    elapsed = time.monotonic() - started

    assert state.is_completed(), state.message
    export_rows = system.export_frame().set_index("customer_id")
    after = tags_by_pair(system)
    for pair, customer in pairs.items():
        assert after[pair][0] == expected_tags(export_rows.loc[customer]), pair
    requests = system.mark_tag_calls()
    assert requests > len(pairs)  # the faults fired and were retried
    assert f"{requests:,} mark_tag requests" in state.message  # every attempt counted
    print(f"{len(pairs)} changes, {requests} requests, {elapsed:.0f} s")  # for the notes
