"""Shared pacing: Prefect rate limits per WeCom API, made by ensure_rate_limits, hold every caller."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from siyu.blocks.wecom import (
    PrefectPacer,
    RateLimits,
    WeComApp,
    WeComConfigError,
    declared_calls,
    ensure_rate_limits,
    limit_name,
)
from siyu.blocks.wecom.transport import pacing_scope

FOLLOW_USERS = "externalcontact/get_follow_user_list"


def _app(sandbox, **fields) -> WeComApp:
    return WeComApp(
        corp_id=sandbox.corp_id, secret=sandbox.secret, base_url=sandbox.api_base, **fields
    )


def _limit(name: str):
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_ensure_makes_one_rate_limit_per_api_and_updates_it(prefect_server, sandbox) -> None:
    made = ensure_rate_limits(_app(sandbox, api_rate_limits={"webhook/send": 20}))

    assert set(made) == {limit_name(api) for api in declared_calls()}
    assert made[limit_name("webhook/send")] == 20
    mark_tag = _limit("wecom-externalcontact-mark_tag")
    # In hundredths of a call: 200 calls held (a fiftieth of 10,000 a minute)...
    assert mark_tag.limit == 20_000
    # ...and the rest of the minute given back over 62 s (a claimed call may wait 2 s to land).
    assert mark_tag.slot_decay_per_second == pytest.approx(9_800 / 62 * 100)
    assert _limit("wecom-webhook-send").limit == 200  # 2 of its 20 calls a minute

    ensure_rate_limits(_app(sandbox, rate_limit_per_minute=2_000))  # again, other limits
    assert _limit("wecom-externalcontact-mark_tag").limit == 4_000


def test_calls_through_the_prefect_pacer_are_paced(prefect_server, sandbox, seed_dir) -> None:
    sandbox.seed(seed_dir)
    app = _app(sandbox, api_rate_limits={FOLLOW_USERS: 1})  # one call a minute
    ensure_rate_limits(app)
    pacer = PrefectPacer(
        pacing_scope(app.base_url, app.corp_id),
        RateLimits(app.rate_limit_per_minute, dict(app.api_rate_limits)),
        timeout_seconds=2,
        registry={},
        reservoirs={},
    )
    with app.get_client() as first, app.get_client() as second:
        first._pacer = second._pacer = pacer  # the block's pacer, with a timeout for the test
        assert len(first.get_follow_user_list()) == 3

        with pytest.raises(TimeoutError):  # the minute's one slot is taken: the call waits
            second.get_follow_user_list()

    assert len(sandbox.requests(FOLLOW_USERS)) == 1
    assert _limit(limit_name(FOLLOW_USERS)).active_slots >= 1


def test_a_missing_limit_is_an_error_not_an_unpaced_run(prefect_server) -> None:
    pacer = PrefectPacer("scope", RateLimits(), registry={}, reservoirs={})
    with pytest.raises(WeComConfigError, match="ensure_rate_limits"):
        pacer.acquire("externalcontact/nobody_made_this_limit")


def test_the_block_chooses_the_pacer(sandbox) -> None:
    assert not _app(sandbox).shared_pacing
    with (
        _app(sandbox).get_client() as local,
        _app(sandbox, shared_pacing=True).get_client() as shared,
    ):
        assert isinstance(shared._pacer, PrefectPacer)
        assert not isinstance(local._pacer, PrefectPacer)
        assert shared._rate_limit(FOLLOW_USERS).per_minute == 10_000
