"""Shared pacing: calls claimed a few at a time from one Prefect limit keep every minute under it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from siyu.blocks.wecom import PrefectPacer, RateLimits, WeComConfigError, limit_name
from siyu.blocks.wecom.pacing import (
    HOLD_SECONDS,
    shared_shape,
    upsert_rate_limit,
)
from tests.blocks.wecom.conftest import FakeClock

# -- the shape: never over the limit in any minute, most of it for a push ---------------------


@pytest.mark.parametrize(
    "per_minute", [1, 2, 3, 10, 20, 60, 100, 300, 600, 1_000, 1_800, 10_000, 20_000, 150_000]
)
def test_no_minute_sees_more_than_the_limit(per_minute: int) -> None:
    shape = shared_shape(per_minute)
    # Whole calls: a claim needs a whole call's slots, so a fraction of refill buys nothing.
    assert math.floor(shape.most_in(60.0) + 1e-9) <= per_minute
    assert 1 <= shape.claim <= shape.burst < per_minute or per_minute == shape.burst == 1
    assert shape.limit_slots >= shape.claim_slots  # the server can grant a claim at all


@pytest.mark.parametrize("per_minute", [100, 600, 1_000, 10_000, 20_000])
def test_a_push_that_never_stops_gets_most_of_the_limit(per_minute: int) -> None:
    assert shared_shape(per_minute).sustained_share >= 0.92


def test_a_process_asks_the_server_a_few_times_a_second_whatever_the_limit() -> None:
    for per_minute in (600, 10_000, 150_000):
        shape = shared_shape(per_minute)
        assert shape.per_second / shape.claim <= 6  # claims a second, all processes together
        assert shape.burst >= 4 * shape.claim  # two processes claim without waiting on each other


# -- against the Prefect server -----------------------------------------------------------------


def _limit(api: str, per_minute: int) -> None:
    with get_client(sync_client=True) as client:
        upsert_rate_limit(client, api, per_minute)


def _active_slots(api: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit_name(api)).active_slots


def _process(api: str, per_minute: int, **kwargs: Any) -> PrefectPacer:
    """A pacer with its own claimed calls and buckets: what one worker process holds."""
    return PrefectPacer(
        "scope", RateLimits(10_000, {api: per_minute}), registry={}, reservoirs={}, **kwargs
    )


def test_two_processes_share_one_limit_and_a_dead_ones_calls_free_themselves(
    prefect_server,
) -> None:
    api, per_minute = "test/two_processes", 20  # 2 calls held, then one every ~3.4 s
    _limit(api, per_minute)
    first, second = _process(api, per_minute), _process(api, per_minute)
    burst = shared_shape(per_minute).burst

    for _ in range(burst):
        first.acquire(api)
    assert first.reservoir(api).claims == burst

    waiting = _process(api, per_minute, timeout_seconds=0.2)
    with pytest.raises(TimeoutError, match="other runs are using the whole limit"):
        waiting.acquire(api)  # the first process holds the whole limit

    # The first process never spends or gives back anything more (it died): the limit's decay
    # frees its share and the second one goes on.
    second.acquire(api)
    assert second.reservoir(api).claims == 1


def test_claimed_calls_are_spent_soon_or_dropped(prefect_server) -> None:
    api, per_minute = "test/claimed_calls_age", 6_000  # claims of 20 calls
    _limit(api, per_minute)
    clock = FakeClock()
    pacer = _process(api, per_minute, clock=clock, sleep=clock.sleep)
    reservoir = pacer.reservoir(api)

    for _ in range(reservoir.shape.claim):
        pacer.acquire(api)
    assert reservoir.claims == 1  # one request to the server for the whole claim

    pacer.acquire(api)  # the claim is spent: a new one
    assert reservoir.claims == 2
    clock.sleep(HOLD_SECONDS)
    pacer.acquire(api)  # 19 calls were left, but too old to send: never saved up for a burst
    assert reservoir.claims == 3
    assert reservoir.dropped == reservoir.shape.claim - 1


class _Rival:
    """The Prefect client, with another process claiming everything just before our claim."""

    def __init__(self, client: Any, api: str) -> None:
        self._client = client
        self._name = limit_name(api)
        self.struck = False

    def read_global_concurrency_limit_by_name(self, name: str) -> Any:
        return self._client.read_global_concurrency_limit_by_name(name)

    def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> Any:
        if not self.struck:
            self.struck = True
            limit = self._client.read_global_concurrency_limit_by_name(self._name)
            self._client.increment_concurrency_slots(
                [self._name], limit.limit - limit.active_slots, mode
            )
        return self._client.increment_concurrency_slots(names, slots, mode)


def test_a_claim_another_process_beat_is_asked_again(prefect_server) -> None:
    api, per_minute = "test/claim_race", 6_000
    _limit(api, per_minute)
    with get_client(sync_client=True) as client:
        rival = _Rival(client, api)
        pacer = _process(api, per_minute, connect=lambda: rival)

        pacer.acquire(api)

    assert rival.struck
    assert pacer.reservoir(api).claims == 1


def test_a_limit_cut_for_other_limits_is_a_config_error(prefect_server) -> None:
    api = "test/old_shape"
    with get_client(sync_client=True) as client:
        # Whole-call slots, as an older siyu made them: a claim would be worth 100 calls.
        client.upsert_global_concurrency_limit_by_name(
            limit_name(api), limit=30, slot_decay_per_second=9.5
        )
    with pytest.raises(WeComConfigError, match="ensure_rate_limits") as caught:
        _process(api, 600).acquire(api)
    assert "600 calls a minute" in str(caught.value)

    _limit(api, 300)  # stricter than the app's 600: fine, the app just goes slower
    _process(api, 600).acquire(api)
    _limit(api, 1_200)  # looser: would let WeCom refuse calls
    with pytest.raises(WeComConfigError, match="ensure_rate_limits"):
        _process(api, 600).acquire(api)


def test_a_limit_ops_turned_off_paces_in_this_process(prefect_server) -> None:
    api, per_minute = "test/turned_off", 600
    _limit(api, per_minute)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            limit_name(api), GlobalConcurrencyLimitUpdate(active=False)
        )
    clock = FakeClock()
    pacer = _process(api, per_minute, clock=clock, sleep=clock.sleep)

    waited = sum(pacer.acquire(api) for _ in range(60))

    assert _active_slots(api) == 0  # nothing taken from the shared limit...
    assert waited > 0  # ...and the local bucket paced the calls past its burst


def test_a_45009_slows_a_shared_pacer_and_the_pace_comes_back(prefect_server) -> None:
    api, per_minute = "test/shared_45009", 6_000
    _limit(api, per_minute)
    clock = FakeClock()
    pacer = _process(api, per_minute, clock=clock, sleep=clock.sleep)
    pacer.acquire(api)
    assert clock.slept == []  # the shared limit alone: no local wait

    assert pacer.rate_limited(api) == 1
    assert pacer.limit(api).share == 0.5
    pacer.acquire(api)
    assert clock.slept  # slowed here too, before taking a shared slot

    for _ in range(10):
        pacer.succeeded(api)
    assert pacer.limit(api).share == 1.0
    assert pacer.limit(api).streak == 0
