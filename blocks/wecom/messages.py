"""Messages through the WeCom API: mass messages, app messages, the group robot, welcome, Moments.

None of these writes is resent after a request that got no answer: a second one is a second
message. The caller gets WeComOutcomeUnknown and reconciles. For a mass message that means
asking WeCom: the sender marks the text with a key (`mark_text`, or `add_msg_template(key=)`),
and `find_mass_message` lists the creator's messages of that time and returns the one carrying
the key, so a message is sent again only when WeCom has no trace of it.

The key's mark is invisible: a run of zero-width characters at the end of the text spelling
64 bits of the key's SHA-256, after an invisible separator (U+2063). Customers and the employee
confirming the message see nothing; nothing of the key itself (a customer or step id) is
readable from it. (unconfirmed: that WeCom keeps zero-width characters as sent; the sandbox does.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from siyu.blocks.wecom.calls import read, write
from siyu.blocks.wecom.errors import WeComConfigError
from siyu.blocks.wecom.transport import Transport
from siyu.schemas.wecom import (
    AppMessageResult,
    GroupMsg,
    GroupMsgSendResult,
    GroupMsgTask,
    MomentTaskResult,
    MsgTemplateResult,
)

_MARK_START = "\u2063"  # INVISIBLE SEPARATOR: where the key's mark begins
_MARK_DIGITS = "\u200b\u200c\u200d\u2060"  # zero-width space, non-joiner, joiner, word joiner
_MARK_BITS = 64

ChatType = Literal["single", "group"]


def key_mark(key: str) -> str:
    """The invisible mark of `key`: 32 zero-width base-4 digits of its SHA-256."""
    if not key:
        raise ValueError("a message key must not be empty")
    value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[: _MARK_BITS // 8])
    digits = [_MARK_DIGITS[(value >> shift) & 3] for shift in range(_MARK_BITS - 2, -1, -2)]
    return _MARK_START + "".join(digits)


def mark_text(text: str, key: str) -> str:
    """`text` carrying `key` invisibly at its end (unchanged if it carries it already)."""
    mark = key_mark(key)
    return text if text.endswith(mark) else text + mark


def carries_key(text: str | None, key: str) -> bool:
    """Whether a message text carries `key`'s mark."""
    return bool(text) and key_mark(key) in text


class MessagesApi(Transport):
    """Mass messages, app messages, the group robot, welcome messages and Moments."""

    # -- mass messages --------------------------------------------------------------------------

    @write("externalcontact/add_msg_template", resendable=False)
    def add_msg_template(
        self,
        *,
        sender: str | None = None,
        chat_type: ChatType = "single",
        external_userid: Sequence[str] = (),
        chat_id_list: Sequence[str] = (),
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        allow_select: bool = False,
        key: str | None = None,
    ) -> MsgTemplateResult:
        """Create a mass message the sender confirms in the client; return its msgid.

        `key` (the send's business identity) is marked into the text so that
        `find_mass_message` can find the message after a lost reply.
        """
        if key is not None:
            if text is None:
                raise ValueError("a keyed mass message needs a text to carry its key")
            text = mark_text(text, key)
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
        data = self._call("POST", "externalcontact/add_msg_template", body=body)
        return MsgTemplateResult.model_validate(data)

    @read("externalcontact/get_groupmsg_list_v2")
    def iter_groupmsg_list(
        self,
        *,
        start_time: int,
        end_time: int,
        chat_type: ChatType = "single",
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

    def find_mass_message(
        self,
        creator: str,
        since: float,
        until: float,
        key: str,
        *,
        chat_type: ChatType | None = None,
    ) -> GroupMsg | None:
        """The mass message `creator` made between `since` and `until` (epoch s) carrying `key`.

        None when WeCom holds no such message: only then may the caller create it again.
        Both chat types are searched unless `chat_type` says which.
        """
        start, end = math.floor(since), math.ceil(until)
        for kind in (chat_type,) if chat_type else ("single", "group"):
            for message in self.iter_groupmsg_list(
                start_time=start, end_time=end, chat_type=kind, creator=creator
            ):
                if carries_key((message.text or {}).get("content"), key):
                    return message
        return None

    @read("externalcontact/get_groupmsg_task")
    def iter_groupmsg_task(self, msgid: str, *, limit: int = 1000) -> Iterator[GroupMsgTask]:
        """Each sender's task for a mass message (sent or not)."""
        body = {"msgid": msgid, "limit": limit}
        for item in self._pages("externalcontact/get_groupmsg_task", body, "task_list"):
            yield GroupMsgTask.model_validate(item)

    @read("externalcontact/get_groupmsg_send_result")
    def iter_groupmsg_send_result(
        self, msgid: str, userid: str, *, limit: int = 1000
    ) -> Iterator[GroupMsgSendResult]:
        """Each target's outcome of a mass message from one sender."""
        body = {"msgid": msgid, "userid": userid, "limit": limit}
        for item in self._pages("externalcontact/get_groupmsg_send_result", body, "send_list"):
            yield GroupMsgSendResult.model_validate(item)

    # Each reminder counts against WeCom's 3 a message in 24 h: a resent one may spend two.
    @write("externalcontact/remind_groupmsg_send", resendable=False)
    def remind_groupmsg_send(self, msgid: str) -> None:
        """Remind the senders to confirm a mass message (WeCom allows 3 reminders a day)."""
        self._call("POST", "externalcontact/remind_groupmsg_send", body={"msgid": msgid})

    @write("externalcontact/cancel_groupmsg_send", resendable=False)
    def cancel_groupmsg_send(self, msgid: str) -> None:
        """Stop a mass message that senders have not confirmed yet."""
        self._call("POST", "externalcontact/cancel_groupmsg_send", body={"msgid": msgid})

    # -- messages to employees and ops ----------------------------------------------------------

    @write("message/send", resendable=False)
    def send_app_message(
        self,
        touser: Sequence[str],
        *,
        msgtype: Literal["text", "textcard", "news", "markdown"],
        content: dict[str, Any],
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
        )
        return AppMessageResult.model_validate(data)

    @write("webhook/send", resendable=False)
    def send_webhook(self, key: str, payload: dict[str, Any]) -> None:
        """Post to a group robot (`webhook/send?key=`); no access token. The key is a secret."""
        self._call("POST", "webhook/send", params={"key": key}, body=payload, with_token=False)

    # -- welcome and Moments --------------------------------------------------------------------

    @write("externalcontact/send_welcome_msg", resendable=False)
    def send_welcome_msg(
        self,
        welcome_code: str,
        *,
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Greet a new contact with the welcome code of the add event (valid about 20 s)."""
        body: dict[str, Any] = {"welcome_code": welcome_code}
        if text is not None:
            body["text"] = {"content": text}
        if attachments:
            body["attachments"] = list(attachments)
        self._call("POST", "externalcontact/send_welcome_msg", body=body)

    @write("externalcontact/add_moment_task", resendable=False)
    def add_moment_task(
        self,
        *,
        text: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        sender_userids: Sequence[str] = (),
        tag_ids: Sequence[str] = (),
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
        data = self._call("POST", "externalcontact/add_moment_task", body=body)
        return str(data["jobid"])

    @read("externalcontact/get_moment_task_result")
    def get_moment_task_result(self, jobid: str) -> MomentTaskResult:
        """The state of a Moments job: 1 running, 2 done, 3 failed."""
        data = self._call("GET", "externalcontact/get_moment_task_result", params={"jobid": jobid})
        return MomentTaskResult.model_validate(data)
