"""The WeCom client's error tree: what a refused or unanswered call means, and what to do.

WeCom answers HTTP 200 with `errcode` in the body, so a 200 is not success until `errcode == 0`.
Every error derives from one root:

    WeComError(errcode, errmsg, api)       any other non-zero errcode; errcode None = no answer
    ├── WeComConfigError                   40001 40013 60011 60020: fix the block, do not retry
    ├── WeComRowError                      one row (contact, tag) refused; the others go on
    │   ├── ContactUnreachable             84061: the customer deleted the employee
    │   ├── InvalidExternalUser            40096: no such external_userid
    │   └── InvalidTag                     40068: no such tag id (refresh the catalog)
    └── WeComUnavailable                   busy / rate limit / transport errors outlasted retries
        └── WeComOutcomeUnknown            the request may have reached WeCom and no answer came
                                           back: reconcile (ask WeCom) before sending again

A write that must not be resent (see `calls.py`) raises WeComOutcomeUnknown after its first
unanswered request; a resendable one only once its retries are spent.
"""

from __future__ import annotations

import re
from typing import Any

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


def scrub(text: str, *secrets: str | None) -> str:
    """Blank credentials out of text that may reach a person: URLs, library messages."""
    text = _CREDENTIAL_IN_TEXT.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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
    """The request may have reached WeCom but no answer came back: reconcile before resending.

    `sent_at` (epoch seconds) is when the last request that may have landed left: WeCom may
    still act on it for a while after the client stopped waiting, so a reconcile that asks
    WeCom too soon can miss it (a slow reply is not a lost one).
    """

    def __init__(
        self,
        errcode: int | None,
        errmsg: str,
        api: str,
        message: str | None = None,
        attempts: int = 0,
        sent_at: float | None = None,
    ) -> None:
        self.sent_at = sent_at
        super().__init__(errcode, errmsg, api, message, attempts)


ROW_ERRORS: dict[int, type[WeComRowError]] = {
    84061: ContactUnreachable,
    40096: InvalidExternalUser,
    40068: InvalidTag,
}


class Busy(WeComError):
    """One attempt met -1 / 45009 / 45033: WeCom refused it unapplied, so it is retried."""

    streak: int = 0  # for 45009: consecutive rate-limit answers on this API, this one included


class TransportFailure(Exception):
    """One attempt got no WeCom answer (timeout, dropped connection, HTTP 5xx)."""

    def __init__(self, api: str, reason: str, *, reached_server: bool, sent_at: float) -> None:
        self.api = api
        self.reason = reason  # already scrubbed
        self.reached_server = reached_server
        self.sent_at = sent_at
        super().__init__(f"{api}: {reason}")


def raise_for_errcode(api: str, errcode: int, errmsg: str) -> None:
    """Turn a non-zero errcode into the right member of the error tree."""
    if errcode == 0:
        return
    if errcode in CONFIG_CODES:
        advice = _CONFIG_ADVICE[errcode].format(api=api)
        raise WeComConfigError(errcode, errmsg, api, f"{advice} (WeCom said: {errmsg})")
    if errcode in ROW_ERRORS:
        raise ROW_ERRORS[errcode](errcode, errmsg, api)
    if errcode in BUSY_CODES:
        raise Busy(errcode, errmsg, api)
    raise WeComError(errcode, errmsg, api)
