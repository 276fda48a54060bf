"""Pacing WeCom calls under the platform's per-API limits, in one process or across many.

Two pacers share one interface (`Pacer`):

- `LocalPacer` (default): a token bucket per API, shared by every client of the same corp in
  this process.
- `PrefectPacer` (`WeComApp.shared_pacing`): a Prefect global concurrency limit with slot decay
  per API, `wecom-<api>`, shared by every flow run and worker on the Prefect server;
  `ensure_rate_limits(app)` creates or updates them (`siyu up` calls it).

Both adapt (AIMD): a 45009 ("frequency out of limit") halves that API's pace in this process, at
most once a second; each success gives back a twentieth of the limit. A push that shares the
corp's quota with another app thus settles near the rate that is left, instead of stalling.
The pacer also counts consecutive 45009s per API (`streak`), which the retry policy turns into
a backoff that starts short and grows towards the 60 s window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from siyu.blocks.wecom.calls import declared_calls
from siyu.blocks.wecom.errors import WeComConfigError

if TYPE_CHECKING:
    from siyu.blocks.wecom.app import WeComApp

WINDOW_SECONDS = 60.0  # WeCom counts calls per minute


class ApiRateLimit:
    """A per-minute call budget for one API, as a token bucket that allows a small burst.

    The bucket holds `burst` calls (5 % of the limit) and refills at (limit - burst) per minute,
    so any 60-second window sees fewer than `per_minute` calls (the platform's window is never
    exceeded) while a sustained run reaches 95 % of the limit. Callers reserve a slot under the
    lock and sleep outside it, so waiting threads are served in arrival order.

    `share` scales the refill when WeCom says the corp is over its quota (`slow_down`), and grows
    back call by call (`speed_up`).
    """

    decrease = 0.5  # on 45009 the pace is halved...
    cut_interval = 1.0  # ...at most once a second, so threads that meet one overrun cut once
    recovery = 0.05  # each success gives back this share of the limit

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"a rate limit must allow at least 1 call a minute, not {per_minute}")
        self.per_minute = per_minute
        self.burst, full_per_second = bucket_shape(per_minute)
        self._full_rate = full_per_second
        self.min_share = min(1.0, max(0.05, 1.0 / per_minute))
        self.share = 1.0
        self.streak = 0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._updated = clock()
        self._last_cut: float | None = None
        self._last_limited: float | None = None

    @property
    def rate_per_second(self) -> float:
        """The refill rate now, after any slow-down."""
        return self._full_rate * self.share

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_second)
        self._updated = now

    def reserve(self) -> float:
        """Take one call's slot; return how many seconds the caller must wait before calling."""
        with self._lock:
            self._refill(self._clock())
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_second

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def slow_down(self) -> int:
        """WeCom answered 45009: cut the pace and drop the saved burst; return the streak."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if self._last_limited is not None and now - self._last_limited > WINDOW_SECONDS:
                self.streak = 0  # a window has passed since the last one: a new overrun
            self._last_limited = now
            self.streak += 1
            if self._last_cut is None or now - self._last_cut >= self.cut_interval:
                self.share = max(self.min_share, self.share * self.decrease)
                self._last_cut = now
                self._tokens = min(self._tokens, 0.0)
            return self.streak

    def speed_up(self) -> None:
        """A call went through: end the 45009 streak and give back some pace."""
        with self._lock:
            self.streak = 0
            if self.share < 1.0:
                self._refill(self._clock())
                self.share = min(1.0, self.share + self.recovery)


def bucket_shape(per_minute: int) -> tuple[int, float]:
    """(burst, refill per second) that keep every 60 s window under `per_minute` calls."""
    burst = max(1, per_minute // 20)
    return burst, max(per_minute - burst, 1) / WINDOW_SECONDS


@dataclass(frozen=True)
class RateLimits:
    """Calls a minute per API path: one default, and overrides (e.g. webhook/send: 20)."""

    default_per_minute: int = 10_000
    per_api: Mapping[str, int] = field(default_factory=dict)

    def per_minute(self, api: str) -> int:
        return self.per_api.get(api, self.default_per_minute)


class Pacer(Protocol):
    """Decides when a WeCom call may go, and hears how the platform took it."""

    def acquire(self, api: str) -> float:
        """Wait until a call to `api` may be sent; return the seconds waited."""
        ...

    def rate_limited(self, api: str) -> int:
        """WeCom answered `api` with 45009: slow down; return consecutive 45009s on `api`."""
        ...

    def succeeded(self, api: str) -> None:
        """WeCom answered `api` without a rate-limit error."""
        ...

    def limit(self, api: str) -> ApiRateLimit:
        """This process's bucket for `api` (its adaptive share and streak)."""
        ...


