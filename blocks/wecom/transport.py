"""One WeCom request done right: pacing, the HTTP exchange, the token cache and the retry policy.

The retry policy (tenacity), in one place:

- -1 and 45033 (busy): capped exponential backoff with jitter (0.5 s, 1 s, 2 s, ...).
- 45009 (rate limited): a short backoff first (0.5-1 s), doubling while 45009s follow one
  another on that API, up to the 60 s window; the last try waits out a whole window. The
  pacer slows that API down meanwhile (pacing.py).
- No answer (timeout, dropped connection, HTTP 5xx): a request that never left (connection
  refused, connect timeout) is always retried; one that may have reached WeCom is resent only
  for APIs declared resendable (`calls.py`), else it raises WeComOutcomeUnknown at once.
- Token errors (40014, 42001, 41001) refetch the token once and resend once, outside that budget:
  WeCom refused the call, so nothing happened.
- Anything else fails at once, as a member of the error tree (`errors.py`).

Messages and logs never carry the secret, a token or a robot key.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from siyu.blocks.wecom.calls import ApiCall, declared, read
from siyu.blocks.wecom.errors import (
    RATE_LIMITED,
    TOKEN_CODES,
    Busy,
    TransportFailure,
    WeComError,
    WeComOutcomeUnknown,
    WeComUnavailable,
    raise_for_errcode,
    scrub,
)
from siyu.blocks.wecom.pacing import (
    WINDOW_SECONDS,
    ApiRateLimit,
    LocalPacer,
    Pacer,
    RateLimits,
)
from siyu.schemas.wecom import AccessToken

logger = logging.getLogger("siyu.wecom")

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/"

Method = Literal["GET", "POST"]


class _UrllibCredentialFilter(logging.Filter):
    """Blank credentials in urllib3's DEBUG request lines, which quote the full request URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def _guard_urllib3_logs() -> None:
    pool_logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _UrllibCredentialFilter) for f in pool_logger.filters):
        pool_logger.addFilter(_UrllibCredentialFilter())


def rate_limit_backoff(repeats: int) -> float:
    """Seconds before retrying after the `repeats`-th 45009 in a row: 1, 2, 4, ... up to 60."""
    return min(WINDOW_SECONDS, 2.0 ** max(repeats - 1, 0))


