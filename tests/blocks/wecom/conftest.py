"""Fixtures for the WeCom client's tests: clients on the sandbox, fake time, a scripted WeCom."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from siyu.blocks.wecom import LocalPacer, RateLimits, WeComClient, pacing
from siyu.schemas.settings import SANDBOX_AGENT_ID


@pytest.fixture(autouse=True)
def own_pacing(monkeypatch) -> None:
    """Each test paces in buckets of its own: no 45009 streak or slow-down leaks between tests."""
    monkeypatch.setattr(pacing, "_SHARED_LIMITS", {})


class FakeClock:
    """Time that moves only when someone sleeps: pacing and backoff share it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Waits(list):
    """Records the backoff waits the client asks for, without waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def seeded(sandbox, seed_dir):
    sandbox.seed(seed_dir)
    return sandbox


@pytest.fixture
def make_client(sandbox, waits) -> Iterator[Callable[..., WeComClient]]:
    """Clients on the sandbox; backoff waits are recorded, not slept."""
    made: list[WeComClient] = []

    def make(**overrides: Any) -> WeComClient:
        kwargs: dict[str, Any] = {
            "base_url": sandbox.api_base,
            "corp_id": sandbox.corp_id,
            "secret": sandbox.secret,
            "agent_id": SANDBOX_AGENT_ID,
            "timeout": 5.0,
            "max_attempts": 4,
            "sleep": waits,
        }
        kwargs.update(overrides)
        client = WeComClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def fake_time_pacer(clock: FakeClock, **per_api: int) -> LocalPacer:
    """A pacer of its own on the fake clock (10,000 a minute unless `per_api` says otherwise)."""
    limits = RateLimits(10_000, {k.replace("__", "/"): v for k, v in per_api.items()})
    return LocalPacer("fake", limits, registry={}, clock=clock, sleep=clock.sleep)


class ScriptedWeCom(requests.Session):
    """A stand-in for WeCom behind the client's Session: `answer(api, body)` makes each reply.

    For behaviour the sandbox does not serve (yet), or where the test must own the clock.
    """

    def __init__(self, answer: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self.answer = answer
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        api = url.split("/cgi-bin/", 1)[1]
        body = (
            json.loads(kwargs["data"]) if kwargs.get("data") else dict(kwargs.get("params") or {})
        )
        body.pop("access_token", None)
        self.sent.append((api, body))
        if api == "gettoken":
            reply: dict[str, Any] = {"errcode": 0, "access_token": "t-1", "expires_in": 7200}
        else:
            reply = self.answer(api, body)
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(reply).encode()
        response.headers["Content-Type"] = "application/json"
        return response

    def calls(self, api: str) -> list[dict[str, Any]]:
        return [body for sent_api, body in self.sent if sent_api == api]


def scripted_client(
    answer: Callable[[str, dict[str, Any]], dict[str, Any]], **overrides: Any
) -> tuple[WeComClient, ScriptedWeCom]:
    session = ScriptedWeCom(answer)
    kwargs: dict[str, Any] = {
        "base_url": "http://wecom.invalid/cgi-bin/",
        "corp_id": "ww-scripted",
        "secret": "scripted-secret",
        "session": session,
    }
    kwargs.update(overrides)
    return WeComClient(**kwargs), session
