"""The sandbox's movable clock: real time by default, set or advanced by tests to live a month fast."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from siyu.sandbox.platform import CHINA


class SandboxClock:
    """Now as the sandbox's WeCom sees it: the real clock plus an offset, or a frozen instant.

    Every time-based rule (token expiry, employees confirming, monthly and daily caps,
    reminder windows, statistics, payout limits a day) reads `now()`. Per-minute call limits
    do not: they pace real throughput, so they keep the machine's monotonic clock.
    """

    def __init__(self, real: Callable[[], float] = time.time) -> None:
        self._real = real
        self.offset = 0.0
        self.frozen_at: float | None = None

    def now(self) -> float:
        if self.frozen_at is not None:
            return self.frozen_at
        return self._real() + self.offset

    def set(self, ts: float, frozen: bool | None = None) -> None:
        """Jump to `ts`; it keeps running from there unless frozen (now or before)."""
        freeze = self.frozen_at is not None if frozen is None else frozen
        if freeze:
            self.frozen_at = float(ts)
            self.offset = 0.0
        else:
            self.frozen_at = None
            self.offset = float(ts) - self._real()

    def advance(self, seconds: float) -> None:
        if self.frozen_at is not None:
            self.frozen_at += seconds
        else:
            self.offset += seconds

    def freeze(self, frozen: bool) -> None:
        """Stop the clock where it is, or let it run on from where it stopped."""
        self.set(self.now(), frozen=frozen)

    def reset(self) -> None:
        """Back to the machine's time, running."""
        self.offset = 0.0
        self.frozen_at = None

    def describe(self) -> dict[str, Any]:
        now = self.now()
        return {
            "now": now,
            "china_time": datetime.fromtimestamp(now, CHINA).isoformat(timespec="seconds"),
            "frozen": self.frozen_at is not None,
            "offset_seconds": self.offset,
            "real": self.frozen_at is None and self.offset == 0.0,
        }

    def dump(self) -> dict[str, Any]:
        return {"offset": self.offset, "frozen_at": self.frozen_at}

    def restore(self, saved: dict[str, Any]) -> None:
        self.offset = float(saved.get("offset") or 0.0)
        frozen_at = saved.get("frozen_at")
        self.frozen_at = None if frozen_at is None else float(frozen_at)
