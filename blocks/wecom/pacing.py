"""Pacing WeCom calls under the platform's per-API limits, in one process or across many.

Two pacers share one interface (`Pacer`):

- `LocalPacer` (default): a token bucket per API, shared by every client of the same corp in
  this process.
- `PrefectPacer` (`WeComApp.shared_pacing`): a Prefect global concurrency limit with slot decay
  per API, `wecom-<api>`, shared by every flow run and worker on the Prefect server;
  `ensure_rate_limits(app)` creates or updates them (`siyu up` calls it). Each process claims
  a few calls at a time and spends them itself (`SlotReservoir`); the limits count hundredths
  of a call and are cut (`SharedShape`) so that no 60 s window passes WeCom's limit, however
  many processes push, while a sustained push gets about 95 % of it.

Both adapt (AIMD): a 45009 ("frequency out of limit") halves that API's pace in this process, at
most once a second; each success gives back a twentieth of the limit. A push that shares the
corp's quota with another app thus settles near the rate that is left, instead of stalling.
The pacer also counts consecutive 45009s per API (`streak`), which the retry policy turns into
a backoff that starts short and grows towards the 60 s window.
"""

from __future__ import annotations

import atexit
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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


# -- the shared limit ---------------------------------------------------------------------------

SLOTS_PER_CALL = 100
"""Prefect slots one call takes. Prefect decays whole slots and restarts the decay clock on every
update of the limit, so each claim loses the fraction of a slot decayed since the last one: in
hundredths of a call that is a rounding error, in whole calls it cost a tenth of the limit."""

HOLD_SECONDS = 1.0
"""A claimed call is spent within this long of asking the server for it, or dropped."""

TRANSIT_SECONDS = 1.0
"""Allowance between spending a claimed call and WeCom counting it (the request on its way)."""


@dataclass(frozen=True)
class SharedShape:
    """One API's shared limit in calls: what it holds, how fast it refills, one claim's size.

    A call WeCom counts in a window [t, t+60] was claimed from Prefect at most
    HOLD_SECONDS + TRANSIT_SECONDS earlier, so the calls of any window are at most what the
    limit holds (`burst`) plus 62 seconds of refill. With `per_second = (per_minute - burst) / 62`
    no 60 s window passes `per_minute`, whichever processes make the calls, and a push that
    never stops gets about 95 % of the limit.
    """

    per_minute: int
    claim: int  # calls a process takes per request to the Prefect server
    burst: int  # calls the limit holds after a quiet spell
    per_second: float  # calls the limit gives back each second

    @property
    def limit_slots(self) -> int:
        return self.burst * SLOTS_PER_CALL

    @property
    def claim_slots(self) -> int:
        return self.claim * SLOTS_PER_CALL

    @property
    def decay_slots_per_second(self) -> float:
        return self.per_second * SLOTS_PER_CALL

    def most_in(self, seconds: float = WINDOW_SECONDS) -> float:
        """The most calls WeCom can count in any `seconds`, all processes together."""
        return self.burst + self.per_second * (seconds + HOLD_SECONDS + TRANSIT_SECONDS)

    @property
    def sustained_share(self) -> float:
        """The share of `per_minute` that a push which never stops gets."""
        return self.per_second * WINDOW_SECONDS / self.per_minute