class Transport:
    """The machinery under every API method: `_call(method, api, ...)` and `_pages(...)`.

    Thread-safe: one client may serve many threads (token fetch and pacing are locked; the
    requests Session pools keep-alive connections).
    """

    def __init__(
        self,
        base_url: str,
        corp_id: str,
        secret: str,
        *,
        agent_id: int | None = None,
        timeout: float = 10.0,
        rate_limit_per_minute: int = 10_000,
        api_rate_limits: dict[str, int] | None = None,
        max_attempts: int = 6,
        backoff_max_seconds: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pacer | None = None,
    ) -> None:
        """Connect an app.

        Args:
            base_url: the API root, e.g. https://qyapi.weixin.qq.com/cgi-bin/ or the sandbox's.
            corp_id: the enterprise's corp id.
            secret: the app's secret (never logged nor put in messages).
            agent_id: the app's agent id, needed by `send_app_message`.
            timeout: seconds to wait for a connection and for an answer.
            rate_limit_per_minute: client-side cap per API path, shared by every client of
                this corp in the process.
            api_rate_limits: per-API caps overriding the default, keyed by path
                (e.g. {"externalcontact/mark_tag": 5000, "webhook/send": 20}).
            max_attempts: attempts per call on busy, rate-limit and transport errors.
            backoff_max_seconds: cap of one busy backoff wait (45009 waits up to the window).
            session: a requests Session to use (default: a pooled one owned by the client).
            sleep: how backoff waits (tests pass a fast one).
            pacer: how calls are paced (default: the in-process `LocalPacer` over the limits
                above; `PrefectPacer` shares them across processes).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.corp_id = corp_id
        self._secret = secret
        self.agent_id = agent_id
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        _guard_urllib3_logs()

        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_valid_until = 0.0

        self._pacer: Pacer = pacer or LocalPacer(
            pacing_scope(self.base_url, corp_id),
            RateLimits(rate_limit_per_minute, dict(api_rate_limits or {})),
        )
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session if the client made it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, corp_id={self.corp_id!r})"

    @property
    def calls(self) -> dict[str, int]:
        """HTTP requests sent per API path (retries and token refetches included)."""
        with self._calls_lock:
            return dict(self._calls)

    # -- token ----------------------------------------------------------------------------------

    @read("gettoken")
    def get_token(self) -> str:
        """The access token, fetched on first use and cached until 5 minutes before expiry."""
        with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_valid_until:
                return self._token
            data = self._call(
                "GET",
                "gettoken",
                params={"corpid": self.corp_id, "corpsecret": self._secret},
                with_token=False,
            )
            token = AccessToken.model_validate(data)
            # Short test lifetimes (sandbox) keep half their life rather than going negative.
            keep = (
                token.expires_in - 300 if token.expires_in > 600 else max(token.expires_in / 2, 0)
            )
            self._token = token.access_token
            self._token_valid_until = time.monotonic() + keep
            return self._token

    def _forget_token(self, stale: str | None) -> None:
        # Only the token that failed is dropped: another thread may already hold a fresh one.
        with self._token_lock:
            if self._token == stale:
                self._token = None

    # -- one call, with retries -----------------------------------------------------------------

    def _rate_limit(self, api: str) -> ApiRateLimit:
        """This process's bucket for `api` (shared by the clients of this corp)."""
        return self._pacer.limit(api)

    def _call(
        self,
        method: Method,
        api: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        with_token: bool = True,
    ) -> dict[str, Any]:
        """Make one API call with retries; return the reply body when errcode is 0."""
        call = declared(api)
        transport_failures: list[TransportFailure] = []

        def attempt() -> dict[str, Any]:
            try:
                data = self._attempt(method, api, params, body, with_token)
            except Busy as exc:
                if exc.errcode == RATE_LIMITED:
                    exc.streak = self._pacer.rate_limited(api)
                raise
            except TransportFailure as exc:
                transport_failures.append(exc)
                raise
            except WeComError:
                self._pacer.succeeded(api)  # an answer, even a refusal, is not an overrun
                raise
            self._pacer.succeeded(api)
            return data

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._backoff_seconds,
            retry=retry_if_exception(lambda exc: self._should_retry(exc, call)),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (Busy, TransportFailure) as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise self._unavailable(api, exc, attempts, transport_failures) from None

    @staticmethod
    def _should_retry(exc: BaseException, call: ApiCall) -> bool:
        """The retry decision: busy codes always; no answer only if resending is harmless."""
        if isinstance(exc, Busy):
            return True
        if isinstance(exc, TransportFailure):
            return call.resendable or not exc.reached_server
        return False

    @staticmethod
    def _unavailable(
        api: str,
        last: Busy | TransportFailure,
        attempts: int,
        transport_failures: Sequence[TransportFailure],
    ) -> WeComUnavailable:
        if isinstance(last, Busy):
            errcode, errmsg = last.errcode, last.errmsg
        else:
            errcode, errmsg = None, last.reason
        message = f"WeCom {api} unavailable after {attempts} attempt(s): {errmsg}" + (
            f" (errcode {errcode})" if errcode is not None else ""
        )
        landed = [f.sent_at for f in transport_failures if f.reached_server]
        if landed:
            return WeComOutcomeUnknown(
                errcode,
                errmsg,
                api,
                message + "; the request may have reached WeCom: reconcile before resending",
                attempts=attempts,
                sent_at=max(landed),
            )
        return WeComUnavailable(errcode, errmsg, api, message, attempts=attempts)

    def _attempt(
        self,
        method: Method,
        api: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        with_token: bool,
    ) -> dict[str, Any]:
        """One attempt: the token refetch on a token error happens here, not as a retry."""
        token = self.get_token() if with_token else None
        data = self._exchange(method, api, params, body, token)
        errcode = _errcode(data)
        if with_token and errcode in TOKEN_CODES:
            self._forget_token(token)
            token = self.get_token()
            data = self._exchange(method, api, params, body, token)
            errcode = _errcode(data)
        raise_for_errcode(api, errcode, self._scrub(str(data.get("errmsg", ""))))
        return data

    # -- the HTTP exchange ----------------------------------------------------------------------

    def _exchange(
        self,
        method: Method,
        api: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        token: str | None,
    ) -> dict[str, Any]:
        """One HTTP request and its JSON reply, paced, counted and logged."""
        self._pacer.acquire(api)
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        data_bytes = None
        headers = {}
        if body is not None:
            # WeCom reads UTF-8 JSON; escaped Chinese works too, but unescaped is what it documents.
            data_bytes = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        with self._calls_lock:
            self._calls[api] += 1
        sent_at = time.time()
        started = time.perf_counter()
        try:
            response = self._session.request(
                method,
                self.base_url + api,
                params=query,
                data=data_bytes,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            logger.debug(
                "wecom %s errcode=None %s %.0fms",
                api,
                type(exc).__name__,
                (time.perf_counter() - started) * 1000,
            )
            if not isinstance(exc, requests.ConnectionError | requests.Timeout):
                raise WeComError(
                    None,
                    type(exc).__name__,
                    api,
                    f"WeCom {api} request failed: {type(exc).__name__}",
                ) from None
            # A connect timeout or a refused connection never reached WeCom; anything else may have.
            reached = not isinstance(exc, requests.ConnectTimeout) and not _refused(exc)
            raise TransportFailure(
                api,
                self._scrub(_describe_transport_error(exc)),
                reached_server=reached,
                sent_at=sent_at,
            ) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        data = self._reply_body(api, response)
        logger.debug(
            "wecom %s errcode=%s http=%s %.0fms",
            api,
            _errcode(data) if data is not None else None,
            response.status_code,
            elapsed_ms,
        )
        if data is None:
            raise TransportFailure(
                api,
                f"HTTP {response.status_code} from WeCom",
                reached_server=True,
                sent_at=sent_at,
            )
        return data

    @staticmethod
    def _reply_body(api: str, response: requests.Response) -> dict[str, Any] | None:
        """The reply's JSON object; None for an HTTP 5xx (retried as a transport failure)."""
        if response.status_code >= 500:
            return None
        if response.status_code != 200:
            raise WeComError(
                None,
                f"HTTP {response.status_code}",
                api,
                f"WeCom {api} answered HTTP {response.status_code}: "
                "check the WeComApp block's base_url",
            )
        try:
            data = response.json()
        except ValueError:
            raise WeComError(
                None, "reply is not JSON", api, f"WeCom {api} answered with a non-JSON body"
            ) from None
        if not isinstance(data, dict):
            raise WeComError(None, "reply is not a JSON object", api)
        return data

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secret, self._token)

    # -- backoff --------------------------------------------------------------------------------

    def _backoff_seconds(self, retry_state: RetryCallState) -> float:
        """Busy: capped exponential backoff. 45009: short first, doubling while it repeats."""
        attempt = retry_state.attempt_number
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Busy) and exc.errcode == RATE_LIMITED:
            wait = self._jitter(rate_limit_backoff(max(exc.streak, attempt)))
            if attempt == self.max_attempts - 1:
                # The last try waits out a whole window: a call gives up on 45009 only when the
                # platform refused it for more than a minute, not after a few short waits.
                wait = max(wait, WINDOW_SECONDS - retry_state.idle_for + self._jitter(1.0))
            return wait
        return self._jitter(min(self.backoff_max_seconds, 0.5 * 2 ** (attempt - 1)))

    def _jitter(self, seconds: float) -> float:
        """Spread waits between half and all of `seconds` so retrying clients do not sync up."""
        return seconds * random.uniform(0.5, 1.0)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Busy):
            api, reason = exc.api, f"errcode {exc.errcode}"
        elif isinstance(exc, TransportFailure):
            api, reason = exc.api, exc.reason
        else:  # pragma: no cover - only the two kinds above are retried
            api, reason = "?", type(exc).__name__
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.warning(
            "wecom %s retry after attempt %d/%d: %s; waiting %.1fs",
            api,
            retry_state.attempt_number,
            self.max_attempts,
            reason,
            wait,
        )

    # -- pagination -----------------------------------------------------------------------------

    def _pages(self, api: str, body: dict[str, Any], list_key: str) -> Iterator[dict[str, Any]]:
        """Yield every item of a cursor-paged POST API, page by page."""
        cursor = ""
        seen: set[str] = set()
        while True:
            data = self._call("POST", api, body={**body, "cursor": cursor})
            yield from data.get(list_key) or []
            cursor = data.get("next_cursor") or ""
            if not cursor:
                return
            if cursor in seen:  # a platform bug must not become an endless loop
                raise WeComError(None, f"cursor repeated in {api}", api)
            seen.add(cursor)


def pacing_scope(base_url: str, corp_id: str) -> str:
    """What the platform counts calls against: one corp on one WeCom host."""
    return f"{base_url.rstrip('/')}/ {corp_id}"


def without_none(body: dict[str, Any]) -> dict[str, Any]:
    """The body without its unset (None) fields: WeCom reads a present null as a value."""
    return {k: v for k, v in body.items() if v is not None}


def _errcode(data: dict[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return -1


def _refused(exc: requests.RequestException) -> bool:
    """True when the connection was refused outright, so the request never left."""
    return "refused" in str(exc).lower()


def _describe_transport_error(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within the timeout ({type(exc).__name__})"
    # requests quotes the URL; its query holds credentials and contact ids, so it goes.
    detail = re.sub(r"\?[^\s)'\"]*", "?...", str(exc))
    return f"connection failed ({type(exc).__name__}: {detail})"
