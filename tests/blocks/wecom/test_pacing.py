"""45009 is a short backoff and a slower pace, not a one-minute stall; the pace comes back."""

from __future__ import annotations

import math
from typing import Any

import pytest

from siyu.blocks.wecom import ApiRateLimit, WeComUnavailable
from tests.blocks.wecom.conftest import FakeClock, fake_time_pacer, scripted_client

FOLLOW_USERS = "externalcontact/get_follow_user_list"
OK: dict[str, Any] = {"errcode": 0, "follow_user": ["mgr001"]}
LIMITED: dict[str, Any] = {"errcode": 45009, "errmsg": "api freq out of limit"}


# -- the adaptive bucket ------------------------------------------------------------------------


def _rate_per_minute(limit: ApiRateLimit, clock: FakeClock, calls: int) -> float:
    started = clock.now
    for _ in range(calls):
        limit.acquire()
    return calls / (clock.now - started) * 60.0


def test_a_sustained_45009_slows_the_pace() -> None:
    clock = FakeClock()
    limit = ApiRateLimit(600, clock=clock, sleep=clock.sleep)
    full = _rate_per_minute(limit, clock, 200)

    for _ in range(3):
        limit.slow_down()
        clock.sleep(1.0)

    assert limit.share == pytest.approx(0.125)
    assert limit.streak == 3
    assert _rate_per_minute(limit, clock, 50) <= 0.13 * full


def test_the_pace_recovers_on_successes() -> None:
    clock = FakeClock()
    limit = ApiRateLimit(600, clock=clock, sleep=clock.sleep)
    limit.slow_down()
    assert limit.share == 0.5

    limit.speed_up()
    assert limit.streak == 0
    assert 0.5 < limit.share < 1.0  # gradually, not at once
    for _ in range(9):
        limit.speed_up()
    assert limit.share == 1.0


def test_threads_meeting_one_overrun_cut_the_pace_once() -> None:
    clock = FakeClock()
    limit = ApiRateLimit(600, clock=clock, sleep=clock.sleep)
    for _ in range(8):  # eight threads answered 45009 in the same instant
        limit.slow_down()
    assert limit.share == 0.5
    assert limit.streak == 8


def test_the_pace_has_a_floor_and_the_streak_forgets_after_a_window() -> None:
    clock = FakeClock()
    limit = ApiRateLimit(600, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        limit.slow_down()
        clock.sleep(1.0)
    assert limit.share == limit.min_share > 0
    clock.sleep(61.0)
    assert limit.slow_down() == 1


# -- the client ---------------------------------------------------------------------------------


def test_one_45009_in_seven_calls_does_not_cost_a_minute_per_hit(clock) -> None:
    calls = 0

    def wecom(api: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return LIMITED if calls % 7 == 0 else OK

    client, session = scripted_client(
        wecom, sleep=clock.sleep, pacer=fake_time_pacer(clock, externalcontact__mark_tag=600)
    )
    client.get_token()
    started = clock.now
    for _ in range(140):
        client.get_follow_user_list()

    hits = len(session.calls(FOLLOW_USERS)) - 140
    assert hits >= 20
    assert clock.now - started < hits * 1.0  # a second at most per hit, not a minute
    assert max(clock.slept) <= 1.0


def test_a_sustained_45009_waits_longer_each_time_then_the_pace_recovers(clock) -> None:
    limited = 5

    def wecom(api: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal limited
        if limited:
            limited -= 1
            return LIMITED
        return OK

    pacer = fake_time_pacer(clock)
    client, _ = scripted_client(wecom, sleep=clock.sleep, pacer=pacer, max_attempts=8)
    client._jitter = lambda seconds: seconds  # type: ignore[method-assign]
    client.get_token()

    client.get_follow_user_list()

    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 16.0]  # short first, doubling while it repeats
    bucket = pacer.limit(FOLLOW_USERS)
    full_rate = ApiRateLimit(10_000).rate_per_second
    assert bucket.rate_per_second < 0.25 * full_rate  # slowed down...
    for _ in range(20):
        client.get_follow_user_list()
    assert bucket.share == 1.0  # ...and the pace comes back


def test_the_last_try_waits_out_the_window(clock) -> None:
    client, session = scripted_client(
        lambda api, body: LIMITED, sleep=clock.sleep, pacer=fake_time_pacer(clock), max_attempts=4
    )
    client.get_token()
    with pytest.raises(WeComUnavailable) as caught:
        client.get_follow_user_list()
    assert caught.value.errcode == 45009
    assert len(session.calls(FOLLOW_USERS)) == 4
    assert sum(clock.slept) >= 60.0  # refused for more than a whole window before giving up


def test_a_push_sharing_the_quota_moves_at_the_rate_that_is_left(clock) -> None:
    """WeCom allows 600 a minute to the corp; another app takes 300 of each minute."""
    quota, other_app, ours = 600, 300, 900
    used: dict[int, int] = {}

    def wecom(api: str, body: dict[str, Any]) -> dict[str, Any]:
        window = math.floor(clock.now / 60.0)
        used.setdefault(window, other_app)
        if used[window] >= quota:
            return LIMITED
        used[window] += 1
        return OK

    client, session = scripted_client(
        wecom, sleep=clock.sleep, pacer=fake_time_pacer(clock, **{FOLLOW_USERS: quota})
    )
    client.get_token()
    started = clock.now
    for _ in range(ours):
        client.get_follow_user_list()  # never gives up: the platform never refuses a whole minute

    minutes = (clock.now - started) / 60.0
    left_per_minute = quota - other_app
    assert minutes < 2 * ours / left_per_minute  # at least half the rate that is left
    assert len(session.calls(FOLLOW_USERS)) < 1.5 * ours  # and few refused calls on the way