def shared_shape(per_minute: int) -> SharedShape:
    """The shared limit of an API allowed `per_minute` calls a minute.

    A claim is a fifth of a second of the limit, so a process asks the Prefect server a few
    times a second whatever the limit. The limit holds four claims or a fiftieth of the limit
    (a tenth at most, for small limits): room for two processes to claim without waiting on
    each other, little enough to leave the rest of the minute to the refill.
    """
    if per_minute < 1:
        raise ValueError(f"a rate limit must allow at least 1 call a minute, not {per_minute}")
    claim = max(1, per_minute // 300)
    burst = max(claim, min(max(4 * claim, per_minute // 50), max(1, per_minute // 10)))
    refill = max(per_minute - burst, 0.5)  # 1 a minute: the burst, then one call per 2 minutes
    return SharedShape(
        per_minute=per_minute,
        claim=claim,
        burst=burst,
        per_second=refill / (WINDOW_SECONDS + HOLD_SECONDS + TRANSIT_SECONDS),
    )


class SharedLimitOff(Exception):  # noqa: N818 - a state, not a failure
    """Ops turned the shared limit off (inactive in Prefect): pace in this process instead."""


class SlotReservoir:
    """This process's share of one Prefect rate limit: calls claimed a few at a time, spent here.

    A caller takes a claimed call if one is left and fresh (claimed under HOLD_SECONDS ago);
    otherwise one caller claims the next `claim` calls for all while the others wait for it.
    Before claiming it reads the limit (a read does not touch it) and asks for slots only when
    they are there, sleeping until the refill makes them otherwise: a refused request restarts
    Prefect's decay clock without decaying, so polling a full limit starves everyone.
    Claimed calls a process never spends (it died, its threads moved on) simply age out here
    and decay on the server: nobody waits on them.
    """

    def __init__(
        self,
        api: str,
        shape: SharedShape,
        *,
        connect: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Claim calls of `api` from its Prefect limit (`limit_name`), cut as `shape` says.

        Args:
            api: the WeCom API path the limit paces.
            shape: the shape `ensure_rate_limits` gave it.
            connect: makes the Prefect client (default: a sync client for the current API URL,
                kept open for the process's life).
            clock, sleep: time for the ageing of claimed calls and the waits for the refill.
        """
        self.api = api
        self.name = limit_name(api)
        self.shape = shape
        self.claims = 0  # requests the server granted, for tests and benchmarks
        self.dropped = 0  # claimed calls that aged out unspent
        self._connect = connect or _prefect_client
        self._client: Any = None
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._left = 0
        self._fresh_until = 0.0
        self._claiming = False

    def take(self, timeout: float | None = None) -> None:
        """Take one call's slot; wait for one if none is left.

        Raises:
            TimeoutError: no slot within `timeout` seconds (None: wait as long as it takes).
            SharedLimitOff: the limit is inactive.
            WeComConfigError: the limit is missing or cut for other limits than this app's.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._left > 0 and self._clock() < self._fresh_until:
                    self._left -= 1
                    return
                self.dropped += self._left
                self._left = 0
                if not self._claiming:
                    self._claiming = True
                    break
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    raise self._timeout(timeout)
                self._cond.wait(remaining)
        claimed_at: float | None = None
        try:
            claimed_at = self._claim(deadline, timeout)
        finally:
            with self._cond:
                self._claiming = False
                if claimed_at is not None:
                    self._left = self.shape.claim - 1  # one is this caller's
                    self._fresh_until = claimed_at + HOLD_SECONDS
                self._cond.notify_all()

    def _claim(self, deadline: float | None, timeout: float | None) -> float:
        """Claim `shape.claim` calls from the server; return when they were asked for."""
        import httpx

        while True:
            limit = self._read()
            room = limit.limit - limit.active_slots
            if room >= self.shape.claim_slots:
                asked = self._clock()
                try:
                    self._client.increment_concurrency_slots(
                        [self.name], self.shape.claim_slots, "rate_limit"
                    )
                except httpx.HTTPStatusError as exc:
                    status = exc.response.status_code
                    if status in (404, 422):  # gone, or smaller than a claim since the read
                        raise self._misfit(f"the server refused the claim ({exc})") from None
                    if status != 423:  # 423: another process claimed first; ask again
                        raise
                else:
                    self.claims += 1
                    return asked
                wait = 1.0 / limit.slot_decay_per_second
            else:
                # Until the refill makes room (and a slot more: Prefect decays whole slots), then
                # up to one claim's refill longer: processes that would all wake at the moment
                # room appears take turns at random instead of the quickest winning every time.
                # Waking late costs nothing while the limit is short of full: the room grows.
                missing = self.shape.claim_slots - room + 1
                spread = random.uniform(0.0, self.shape.claim_slots)  # noqa: S311 - not secret
                wait = (missing + spread) / limit.slot_decay_per_second
            if deadline is not None and self._clock() + wait > deadline:
                raise self._timeout(timeout)
            self._sleep(wait)

    def _read(self) -> Any:
        from prefect.exceptions import ObjectNotFound

        if self._client is None:
            self._client = self._connect()
        try:
            limit = self._client.read_global_concurrency_limit_by_name(self.name)
        except ObjectNotFound:
            raise self._misfit("it does not exist") from None
        if not limit.active:
            raise SharedLimitOff(self.name)
        # A limit cut for this app, or stricter (ops may lower it), never a looser one or one
        # in other units: both would let more calls through than WeCom allows.
        fits = (
            self.shape.claim_slots <= limit.limit <= self.shape.limit_slots
            and 0 < limit.slot_decay_per_second <= self.shape.decay_slots_per_second * 1.000001
        )
        if not fits:
            raise self._misfit(
                f"it holds {limit.limit} slots and gives back {limit.slot_decay_per_second:g} a "
                f"second, where {self.shape.per_minute} calls a minute need "
                f"{self.shape.limit_slots} and {self.shape.decay_slots_per_second:g}"
            )
        return limit

    def _misfit(self, why: str) -> WeComConfigError:
        return WeComConfigError(
            None,
            "shared rate limit unusable",
            self.api,
            f"cannot pace through the Prefect rate limit {self.name}: {why}. Create or update "
            "the limits with ensure_rate_limits(app) (siyu up does) after changing the WeComApp "
            "block's limits, or turn the block's shared_pacing off",
        )

    def _timeout(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(
            f"no slot of the Prefect rate limit {self.name} within {timeout} s: other runs are "
            "using the whole limit"
        )


def _prefect_client() -> Any:
    """A sync Prefect client for the current API URL, closed when the process exits."""
    from prefect.client.orchestration import get_client

    client = get_client(sync_client=True)
    client.__enter__()
    atexit.register(client.__exit__, None, None, None)
    return client


# Claimed calls are the process's, whichever client spends them: one reservoir per limit (and
# Prefect server) in the process.
_ReservoirKey = tuple[str, str, int]  # Prefect API URL, limit name, calls a minute
_RESERVOIRS: dict[_ReservoirKey, SlotReservoir] = {}


class PrefectPacer:
    """Pacing shared by every process: a Prefect rate limit (slot decay) per API.

    Each process claims a few calls at a time from the limit and spends them itself
    (`SlotReservoir`); `ensure_rate_limits` cuts the limits (`SharedShape`) so that no minute
    sees more than WeCom's limit whatever the processes do. The limits must exist: a missing
    one is an error, not a silent unpaced run; one that ops made inactive falls back to this
    process's bucket. A 45009 seen here also slows this process through its local bucket, on
    top of the shared limit, until successes give the pace back.
    """

    def __init__(
        self,
        scope: str,
        limits: RateLimits,
        *,
        timeout_seconds: float | None = None,
        registry: dict[_RateLimitKey, ApiRateLimit] | None = None,
        reservoirs: dict[_ReservoirKey, SlotReservoir] | None = None,
        connect: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Pace calls of one corp through the Prefect server's limits.

        Args:
            scope: what the platform counts against (base URL and corp id).
            limits: calls a minute per API.
            timeout_seconds: how long a call waits for a shared slot (None: as long as needed).
            registry: where the local buckets live (as `LocalPacer`).
            reservoirs: where claimed calls live; default the process-wide one (a test that
                plays two processes passes one each).
            connect: makes the Prefect client (default: for the current API URL).
            clock, sleep: time for the buckets and the reservoirs.
        """
        self.timeout_seconds = timeout_seconds
        self.limits = limits
        self._local = LocalPacer(scope, limits, registry=registry, clock=clock, sleep=sleep)
        self._reservoirs = _RESERVOIRS if reservoirs is None else reservoirs
        self._connect = connect
        self._clock = clock
        self._sleep = sleep

    def limit(self, api: str) -> ApiRateLimit:
        return self._local.limit(api)

    def reservoir(self, api: str) -> SlotReservoir:
        """This process's claimed calls of `api`."""
        from prefect.settings import PREFECT_API_URL

        per_minute = self.limits.per_minute(api)
        key = (str(PREFECT_API_URL.value()), limit_name(api), per_minute)
        with _SHARED_LIMITS_LOCK:
            reservoir = self._reservoirs.get(key)
            if reservoir is None:
                reservoir = self._reservoirs[key] = SlotReservoir(
                    api,
                    shared_shape(per_minute),
                    connect=self._connect,
                    clock=self._clock,
                    sleep=self._sleep,
                )
            return reservoir

    def acquire(self, api: str) -> float:
        started = self._clock()
        bucket = self._local.limit(api)
        slowed = bucket.share < 1.0
        if slowed:
            bucket.acquire()  # before the shared slot: a claimed call must go out at once
        try:
            self.reservoir(api).take(self.timeout_seconds)
        except SharedLimitOff:
            if not slowed:
                bucket.acquire()
        return self._clock() - started

    def rate_limited(self, api: str) -> int:
        return self._local.rate_limited(api)

    def succeeded(self, api: str) -> None:
        self._local.succeeded(api)


def ensure_rate_limits(app: WeComApp) -> dict[str, int]:
    """Create or update the Prefect rate limit of every WeCom API for this app's limits.

    Returns {limit name: calls a minute}.
    """
    from prefect.client.orchestration import get_client

    limits = RateLimits(app.rate_limit_per_minute, dict(app.api_rate_limits))
    made: dict[str, int] = {}
    with get_client(sync_client=True) as client:
        for api in sorted(declared_calls()):
            per_minute = limits.per_minute(api)
            upsert_rate_limit(client, api, per_minute)
            made[limit_name(api)] = per_minute
    return made


def upsert_rate_limit(client: Any, api: str, per_minute: int) -> SharedShape:
    """Create or update `api`'s Prefect limit (`client`: a sync Prefect client).

    The limit is cut by `shared_shape`, in hundredths of a call, so that no minute sees more
    than `per_minute` calls, whichever processes make them.
    """
    shape = shared_shape(per_minute)
    client.upsert_global_concurrency_limit_by_name(
        limit_name(api), limit=shape.limit_slots, slot_decay_per_second=shape.decay_slots_per_second
    )
    return shape
