"""A bare WeCom client for the sandbox's own tests: one token, JSON in and out, a few send helpers."""

from __future__ import annotations

from typing import Any

import requests

from tests.fixtures.sandbox import SandboxHandle


class WeCom:
    """A bare client for the tests: one token, JSON in and out."""

    def __init__(self, handle: SandboxHandle) -> None:
        self.handle = handle
        self.base = handle.api_base
        self.token = handle.token()

    def post(self, api: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        reply = requests.post(
            self.base + api, params={"access_token": self.token}, json=body or {}, **kwargs
        )
        assert reply.status_code == 200
        return reply.json()

    def get(self, api: str, **params: Any) -> dict[str, Any]:
        reply = requests.get(self.base + api, params={"access_token": self.token, **params})
        assert reply.status_code == 200
        return reply.json()

    def mark(self, userid: str, ext: str, add: list[str] = (), remove: list[str] = ()) -> int:
        body = {"userid": userid, "external_userid": ext, "add_tag": add, "remove_tag": remove}
        return self.post("externalcontact/mark_tag", body)["errcode"]


def send_single(wecom: WeCom, sender: str, targets: list[str], text: str = "hi") -> dict[str, Any]:
    body = {
        "chat_type": "single",
        "sender": sender,
        "external_userid": targets,
        "text": {"content": text},
    }
    reply = wecom.post("externalcontact/add_msg_template", body)
    assert reply["errcode"] == 0
    return reply


def send_results(wecom: WeCom, msgid: str, userid: str) -> dict[str, int]:
    reply = wecom.post(
        "externalcontact/get_groupmsg_send_result", {"msgid": msgid, "userid": userid}
    )
    return {(r.get("external_userid") or r["chat_id"]): r["status"] for r in reply["send_list"]}


def task_statuses(wecom: WeCom, msgid: str) -> dict[str, int]:
    reply = wecom.post("externalcontact/get_groupmsg_task", {"msgid": msgid})
    return {t["userid"]: t["status"] for t in reply["task_list"]}