# The platform counts calls per corp, not per client object: every client of the same corp and
# limit in this process draws from one bucket, so two tasks each holding a client stay under it
# together. Across processes, PrefectPacer does the same job.
_RateLimitKey = tuple[str, str, int]  # scope (base_url + corp), api, per_minute
_SHARED_LIMITS: dict[_RateLimitKey, ApiRateLimit] = {}
_SHARED_LIMITS_LOCK = threading.Lock()


class LocalPacer:
    """The in-process pacer: one adaptive token bucket per (corp, API)."""

    def __init__(
        self,
        scope: str,
        limits: RateLimits,
        *,
        registry: dict[_RateLimitKey, ApiRateLimit] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Pace calls of one corp.

        Args:
            scope: what the platform counts against (base URL and corp id).
            limits: calls a minute per API.
            registry: where buckets live; default the process-wide one (tests pass their own,
                with a fake clock).
            clock, sleep: time for the buckets.
        """
        self.scope = scope
        self.limits = limits
        self._registry = _SHARED_LIMITS if registry is None else registry
        self._clock = clock
        self._sleep = sleep

    def limit(self, api: str) -> ApiRateLimit:
        key = (self.scope, api, self.limits.per_minute(api))
        with _SHARED_LIMITS_LOCK:
            bucket = self._registry.get(key)
            if bucket is None:
                bucket = self._registry[key] = ApiRateLimit(
                    key[2], clock=self._clock, sleep=self._sleep
                )
            return bucket

    def acquire(self, api: str) -> float:
        return self.limit(api).acquire()

    def rate_limited(self, api: str) -> int:
        return self.limit(api).slow_down()

    def succeeded(self, api: str) -> None:
        self.limit(api).speed_up()


def limit_name(api: str) -> str:
    """The Prefect global concurrency limit that paces `api`, e.g. wecom-externalcontact-mark_tag.

    One limit per API: WeCom counts each API on its own. Prefect names may not hold "/".
    """
    return "wecom-" + api.replace("/", "-")


class PrefectPacer:
    """Pacing shared by every process: a Prefect rate limit (slot decay) per API.

    The limits must exist (`ensure_rate_limits`); a missing one is an error, not a silent
    unpaced run. A 45009 seen here also slows this process through its local bucket, on top of
    the shared limit, until successes give the pace back.
    """

    def __init__(
        self,
        scope: str,
        limits: RateLimits,
        *,
        timeout_seconds: float | None = None,
        registry: dict[_RateLimitKey, ApiRateLimit] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._local = LocalPacer(scope, limits, registry=registry, clock=clock, sleep=sleep)
        self._clock = clock

    def limit(self, api: str) -> ApiRateLimit:
        return self._local.limit(api)

    def acquire(self, api: str) -> float:
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import rate_limit

        started = self._clock()
        name = limit_name(api)
        try:
            rate_limit(name, occupy=1, timeout_seconds=self.timeout_seconds, strict=True)
        except ConcurrencySlotAcquisitionError as exc:
            raise WeComConfigError(
                None,
                "shared rate limit unavailable",
                api,
                f"cannot pace {api} through the Prefect rate limit {name} ({exc}): create the "
                "limits with ensure_rate_limits(app) (siyu up does), or turn the WeComApp "
                "block's shared_pacing off",
            ) from None
        bucket = self._local.limit(api)
        if bucket.share < 1.0:
            bucket.acquire()
        return self._clock() - started

    def rate_limited(self, api: str) -> int:
        return self._local.rate_limited(api)

    def succeeded(self, api: str) -> None:
        self._local.succeeded(api)


def ensure_rate_limits(app: WeComApp) -> dict[str, int]:
    """Create or update the Prefect rate limit of every WeCom API for this app's limits.

    Each limit holds the bucket's burst and decays at the bucket's refill rate, so any minute
    sees fewer calls than the API's limit, whichever processes make them. Returns
    {limit name: calls a minute}.
    """
    from prefect.client.orchestration import get_client

    limits = RateLimits(app.rate_limit_per_minute, dict(app.api_rate_limits))
    made: dict[str, int] = {}
    with get_client(sync_client=True) as client:
        for api in sorted(declared_calls()):
            per_minute = limits.per_minute(api)
            burst, per_second = bucket_shape(per_minute)
            name = limit_name(api)
            client.upsert_global_concurrency_limit_by_name(
                name, limit=burst, slot_decay_per_second=per_second
            )
            made[name] = per_minute
    return made
