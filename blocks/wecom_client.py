"""The WeCom client: one typed method per API call, token cache, retries, client-side pacing.

WeCom answers HTTP 200 with `errcode` in the body, so a 200 is not success until `errcode == 0`.
Every error derives from one root:

    WeComError(errcode, errmsg, api)       any other non-zero errcode; errcode None = no answer
    ├── WeComConfigError                   40001 40013 60011 60020: fix the block, do not retry
    ├── WeComRowError                      one row (contact, tag) refused; the others go on
    │   ├── ContactUnreachable             84061: the customer deleted the employee
    │   ├── InvalidExternalUser            40096: no such external_userid
    │   └── InvalidTag                     40068: no such tag id (refresh the catalog)
    └── WeComUnavailable                   busy / rate limit / transport errors outlasted retries
        └── WeComOutcomeUnknown            a transport error where the request may have reached
                                           WeCom: reconcile (ask WeCom) before sending again

Retries (tenacity) cover errcode -1, 45009, 45033, HTTP 5xx, timeouts and connection errors,
with capped exponential backoff and jitter; 45009 waits at least until the next minute window.
Token errors (40014, 42001, 41001) refetch the token once and resend once, outside that budget.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from siyu.schemas.wecom import (
    AccessToken,
    AppMessageResult,
    ContactDetail,
    ContactWay,
    ContactWithFollowInfo,
    GroupChat,
    GroupChatRef,
    GroupMsg,
    GroupMsgSendResult,
    GroupMsgTask,
    JoinWay,
    MomentTaskResult,
    MsgTemplateResult,
    NewTag,
    TagGroup,
)

logger = logging.getLogger("siyu.wecom")

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/"

TOKEN_CODES = frozenset({40014, 42001, 41001})
BUSY_CODES = frozenset({-1, 45009, 45033})
RATE_LIMITED = 45009
CONFIG_CODES = frozenset({40001, 40013, 60011, 60020})

_CONFIG_ADVICE = {
    40001: "WeCom rejected the corp secret (40001): check the WeComApp block's secret",
    40013: "WeCom rejected the corp id (40013): check the WeComApp block's corp_id",
    60011: (
        "WeCom denied {api} to this app (60011): grant the app the customer-contact permission "
        "and put the employees in its visible range"
    ),
    60020: (
        "WeCom refused this machine's IP for {api} (60020): add it to the app's trusted IP list"
    ),
}

# Anything that looks like a credential in a URL or a message is blanked before it is shown.
_CREDENTIAL_IN_TEXT = re.compile(r"(access_token|corpsecret|key)=[^&\s'\")]+", re.IGNORECASE)


def _scrub(text: str, *secrets: str | None) -> str:
    """Blank credentials out of text that may reach a person: URLs, library messages."""
    text = _CREDENTIAL_IN_TEXT.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _UrllibCredentialFilter(logging.Filter):
    """Blank credentials in urllib3's DEBUG request lines, which quote the full request URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = _scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def _guard_urllib3_logs() -> None:
    pool_logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _UrllibCredentialFilter) for f in pool_logger.filters):
        pool_logger.addFilter(_UrllibCredentialFilter())


# -- the error tree -----------------------------------------------------------------------------


