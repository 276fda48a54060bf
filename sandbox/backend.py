"""What each sandbox service (tags, contacts, groups, messages, payments) stands on: one store, one clock, one config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from siyu.sandbox.clock import SandboxClock
from siyu.sandbox.config import SandboxConfig
from siyu.sandbox.store import StateStore


@dataclass
class Shared:
    """The store, the clock and the config every service reads (the config is replaced whole)."""

    store: StateStore
    clock: SandboxClock
    config: SandboxConfig = field(default_factory=SandboxConfig)


class Backend:
    """One service's state, moto-style: plain dicts, the record kinds it owns, its own reset.

    A service writes the records it touches to the store at once, so a restart on the same
    state file finds it as it was; `load` takes them back one by one, `loaded` rebuilds what
    is derived from them (indexes, counters).
    """

    kinds: tuple[str, ...] = ()

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.store = shared.store
        self.clear()

    @property
    def config(self) -> SandboxConfig:
        return self.shared.config

    def now(self) -> float:
        return self.shared.clock.now()

    def clear(self) -> None:
        """Empty the in-memory tables."""

    def load(self, kind: str, body: Any) -> None:
        """Take back one stored record of a kind this service owns."""

    def loaded(self) -> None:
        """Everything is loaded: rebuild what is derived."""

    def reset(self) -> None:
        """Forget this service's state, in memory and in the store."""
        self.store.delete_kinds(self.kinds)
        self.clear()
