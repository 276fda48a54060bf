"""The sandbox's messages: mass messages (their own module), app messages, robot posts, welcomes, Moments."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.contacts import ContactBackend
from siyu.sandbox.groups import GroupBackend
from siyu.sandbox.mass_messages import MassMessageBackend
from siyu.sandbox.platform import (
    ALL_RECEIVERS_INVALID,
    INVALID_AGENT_ID,
    INVALID_MESSAGE_TYPE,
    INVALID_PARAMETER,
    INVALID_WEBHOOK_KEY,
    OUT_OF_LIMIT,
    WeComError,
    check_content,
    new_id,
    seq_key,
)
from siyu.sandbox.tags import TagBackend
from siyu.schemas.settings import SANDBOX_AGENT_ID

APP_MESSAGE_TYPES = {"text", "textcard", "news", "markdown"}
ROBOT_MESSAGE_TYPES = {"text", "markdown", "markdown_v2", "news", "image", "file"}
# The group robot's published limits: 20 messages a minute per robot; text content at most
# 2048 bytes of UTF-8, markdown 4096. The errcode past the size is unconfirmed (40058 here).
ROBOT_PER_MINUTE = 20
ROBOT_WINDOW_SECONDS = 60.0
ROBOT_CONTENT_BYTES = {"text": 2048, "markdown": 4096, "markdown_v2": 4096}


class MessageBackend(Backend):
    """Everything the corp sends: `mass` holds mass messages; here the logs of the others."""

    kinds = ("app_message", "webhook_post", "welcome_message", "moment")

    def __init__(
        self, shared: Shared, contacts: ContactBackend, groups: GroupBackend, tags: TagBackend
    ) -> None:
        self.contacts = contacts
        self.tags = tags
        self.mass = MassMessageBackend(shared, contacts, groups)
        super().__init__(shared)

    def clear(self) -> None:
        self.app_messages: list[dict[str, Any]] = []
        self.webhook_posts: list[dict[str, Any]] = []
        self.welcome_messages: list[dict[str, Any]] = []
        self.moments: dict[str, dict[str, Any]] = {}
        # Accepted robot posts per key, on the machine's monotonic clock: the limit paces real
        # throughput, whatever the sandbox's movable clock says.
        self.robot_calls: dict[str, deque[float]] = {}

    def owns(self, kind: str) -> bool:
        return kind in self.kinds or kind in self.mass.kinds

    def load(self, kind: str, body: Any) -> None:
        if kind in self.mass.kinds:
            self.mass.load(kind, body)
        elif kind == "moment":
            self.moments[body["jobid"]] = body
        else:
            self._log(kind).append(body)

    def loaded(self) -> None:
        self.mass.loaded()

    def reset(self) -> None:
        self.mass.reset()
        super().reset()

    def _log(self, kind: str) -> list[dict[str, Any]]:
        return {
            "app_message": self.app_messages,
            "webhook_post": self.webhook_posts,
            "welcome_message": self.welcome_messages,
        }[kind]

    def _append(self, kind: str, record: dict[str, Any]) -> None:
        log = self._log(kind)
        record["seq"] = len(log) + 1
        log.append(record)
        self.store.put(kind, seq_key(record["seq"]), record)

    # ---- messages to employees and ops -------------------------------------------------

    def send_app_message(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            agentid = int(spec.get("agentid"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            agentid = None
        if agentid != SANDBOX_AGENT_ID:
            raise WeComError(INVALID_AGENT_ID, "invalid agentid")
        msgtype = spec.get("msgtype")
        if msgtype not in APP_MESSAGE_TYPES:
            raise WeComError(INVALID_MESSAGE_TYPE, "invalid message type")
        content = spec.get(msgtype)
        if not isinstance(content, dict) or not content:
            raise WeComError(INVALID_PARAMETER, f"missing {msgtype} object")
        employees = self.contacts.employees
        touser = str(spec.get("touser") or "")
        users = list(employees) if touser == "@all" else [u for u in touser.split("|") if u]
        valid = [u for u in users if u in employees]
        invalid = [u for u in users if u not in employees]
        if not valid:
            raise WeComError(ALL_RECEIVERS_INVALID, "all touser invalid")
        msgid = new_id("app", 12)
        self._append(
            "app_message",
            {
                "msgid": msgid,
                "touser": valid,
                "msgtype": msgtype,
                "agentid": agentid,
                msgtype: content,
                "content": content,
                "invaliduser": invalid,
                "at": self.now(),
            },
        )
        return {"invaliduser": "|".join(invalid), "msgid": msgid}

    def post_webhook(self, key: str | None, spec: dict[str, Any]) -> None:
        if not key:
            raise WeComError(INVALID_WEBHOOK_KEY, "invalid webhook url")
        msgtype = spec.get("msgtype")
        if msgtype not in ROBOT_MESSAGE_TYPES:
            raise WeComError(INVALID_MESSAGE_TYPE, "invalid message type")
        content = spec.get(msgtype)
        if not isinstance(content, dict):
            raise WeComError(INVALID_PARAMETER, f"missing {msgtype} object")
        if msgtype in ROBOT_CONTENT_BYTES:
            text = content.get("content")
            if not text:
                raise WeComError(INVALID_PARAMETER, "content is empty")
            limit = ROBOT_CONTENT_BYTES[msgtype]
            if len(str(text).encode()) > limit:
                raise WeComError(INVALID_PARAMETER, f"content exceed max length {limit} bytes")
        self._admit_robot(key)
        self._append(
            "webhook_post",
            # real_at: the machine's time, for tests that count posts in a real minute.
            {
                "key": key,
                "msgtype": msgtype,
                "body": spec,
                "at": self.now(),
                "real_at": time.time(),
            },
        )

    def _admit_robot(self, key: str) -> None:
        """Count a post against its robot's sliding minute, or refuse it with 45009."""
        now = time.monotonic()
        window = self.robot_calls.setdefault(key, deque())
        while window and window[0] <= now - ROBOT_WINDOW_SECONDS:
            window.popleft()
        if len(window) >= ROBOT_PER_MINUTE:
            raise WeComError(OUT_OF_LIMIT, "api freq out of limit")
        window.append(now)

    # ---- welcome and Moments -----------------------------------------------------------

    def send_welcome_msg(self, spec: dict[str, Any]) -> None:
        code = str(spec.get("welcome_code") or "")
        if not code:
            raise WeComError(INVALID_PARAMETER, "welcome_code required")
        text, attachments = check_content(spec.get("text"), spec.get("attachments"))
        self._append(
            "welcome_message",
            {"welcome_code": code, "text": text, "attachments": attachments, "at": self.now()},
        )

    def add_moment_task(self, spec: dict[str, Any]) -> str:
        text, attachments = check_content(spec.get("text"), spec.get("attachments"))
        visible = spec.get("visible_range") if isinstance(spec.get("visible_range"), dict) else {}
        senders = ((visible.get("sender_list") or {}).get("user_list")) or []
        tag_list = ((visible.get("external_contact_list") or {}).get("tag_list")) or []
        moment = {
            "jobid": new_id("job", 12),
            "created_at": self.now(),
            "text": text,
            "attachments": attachments,
            "sender_list": list(senders),
            "tag_list": list(tag_list),
            "invalid_sender_list": [u for u in senders if u not in self.contacts.employees],
            "invalid_tag_list": [t for t in tag_list if self.tags.live_tag(t) is None],
            "moment_id": new_id("mom", 12),
        }
        self.moments[moment["jobid"]] = moment
        self.store.put("moment", moment["jobid"], moment)
        return moment["jobid"]

    def moment_task_result(self, jobid: str) -> dict[str, Any]:
        moment = self.moments.get(jobid)
        if moment is None:
            raise WeComError(INVALID_PARAMETER, "invalid jobid")
        if moment["created_at"] + self.config.confirm_delay_seconds > self.now():
            return {"status": 1, "type": "add_moment_task"}
        return {
            "status": 2,
            "type": "add_moment_task",
            "result": {
                "errcode": 0,
                "errmsg": "ok",
                "moment_id": moment["moment_id"],
                "invalid_sender_list": {"user_list": moment["invalid_sender_list"]},
                "invalid_external_contact_list": {"tag_list": moment["invalid_tag_list"]},
            },
        }
