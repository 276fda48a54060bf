"""The sandbox's control API (/sandbox/...): reset, seed, config, clock, faults, and what tests read back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from siyu.sandbox.config import ConfigUpdate
from siyu.sandbox.faults import FaultSpec, api_name
from siyu.sandbox.game_answers import AnswersRequest, simulate_answers
from siyu.sandbox.platform import WeComError
from siyu.sandbox.seed import load_seed

if TYPE_CHECKING:
    from siyu.sandbox.server import Sandbox

Params = dict[str, Any]


class SeedRequest(BaseModel):
    path: str


class FollowRef(BaseModel):
    userid: str
    external_userid: str


class ClockRequest(BaseModel):
    """Set the sandbox clock (`now`, unix seconds) or move it on (`advance`), maybe frozen."""

    model_config = ConfigDict(extra="forbid")

    now: float | None = None
    advance: float | None = Field(None, ge=0)
    frozen: bool | None = Field(None, description="Stop the clock, or let it run again")

    @model_validator(mode="after")
    def _one_move(self) -> ClockRequest:
        if self.now is not None and self.advance is not None:
            raise ValueError("give now or advance, not both")
        return self


class ConfirmRequest(BaseModel):
    """An employee (or every sender of the message) confirms a mass message now."""

    model_config = ConfigDict(extra="forbid")

    msgid: str
    userid: str | None = None


class GroupEvent(BaseModel):
    """One thing that happened in a customer group: a member joined, left, or wrote messages."""

    model_config = ConfigDict(extra="forbid")

    chat_id: str
    kind: Literal["join", "leave", "message"]
    userid: str
    at: float | None = Field(None, description="Unix seconds; default the sandbox's now")
    count: int = Field(1, ge=1, description="Messages written (kind message)")
    join_scene: int = Field(3, description="1 invited, 2 by link, 3 by QR code")
    invitor: str = ""
    quit_scene: int = Field(0, description="0 left by themselves, 1 removed")


class GroupActivity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[GroupEvent]


def _not_found(error: WeComError) -> HTTPException:
    return HTTPException(status_code=404, detail=error.errmsg)


def control_routes(sandbox: Sandbox) -> APIRouter:
    router = APIRouter(prefix="/sandbox")
    state = sandbox.state

    @router.get("/health")
    async def health() -> Params:
        return {"ok": True}

    @router.post("/reset")
    async def reset() -> Params:
        sandbox.reset()
        return {"ok": True}

    @router.post("/seed")
    async def seed(body: SeedRequest) -> Params:
        try:
            return load_seed(state, Path(body.path))
        except FileNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None

    @router.post("/config")
    async def config(body: ConfigUpdate) -> Params:  # type: ignore[valid-type]
        updated = state.update_config(body)
        sandbox.configure_limits()
        return updated.model_dump()

    @router.get("/config")
    async def read_config() -> Params:
        return state.config.model_dump()

    @router.post("/clock")
    async def move_clock(body: ClockRequest) -> Params:
        return state.move_clock(body.now, body.advance, body.frozen)

    @router.get("/clock")
    async def read_clock() -> Params:
        return state.clock.describe()

    @router.post("/faults")
    async def add_fault(body: FaultSpec) -> Params:
        return {"fault_id": sandbox.faults.add(body).fault_id}

    @router.get("/faults")
    async def list_faults() -> list[Params]:
        return sandbox.faults.describe()

    @router.delete("/faults")
    async def clear_faults() -> Params:
        sandbox.faults.clear()
        return {"ok": True}

    @router.post("/tokens/expire")
    async def expire_tokens() -> Params:
        with state.lock:
            return {"expired": state.tokens.expire_all()}

    @router.post("/contacts/delete_follow")
    async def delete_follow(body: FollowRef) -> Params:
        with state.lock:
            found = state.contacts.delete_follow(body.userid, body.external_userid)
        if not found:
            raise HTTPException(status_code=404, detail="no such follow relation")
        return {"ok": True}

    @router.get("/requests")
    async def requests_log(api: str | None = None, since: int = 0) -> list[Params]:
        return sandbox.log.since(api_name(api) if api else None, since)

    @router.get("/stats")
    async def stats() -> Params:
        with state.lock:
            return {**sandbox.log.stats(), "corp": state.corp_counts()}

    @router.get("/contact_tags")
    async def contact_tags(userid: str | None = None, external_userid: str | None = None) -> Params:
        with state.lock:
            if userid is None and external_userid is None:
                return {"pairs": state.contacts.all_contact_tags()}
            tag_ids = state.contacts.contact_tags(userid or "", external_userid or "")
        if tag_ids is None:
            raise HTTPException(status_code=404, detail="no such follow relation")
        return {"tag_ids": tag_ids}

    @router.get("/webhook_posts")
    async def webhook_posts() -> list[Params]:
        with state.lock:
            return list(state.messages.webhook_posts)

    @router.get("/app_messages")
    async def app_messages(touser: str | None = None) -> list[Params]:
        with state.lock:
            posted = list(state.messages.app_messages)
        return [m for m in posted if touser is None or touser in m["touser"]]

    @router.get("/welcome_messages")
    async def welcome_messages() -> list[Params]:
        with state.lock:
            return list(state.messages.welcome_messages)

    @router.get("/mass_messages")
    async def mass_messages() -> list[Params]:
        with state.lock:
            return state.messages.mass.describe()

    @router.post("/messages/confirm")
    async def confirm_message(body: ConfirmRequest) -> Params:
        with state.lock:
            try:
                return {"confirmed": state.messages.mass.confirm_now(body.msgid, body.userid)}
            except WeComError as error:
                raise _not_found(error) from None

    @router.post("/groups/activity")
    async def group_activity(body: GroupActivity) -> Params:
        counts = dict.fromkeys(("joined", "already", "full", "left", "absent", "messages"), 0)
        with state.lock:
            groups = state.groupchats
            try:
                for event in body.events:  # every chat is checked before anything changes
                    groups.group(event.chat_id)
            except WeComError as error:
                raise _not_found(error) from None
            now = state.now()
            for event in body.events:
                at = now if event.at is None else event.at
                if event.kind == "join":
                    counts[
                        groups.join(
                            event.chat_id, event.userid, at, event.join_scene, event.invitor
                        )
                    ] += 1
                elif event.kind == "leave":
                    counts[groups.leave(event.chat_id, event.userid, at, event.quit_scene)] += 1
                else:
                    groups.record_messages(event.chat_id, event.userid, at, event.count)
                    counts["messages"] += event.count
        return counts

    @router.post("/groups/answers")
    async def group_answers(body: AnswersRequest) -> Params:
        with state.lock:
            try:
                return simulate_answers(state.groupchats, body, state.now())
            except WeComError as error:
                raise _not_found(error) from None

    @router.get("/payouts")
    async def payouts() -> list[Params]:
        with state.lock:
            return state.payments.describe()

    return router
