"""What each WeCom API is: a read, or a write that may or may not be resent after no answer.

Each client method declares its API once, beside itself:

    @write("externalcontact/mark_tag", resendable=True)     # sets a state: resending is harmless
    def mark_tag(...): ...

    @write("externalcontact/add_msg_template", resendable=False)   # a second one is a duplicate
    def add_msg_template(...): ...

The transport looks the declaration up by API path for every request, so the resend policy is
never a caller's argument. Reads are always resendable. A write is resent only where its
declaration says so; otherwise a request that may have reached WeCom without an answer raises
WeComOutcomeUnknown after that one request, and the caller reconciles (asks WeCom) instead.
An API nobody declared cannot be called: a new method must say what it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class ApiCall:
    """One WeCom API as the client treats it."""

    api: str
    writes: bool
    resendable: bool


_DECLARED: dict[str, ApiCall] = {}


def _declare(call: ApiCall) -> Callable[[F], F]:
    def mark(method: F) -> F:
        known = _DECLARED.setdefault(call.api, call)
        if known != call:
            raise TypeError(f"{call.api} is declared twice, differently: {known} and {call}")
        method.wecom_call = call  # type: ignore[attr-defined]  # for tests and readers
        return method

    return mark


def read(api: str) -> Callable[[F], F]:
    """Declare a method that reads `api`: any unanswered request may be sent again."""
    return _declare(ApiCall(api, writes=False, resendable=True))


def write(api: str, *, resendable: bool) -> Callable[[F], F]:
    """Declare a method that changes WeCom through `api`, and whether a lost reply may be resent.

    resendable=True only for calls that set a state (sending twice leaves what sending once
    does); anything that creates or sends something must say False.
    """
    return _declare(ApiCall(api, writes=True, resendable=resendable))


def declared(api: str) -> ApiCall:
    """The declaration of `api`; an undeclared API is a programming error, named here."""
    try:
        return _DECLARED[api]
    except KeyError:
        raise LookupError(
            f"WeCom API {api} is not declared: mark its client method with @read or @write"
        ) from None


def declared_calls() -> dict[str, ApiCall]:
    """Every declared API (filled as the client's modules are imported)."""
    return dict(_DECLARED)