class WeComError(Exception):
    """WeCom refused a call (`errcode` != 0) or never answered it (`errcode` None)."""

    def __init__(
        self, errcode: int | None, errmsg: str, api: str, message: str | None = None
    ) -> None:
        self.errcode = errcode
        self.errmsg = errmsg
        self.api = api
        super().__init__(message or f"WeCom {api} failed with errcode {errcode}: {errmsg}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (Prefect may persist a failed task's exception).
        return (self.__class__, (self.errcode, self.errmsg, self.api, str(self)), self.__dict__)


class WeComConfigError(WeComError):
    """The app's configuration is wrong (secret, corp id, privilege, IP): fix it, do not retry."""


class WeComRowError(WeComError):
    """WeCom refused the call for this one row (contact or tag); other rows are unaffected."""


class ContactUnreachable(WeComRowError):
    """84061: no contact relation any more; the customer deleted the employee."""


class InvalidExternalUser(WeComRowError):
    """40096: the external_userid is unknown to WeCom."""


class InvalidTag(WeComRowError):
    """40068: a tag id is unknown or deleted; refresh the tag catalog."""


class WeComUnavailable(WeComError):
    """WeCom stayed busy, rate limited or unreachable through every retry."""

    def __init__(
        self,
        errcode: int | None,
        errmsg: str,
        api: str,
        message: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.attempts = attempts
        super().__init__(errcode, errmsg, api, message)


class WeComOutcomeUnknown(WeComUnavailable):
    """The request may have reached WeCom but no answer came back: reconcile before resending."""


_ROW_ERRORS: dict[int, type[WeComRowError]] = {
    84061: ContactUnreachable,
    40096: InvalidExternalUser,
    40068: InvalidTag,
}


class _Busy(WeComError):
    """One attempt met -1 / 45009 / 45033: retried, then surfaced as WeComUnavailable."""


class _TransportFailure(Exception):
    """One attempt got no WeCom answer (timeout, dropped connection, HTTP 5xx)."""

    def __init__(self, api: str, reason: str, *, reached_server: bool) -> None:
        self.api = api
        self.reason = reason  # already scrubbed
        self.reached_server = reached_server
        super().__init__(f"{api}: {reason}")


def _raise_for_errcode(api: str, errcode: int, errmsg: str) -> None:
    """Turn a non-zero errcode into the right member of the error tree."""
    if errcode == 0:
        return
    if errcode in CONFIG_CODES:
        advice = _CONFIG_ADVICE[errcode].format(api=api)
        raise WeComConfigError(errcode, errmsg, api, f"{advice} (WeCom said: {errmsg})")
    if errcode in _ROW_ERRORS:
        raise _ROW_ERRORS[errcode](errcode, errmsg, api)
    if errcode in BUSY_CODES:
        raise _Busy(errcode, errmsg, api)
    raise WeComError(errcode, errmsg, api)


# -- client-side pacing -------------------------------------------------------------------------


class ApiRateLimit:
    """A per-minute call budget for one API, as a token bucket that allows a small burst.

    The bucket holds `burst` calls (5 % of the limit) and refills at (limit - burst) per minute,
    so any 60-second window sees fewer than `per_minute` calls (the platform's window is never
    exceeded) while a sustained run reaches 95 % of the limit. Callers reserve a slot under the
    lock and sleep outside it, so waiting threads are served in arrival order.
    """

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
        self.burst = max(1, per_minute // 20)
        self.rate_per_second = max(per_minute - self.burst, 1) / 60.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._updated = clock()

    def reserve(self) -> float:
        """Take one call's slot; return how many seconds the caller must wait before calling."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_second)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_second

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


# The platform counts calls per corp, not per client object: every client of the same corp and
# limit in this process draws from one bucket, so two tasks each holding a client stay under it
# together. Across processes, Prefect's global concurrency limits do the same job.
_RateLimitKey = tuple[str, str, str, int]  # base_url, corp_id, api, per_minute
_SHARED_LIMITS: dict[_RateLimitKey, ApiRateLimit] = {}
_SHARED_LIMITS_LOCK = threading.Lock()


def _shared_rate_limit(key: _RateLimitKey) -> ApiRateLimit:
    with _SHARED_LIMITS_LOCK:
        limit = _SHARED_LIMITS.get(key)
        if limit is None:
            limit = _SHARED_LIMITS[key] = ApiRateLimit(key[3])
        return limit


# -- the client ---------------------------------------------------------------------------------


class WeComClient:
    """A WeCom self-built app's connection: call the API with typed methods and models.

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
            backoff_max_seconds: cap of one exponential backoff wait.
            session: a requests Session to use (default: a pooled one owned by the client).
            sleep: how backoff waits (tests pass a fast one); pacing always waits in real time.
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

        self._default_limit = rate_limit_per_minute
        self._api_limits = dict(api_rate_limits or {})

        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session if the client made it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> WeComClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeComClient(base_url={self.base_url!r}, corp_id={self.corp_id!r})"

    @property
    def calls(self) -> dict[str, int]:
        """HTTP requests sent per API path (retries and token refetches included)."""
        with self._calls_lock:
            return dict(self._calls)

    # -- token ----------------------------------------------------------------------------------

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

    # -- the call machinery ---------------------------------------------------------------------

    def _rate_limit(self, api: str) -> ApiRateLimit:
        per_minute = self._api_limits.get(api, self._default_limit)
        return _shared_rate_limit((self.base_url, self.corp_id, api, per_minute))

    def _call(
        self,
        method: Literal["GET", "POST"],
        api: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        with_token: bool = True,
        retry_transport_errors: bool = True,
    ) -> dict[str, Any]:
        """Make one API call with retries; return the reply body when errcode is 0."""
        transport_failures: list[_TransportFailure] = []

        def attempt() -> dict[str, Any]:
            try:
                return self._attempt(method, api, params, body, with_token)
            except _TransportFailure as exc:
                transport_failures.append(exc)
                raise

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._backoff_seconds,
            retry=retry_if_exception(
                lambda exc: self._should_retry(exc, retry_transport_errors=retry_transport_errors)
            ),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (_Busy, _TransportFailure) as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise self._unavailable(api, exc, attempts, transport_failures) from None

    def _should_retry(self, exc: BaseException, *, retry_transport_errors: bool) -> bool:
        """The retry decision: busy codes always; no answer only when the caller allows it."""
        if isinstance(exc, _Busy):
            return True
        if isinstance(exc, _TransportFailure):
            return retry_transport_errors or not exc.reached_server
        return False

    def _unavailable(
        self,
        api: str,
        last: _Busy | _TransportFailure,
        attempts: int,
        transport_failures: Sequence[_TransportFailure],
    ) -> WeComUnavailable:
        if isinstance(last, _Busy):
            errcode, errmsg = last.errcode, last.errmsg
        else:
            errcode, errmsg = None, last.reason
        message = f"WeCom {api} unavailable after {attempts} attempt(s): {errmsg}" + (
            f" (errcode {errcode})" if errcode is not None else ""
        )
        if any(f.reached_server for f in transport_failures):
            return WeComOutcomeUnknown(
                errcode,
                errmsg,
                api,
                message + "; the request may have reached WeCom: reconcile before resending",
                attempts=attempts,
            )
        return WeComUnavailable(errcode, errmsg, api, message, attempts=attempts)

    def _attempt(
        self,
        method: Literal["GET", "POST"],
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
        _raise_for_errcode(api, errcode, self._scrub(str(data.get("errmsg", ""))))
        return data

    def _exchange(
        self,
        method: Literal["GET", "POST"],
        api: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        token: str | None,
    ) -> dict[str, Any]:
        """One HTTP request and its JSON reply, paced, counted and logged."""
        self._rate_limit(api).acquire()
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
            raise _TransportFailure(
                api, self._scrub(_describe_transport_error(exc)), reached_server=reached
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
            raise _TransportFailure(
                api, f"HTTP {response.status_code} from WeCom", reached_server=True
            )
        return data

    def _reply_body(self, api: str, response: requests.Response) -> dict[str, Any] | None:
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
        return _scrub(text, self._secret, self._token)

    # -- backoff --------------------------------------------------------------------------------

    def _backoff_seconds(self, retry_state: RetryCallState) -> float:
        """Capped exponential backoff with jitter; 45009 waits for the next minute window."""
        attempt = retry_state.attempt_number
        wait = self._jitter(min(self.backoff_max_seconds, 0.5 * 2 ** (attempt - 1)))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Busy) and exc.errcode == RATE_LIMITED:
            wait = max(wait, self._seconds_to_next_minute() + self._jitter(1.0))
        return wait

    def _jitter(self, seconds: float) -> float:
        """Spread waits between half and all of `seconds` so retrying clients do not sync up."""
        return seconds * random.uniform(0.5, 1.0)

    def _seconds_to_next_minute(self) -> float:
        """Until the platform's per-minute window plausibly reopens (windows align to minutes)."""
        return 60.0 - (time.time() % 60.0)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Busy):
            api, reason = exc.api, f"errcode {exc.errcode}"
        elif isinstance(exc, _TransportFailure):
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

    # -- corp tags ------------------------------------------------------------------------------

    def get_corp_tag_list(
        self, tag_ids: Sequence[str] | None = None, group_ids: Sequence[str] | None = None
    ) -> list[TagGroup]:
        """The corp tag groups with their tags (all, or those asked for)."""
        body: dict[str, Any] = {}
        if tag_ids:
            body["tag_id"] = list(tag_ids)
        if group_ids:
            body["group_id"] = list(group_ids)
        data = self._call("POST", "externalcontact/get_corp_tag_list", body=body)
        return [TagGroup.model_validate(g) for g in data.get("tag_group") or []]

    def add_corp_tag(
        self,
        *,
        group_id: str | None = None,
        group_name: str | None = None,
        tags: Sequence[NewTag],
        order: int | None = None,
        retry_transport_errors: bool = True,
    ) -> TagGroup:
        """Create tags in an existing group (`group_id`) or a group found/created by name."""
        if not group_id and not group_name:
            raise ValueError("add_corp_tag needs group_id or group_name")
        body: dict[str, Any] = {
            "tag": [t.model_dump(exclude_none=True) for t in tags],
        }
        if group_id:
            body["group_id"] = group_id
        if group_name:
            body["group_name"] = group_name
        if order is not None:
            body["order"] = order
        data = self._call(
            "POST",
            "externalcontact/add_corp_tag",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )
        return TagGroup.model_validate(data["tag_group"])

    def edit_corp_tag(
        self,
        id: str,  # the API's own name for a tag or group id
        *,
        name: str | None = None,
        order: int | None = None,
        retry_transport_errors: bool = True,
    ) -> None:
        """Rename or reorder a tag or a tag group."""
        body: dict[str, Any] = {"id": id}
        if name is not None:
            body["name"] = name
        if order is not None:
            body["order"] = order
        self._call(
            "POST",
            "externalcontact/edit_corp_tag",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )

    def del_corp_tag(
        self,
        *,
        tag_ids: Sequence[str] = (),
        group_ids: Sequence[str] = (),
        retry_transport_errors: bool = True,
    ) -> None:
        """Delete tags and/or whole tag groups (WeCom removes them from every contact)."""
        if not tag_ids and not group_ids:
            raise ValueError("del_corp_tag needs tag_ids or group_ids")
        self._call(
            "POST",
            "externalcontact/del_corp_tag",
            body={"tag_id": list(tag_ids), "group_id": list(group_ids)},
            retry_transport_errors=retry_transport_errors,
        )

    def mark_tag(
        self,
        userid: str,
        external_userid: str,
        *,
        add_tag: Sequence[str] = (),
        remove_tag: Sequence[str] = (),
        retry_transport_errors: bool = True,
    ) -> None:
        """Add and remove corp tags on one (employee, contact) pair. Idempotent in effect."""
        if not add_tag and not remove_tag:
            raise ValueError("mark_tag needs tags to add or to remove")
        self._call(
            "POST",
            "externalcontact/mark_tag",
            body={
                "userid": userid,
                "external_userid": external_userid,
                "add_tag": list(add_tag),
                "remove_tag": list(remove_tag),
            },
            retry_transport_errors=retry_transport_errors,
        )

    # -- contacts -------------------------------------------------------------------------------

    def get_follow_user_list(self) -> list[str]:
        """Userids of the employees who may have external contacts."""
        data = self._call("GET", "externalcontact/get_follow_user_list")
        return list(data.get("follow_user") or [])

    def list_contacts(self, userid: str) -> list[str]:
        """The external_userids of one employee's contacts."""
        try:
            data = self._call("GET", "externalcontact/list", params={"userid": userid})
        except ContactUnreachable:
            # The platform answers 84061 for an employee without any contact.
            return []
        return list(data.get("external_userid") or [])

    def get_contact(self, external_userid: str) -> ContactDetail:
        """One contact and every employee they added (all follow_user pages gathered)."""
        cursor = ""
        first: dict[str, Any] | None = None
        follow_user: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            params = {"external_userid": external_userid}
            if cursor:
                params["cursor"] = cursor
            data = self._call("GET", "externalcontact/get", params=params)
            first = first or data
            follow_user.extend(data.get("follow_user") or [])
            cursor = data.get("next_cursor") or ""
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        return ContactDetail.model_validate(
            {"external_contact": first["external_contact"], "follow_user": follow_user}
        )

    def iter_contacts_by_user(
        self, userids: Iterable[str], *, limit: int = 100
    ) -> Iterator[ContactWithFollowInfo]:
        """Every (contact, follow info) of these employees, 100 employees per request, paged."""
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100")
        ids = list(userids)
        for start in range(0, len(ids), 100):
            body = {"userid_list": ids[start : start + 100], "limit": limit}
            for item in self._pages(
                "externalcontact/batch/get_by_user", body, "external_contact_list"
            ):
                yield ContactWithFollowInfo.model_validate(item)

    # -- customer groups ------------------------------------------------------------------------

    def iter_group_chats(
        self,
        *,
        status_filter: int = 0,
        owner_userids: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> Iterator[GroupChatRef]:
        """Every customer group (optionally of these owners), paged."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        body: dict[str, Any] = {"status_filter": status_filter, "limit": limit}
        if owner_userids:
            body["owner_filter"] = {"userid_list": list(owner_userids)}
        for item in self._pages("externalcontact/groupchat/list", body, "group_chat_list"):
            yield GroupChatRef.model_validate(item)

    def get_group_chat(self, chat_id: str, *, need_name: bool = True) -> GroupChat:
        """A customer group with its members and admins."""
        data = self._call(
            "POST",
            "externalcontact/groupchat/get",
            body={"chat_id": chat_id, "need_name": int(need_name)},
        )
        return GroupChat.model_validate(data["group_chat"])

    def add_join_way(
        self,
        *,
        chat_id_list: Sequence[str],
        scene: Literal[1, 2] = 2,
        auto_create_room: bool = False,
        room_base_name: str | None = None,
        room_base_id: int | None = None,
        state: str | None = None,
        remark: str | None = None,
        retry_transport_errors: bool = True,
    ) -> str:
        """Create a "join these groups" QR code / mini-program configuration; return config_id."""
        body = _without_none(
            {
                "scene": scene,
                "chat_id_list": list(chat_id_list),
                "auto_create_room": int(auto_create_room),
                "room_base_name": room_base_name,
                "room_base_id": room_base_id,
                "state": state,
                "remark": remark,
            }
        )
        data = self._call(
            "POST",
            "externalcontact/groupchat/add_join_way",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )
        return str(data["config_id"])

    def get_join_way(self, config_id: str) -> JoinWay:
        """A "join the group" configuration with its QR code."""
        data = self._call(
            "POST", "externalcontact/groupchat/get_join_way", body={"config_id": config_id}
        )
        return JoinWay.model_validate(data["join_way"])

    # -- mass messages --------------------------------------------------------------------------

    def add_msg_template(
        self,
        *,
        sender: str | None = None,
        chat_type: Literal["single", "group"] = "single",
        external_userid: Sequence[str] = (),
        chat_id_list: Sequence[str] = (),
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        allow_select: bool = False,
        retry_transport_errors: bool = True,
    ) -> MsgTemplateResult:
        """Create a mass message the sender confirms in the client; return its msgid."""
        body: dict[str, Any] = {"chat_type": chat_type, "allow_select": allow_select}
        if sender:
            body["sender"] = sender
        if external_userid:
            body["external_userid"] = list(external_userid)
        if chat_id_list:
            body["chat_id_list"] = list(chat_id_list)
        if text is not None:
            body["text"] = {"content": text}
        if attachments:
            body["attachments"] = list(attachments)
        data = self._call(
            "POST",
            "externalcontact/add_msg_template",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )
        return MsgTemplateResult.model_validate(data)

    def iter_groupmsg_list(
        self,
        *,
        start_time: int,
        end_time: int,
        chat_type: Literal["single", "group"] = "single",
        creator: str | None = None,
        filter_type: int = 2,
        limit: int = 100,
    ) -> Iterator[GroupMsg]:
        """Mass messages created in [start_time, end_time] (epoch s), optionally by `creator`."""
        body: dict[str, Any] = {
            "chat_type": chat_type,
            "start_time": start_time,
            "end_time": end_time,
            "filter_type": filter_type,
            "limit": limit,
        }
        if creator:
            body["creator"] = creator
        for item in self._pages("externalcontact/get_groupmsg_list_v2", body, "group_msg_list"):
            yield GroupMsg.model_validate(item)

    def iter_groupmsg_task(self, msgid: str, *, limit: int = 1000) -> Iterator[GroupMsgTask]:
        """Each sender's task for a mass message (sent or not)."""
        body = {"msgid": msgid, "limit": limit}
        for item in self._pages("externalcontact/get_groupmsg_task", body, "task_list"):
            yield GroupMsgTask.model_validate(item)

    def iter_groupmsg_send_result(
        self, msgid: str, userid: str, *, limit: int = 1000
    ) -> Iterator[GroupMsgSendResult]:
        """Each target's outcome of a mass message from one sender."""
        body = {"msgid": msgid, "userid": userid, "limit": limit}
        for item in self._pages("externalcontact/get_groupmsg_send_result", body, "send_list"):
            yield GroupMsgSendResult.model_validate(item)

    def remind_groupmsg_send(self, msgid: str, *, retry_transport_errors: bool = True) -> None:
        """Remind the senders to confirm a mass message (WeCom allows 3 reminders a day)."""
        self._call(
            "POST",
            "externalcontact/remind_groupmsg_send",
            body={"msgid": msgid},
            retry_transport_errors=retry_transport_errors,
        )

    def cancel_groupmsg_send(self, msgid: str, *, retry_transport_errors: bool = True) -> None:
        """Stop a mass message that senders have not confirmed yet."""
        self._call(
            "POST",
            "externalcontact/cancel_groupmsg_send",
            body={"msgid": msgid},
            retry_transport_errors=retry_transport_errors,
        )

    # -- messages to employees and ops ----------------------------------------------------------

    def send_app_message(
        self,
        touser: Sequence[str],
        *,
        msgtype: Literal["text", "textcard", "news", "markdown"],
        content: dict[str, Any],
        retry_transport_errors: bool = True,
    ) -> AppMessageResult:
        """Send an app message to employees (how an employee is asked to act)."""
        if self.agent_id is None:
            raise WeComConfigError(
                None,
                "agent_id missing",
                "message/send",
                "app messages need the app's agent id: set agent_id on the WeComApp block",
            )
        if not touser:
            raise ValueError("send_app_message needs at least one userid")
        data = self._call(
            "POST",
            "message/send",
            body={
                "touser": "|".join(touser),
                "msgtype": msgtype,
                "agentid": self.agent_id,
                msgtype: content,
            },
            retry_transport_errors=retry_transport_errors,
        )
        return AppMessageResult.model_validate(data)

    def send_webhook(
        self, key: str, payload: dict[str, Any], *, retry_transport_errors: bool = True
    ) -> None:
        """Post to a group robot (`webhook/send?key=`); no access token. The key is a secret."""
        self._call(
            "POST",
            "webhook/send",
            params={"key": key},
            body=payload,
            with_token=False,
            retry_transport_errors=retry_transport_errors,
        )

    # -- welcome and Moments --------------------------------------------------------------------

    def send_welcome_msg(
        self,
        welcome_code: str,
        *,
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        retry_transport_errors: bool = True,
    ) -> None:
        """Greet a new contact with the welcome code of the add event (valid about 20 s)."""
        body: dict[str, Any] = {"welcome_code": welcome_code}
        if text is not None:
            body["text"] = {"content": text}
        if attachments:
            body["attachments"] = list(attachments)
        self._call(
            "POST",
            "externalcontact/send_welcome_msg",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )

    def add_contact_way(
        self,
        *,
        type: Literal[1, 2] = 1,  # the API's name: 1 single employee, 2 several
        scene: Literal[1, 2] = 2,
        user: Sequence[str] = (),
        state: str | None = None,
        skip_verify: bool = True,
        remark: str | None = None,
        retry_transport_errors: bool = True,
    ) -> ContactWay:
        """Create a "contact me" QR code for employees, tagged with a channel `state`."""
        body = _without_none(
            {
                "type": type,
                "scene": scene,
                "user": list(user),
                "state": state,
                "skip_verify": skip_verify,
                "remark": remark,
            }
        )
        data = self._call(
            "POST",
            "externalcontact/add_contact_way",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )
        return ContactWay.model_validate(data)

    def add_moment_task(
        self,
        *,
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        sender_userids: Sequence[str] = (),
        tag_ids: Sequence[str] = (),
        retry_transport_errors: bool = True,
    ) -> str:
        """Create a Moments post for employees to publish; return the job id."""
        body: dict[str, Any] = {}
        if text is not None:
            body["text"] = {"content": text}
        if attachments:
            body["attachments"] = list(attachments)
        visible: dict[str, Any] = {}
        if sender_userids:
            visible["sender_list"] = {"user_list": list(sender_userids)}
        if tag_ids:
            visible["external_contact_list"] = {"tag_list": list(tag_ids)}
        if visible:
            body["visible_range"] = visible
        data = self._call(
            "POST",
            "externalcontact/add_moment_task",
            body=body,
            retry_transport_errors=retry_transport_errors,
        )
        return str(data["jobid"])

    def get_moment_task_result(self, jobid: str) -> MomentTaskResult:
        """The state of a Moments job: 1 running, 2 done, 3 failed."""
        data = self._call("GET", "externalcontact/get_moment_task_result", params={"jobid": jobid})
        return MomentTaskResult.model_validate(data)


def _errcode(data: dict[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return -1


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _refused(exc: requests.RequestException) -> bool:
    """True when the connection was refused outright, so the request never left."""
    return "refused" in str(exc).lower()


def _describe_transport_error(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within the timeout ({type(exc).__name__})"
    # requests quotes the URL; its query holds credentials and contact ids, so it goes.
    detail = re.sub(r"\?[^\s)'\"]*", "?...", str(exc))
    return f"connection failed ({type(exc).__name__}: {detail})"
