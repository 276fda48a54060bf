"""The sandbox's WeCom corp: one state per service (tags, contacts, groups, messages, payments), one reset."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.clock import SandboxClock
from siyu.sandbox.config import SandboxConfig
from siyu.sandbox.contacts import ContactBackend
from siyu.sandbox.groups import GroupBackend
from siyu.sandbox.messages import MessageBackend
from siyu.sandbox.payments import PaymentBackend
from siyu.sandbox.store import StateStore
from siyu.sandbox.tags import TagBackend
from siyu.sandbox.tokens import TokenBackend


class SandboxState:
    """The corp as WeCom would hold it, service by service, over one store and one clock.

    Like moto's backends, each service keeps its own plain dicts and resets on its own; this
    composes them, does the few things that span two (deleting a tag takes it off contacts),
    and owns the config and the clock. Callers hold `lock` around a call.
    """

    def __init__(
        self,
        store: StateStore | None = None,
        clock: SandboxClock | Callable[[], float] | None = None,
    ) -> None:
        self.store = store or StateStore()
        self.clock = clock if isinstance(clock, SandboxClock) else SandboxClock(clock or time.time)
        self.lock = threading.RLock()
        self.shared = Shared(self.store, self.clock)
        self.tokens = TokenBackend(self.shared)
        self.corp_tags = TagBackend(self.shared)
        self.contacts = ContactBackend(self.shared, self.corp_tags)
        self.groupchats = GroupBackend(self.shared, self.contacts)
        self.messages = MessageBackend(self.shared, self.contacts, self.groupchats, self.corp_tags)
        self.payments = PaymentBackend(self.shared, self.contacts)
        self._load()

    @property
    def services(self) -> tuple[Backend, ...]:
        """What a corp reset empties; tokens are credentials and stay."""
        return (self.corp_tags, self.contacts, self.groupchats, self.messages, self.payments)

    @property
    def config(self) -> SandboxConfig:
        return self.shared.config

    def now(self) -> float:
        return self.clock.now()

    # ---- lifecycle -------------------------------------------------------------------

    def _load(self) -> None:
        backends: tuple[Backend, ...] = (self.tokens, *self.services)
        owners: dict[str, Backend] = {}
        for backend in backends:
            kinds = backend.kinds
            if isinstance(backend, MessageBackend):
                kinds = (*kinds, *backend.mass.kinds)
            owners.update(dict.fromkeys(kinds, backend))
        for kind, body in self.store.records():
            if kind == "config":
                self.shared.config = SandboxConfig(**body)
            elif kind == "clock":
                self.clock.restore(body)
            elif kind in owners:
                owners[kind].load(kind, body)
        for backend in backends:
            backend.loaded()

    def reset(self) -> None:
        """Empty the corp, restore the default config and real time; issued tokens stay valid."""
        with self.lock:
            for service in self.services:
                service.reset()
            self.store.delete_kinds(("config", "clock"))
            self.shared.config = SandboxConfig()
            self.clock.reset()

    def close(self) -> None:
        self.store.close()

    def update_config(self, update: BaseModel) -> SandboxConfig:
        with self.lock:
            self.shared.config = self.config.updated(update)
            self.store.put("config", "config", self.config.model_dump())
            return self.config

    def move_clock(
        self, now: float | None = None, advance: float | None = None, frozen: bool | None = None
    ) -> dict[str, Any]:
        """Set the clock (`now`), move it on (`advance` seconds), freeze or run it."""
        with self.lock:
            if now is not None:
                self.clock.set(now, frozen)
            elif frozen is not None:
                self.clock.freeze(frozen)
            if advance:
                self.clock.advance(advance)
            self.store.put("clock", "clock", self.clock.dump())
            return self.clock.describe()

    # ---- what spans two services ------------------------------------------------------

    def del_corp_tag(self, tag_ids: list[str], group_ids: list[str]) -> None:
        """Delete tags (or whole groups) and take them off every contact that carried them."""
        self.contacts.strip_tags(self.corp_tags.del_corp_tag(tag_ids, group_ids))

    def corp_counts(self) -> dict[str, int]:
        """How big the corp is: lets a caller see whether it was seeded yet."""
        tags = self.corp_tags
        return {
            "employees": len(self.contacts.employees),
            "contacts": len(self.contacts.contacts),
            "follows": sum(1 for f in self.contacts.follows.values() if not f["deleted"]),
            "tag_groups": sum(1 for g in tags.tag_groups.values() if not g["deleted"]),
            "tags": sum(1 for t in tags.tags.values() if not t["deleted"]),
            "groups": len(self.groupchats.groups),
            "messages": len(self.messages.mass.messages),
            "payouts": len(self.payments.payouts),
        }

    # ---- the seed loader's view -----------------------------------------------------------

    @property
    def tag_groups(self) -> dict[str, dict[str, Any]]:
        return self.corp_tags.tag_groups

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        return self.groupchats.groups

    def import_corp(
        self,
        employees: list[dict[str, Any]],
        contacts: list[dict[str, Any]],
        follows: list[dict[str, Any]],
        tag_groups: list[dict[str, Any]],
        tags: list[dict[str, Any]],
        groups: list[dict[str, Any]],
    ) -> None:
        """Upsert whole tables at once (the seed loader's path): one transaction per kind."""
        with self.lock:
            self.contacts.import_tables(employees, contacts, follows)
            self.corp_tags.import_tables(tag_groups, tags)
            self.groupchats.import_tables(groups)
