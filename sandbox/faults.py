"""Fault injection and per-API rate limits for the WeCom sandbox: what goes wrong, and when."""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PER_MINUTE = 10_000
WINDOW_SECONDS = 60.0


def api_name(path: str) -> str:
    """`/cgi-bin/externalcontact/mark_tag` and `externalcontact/mark_tag` name the same API.

    WeChat Pay's paths keep their own prefix: `mmpaymkttransfers/sendworkwxredpack`.
    """
    path = path.strip("/")
    return path.removeprefix("cgi-bin/")


class FaultSpec(BaseModel):
    """What a test asks to go wrong: which calls, how often, and how they fail."""

    model_config = ConfigDict(extra="forbid")

    api: str = Field("*", description="API path like externalcontact/mark_tag, or * for all")
    errcode: int | None = Field(None, description="Reply with this errcode instead")
    err_code: str | None = Field(
        None, description="Payout paths: reply with this WeChat Pay err_code (e.g. SYSTEMERROR)"
    )
    times: int | None = Field(None, ge=1, description="Only the first N matching calls")
    rate: float | None = Field(None, ge=0.0, le=1.0, description="This share of matching calls")
    seed: int = Field(0, description="Seed for `rate`, so a run is repeatable")
    latency_ms: int = Field(0, ge=0, description="Sleep this long before answering")
    drop_connection: bool = Field(False, description="Close the socket without a response")
    http_status: int = Field(0, ge=0, le=599, description="Answer with this HTTP status")
    match: dict[str, Any] = Field(default_factory=dict, description="Only calls with these values")
    after_effect: bool = Field(False, description="Apply the call first, then fail the reply")

    @model_validator(mode="after")
    def _does_something(self) -> FaultSpec:
        failing = self.errcode or self.err_code or self.drop_connection or self.http_status
        if not (failing or self.latency_ms):
            raise ValueError(
                "a fault needs errcode, err_code, latency_ms, drop_connection or http_status"
            )
        return self


@dataclass
class Fault:
    """One armed fault: its spec, its own random stream, and how often it fired."""

    fault_id: str
    spec: FaultSpec
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def matches(self, api: str, params: dict[str, Any]) -> bool:
        """Whether a call to `api` with `params` is one this fault targets."""
        if self.spec.api != "*" and api_name(self.spec.api) != api:
            return False
        return all(_value_matches(params.get(k), v) for k, v in self.spec.match.items())

    def fires(self) -> bool:
        """Draw for one matching call; counts towards `times` only when it fires."""
        if self.spec.times is not None and self.fired >= self.spec.times:
            return False
        if self.spec.rate is not None and self.rng.random() >= self.spec.rate:
            return False
        self.fired += 1
        return True


def _value_matches(actual: Any, expected: Any) -> bool:
    # Query values arrive as strings and list bodies (external_userid[]) hold many targets.
    if isinstance(actual, list) and not isinstance(expected, list):
        return any(str(a) == str(expected) for a in actual)
    if isinstance(actual, list) or actual is None:
        return actual == expected
    return str(actual) == str(expected)


@dataclass
class FaultPlan:
    """What the faults decided for one call: a delay, and at most one way to fail."""

    latency_ms: int = 0
    outcome: FaultSpec | None = None

    @property
    def fails_before_effect(self) -> bool:
        return self.outcome is not None and not self.outcome.after_effect

    @property
    def fails_after_effect(self) -> bool:
        return self.outcome is not None and self.outcome.after_effect


class FaultBook:
    """The armed faults, in the order they were added; the first failing one decides."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(fault_id=f"fault-{secrets.token_hex(4)}", spec=spec)
        fault.rng.seed(spec.seed)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def plan(self, api: str, params: dict[str, Any]) -> FaultPlan:
        """Draw every matching fault for this call and combine them into one plan."""
        plan = FaultPlan()
        for fault in self._faults:
            if not fault.matches(api, params) or not fault.fires():
                continue
            plan.latency_ms += fault.spec.latency_ms
            spec = fault.spec
            failing = spec.errcode or spec.err_code or spec.drop_connection or spec.http_status
            if failing and plan.outcome is None:
                plan.outcome = fault.spec
        return plan

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"fault_id": f.fault_id, "fired": f.fired, **f.spec.model_dump()} for f in self._faults
        ]


class RateLimiter:
    """A sliding one-minute window per API path (one corp), like WeCom's per-API limits."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self._limits: dict[str, int] = dict(limits or {"*": DEFAULT_PER_MINUTE})
        self._calls: dict[str, deque[float]] = {}

    def configure(self, limits: dict[str, int]) -> None:
        self._limits = {api_name(k) if k != "*" else k: v for k, v in limits.items()}

    def reset(self) -> None:
        self._calls.clear()

    def limit_for(self, api: str) -> int:
        return self._limits.get(api, self._limits.get("*", DEFAULT_PER_MINUTE))

    def admit(self, api: str, now: float | None = None) -> bool:
        """Count the call if it fits this minute's window; refused calls do not count."""
        now = time.monotonic() if now is None else now
        window = self._calls.setdefault(api, deque())
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) >= self.limit_for(api):
            return False
        window.append(now)
        return True
