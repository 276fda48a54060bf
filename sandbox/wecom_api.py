"""The sandbox's /cgi-bin/ API: one handler per WeCom call, which parses its fields and replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from siyu.sandbox import group_stats
from siyu.sandbox.platform import INVALID_PARAMETER, WeComError
from siyu.sandbox.state import SandboxState

Params = dict[str, Any]
Handler = Callable[[SandboxState, Params], Params | None]

# Calls that carry no access token: the token call itself and the group robot (its key).
NO_TOKEN_APIS = {"gettoken", "webhook/send"}


# ---- parsing request fields ------------------------------------------------------------


def text_field(p: Params, name: str) -> str:
    value = p.get(name)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a string")
    return str(value)


def _ids(p: Params, name: str) -> list[str]:
    value = p.get(name)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a list")
    return [str(v) for v in value]


def _number(p: Params, name: str, default: int | None) -> int | None:
    value = p.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a number") from None


def _object(p: Params, name: str) -> Params:
    value = p.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WeComError(INVALID_PARAMETER, f"{name} must be an object")
    return value


# ---- tokens, tags, contacts ------------------------------------------------------------


def gettoken(state: SandboxState, p: Params) -> Params:
    return state.tokens.issue(text_field(p, "corpid"), text_field(p, "corpsecret"))


def get_corp_tag_list(state: SandboxState, p: Params) -> Params:
    return {"tag_group": state.corp_tags.corp_tag_list(_ids(p, "tag_id"), _ids(p, "group_id"))}


def add_corp_tag(state: SandboxState, p: Params) -> Params:
    tags = p.get("tag")
    if not isinstance(tags, list):
        raise WeComError(INVALID_PARAMETER, "tag must be a list")
    group_name = text_field(p, "group_name") if "group_name" in p else None
    group = state.corp_tags.add_corp_tag(
        text_field(p, "group_id"), group_name, _number(p, "order", 0), tags
    )
    return {"tag_group": group}


def edit_corp_tag(state: SandboxState, p: Params) -> None:
    name = text_field(p, "name") if "name" in p else None
    state.corp_tags.edit_corp_tag(text_field(p, "id"), name, _number(p, "order", None))


def del_corp_tag(state: SandboxState, p: Params) -> None:
    state.del_corp_tag(_ids(p, "tag_id"), _ids(p, "group_id"))


def mark_tag(state: SandboxState, p: Params) -> None:
    state.contacts.mark_tag(
        text_field(p, "userid"),
        text_field(p, "external_userid"),
        _ids(p, "add_tag"),
        _ids(p, "remove_tag"),
    )


def get_follow_user_list(state: SandboxState, p: Params) -> Params:
    return {"follow_user": state.contacts.follow_user_list()}


def contact_list(state: SandboxState, p: Params) -> Params:
    return {"external_userid": state.contacts.contact_list(text_field(p, "userid"))}


def contact_get(state: SandboxState, p: Params) -> Params:
    return state.contacts.get_contact(text_field(p, "external_userid"), text_field(p, "cursor"))


def batch_get_by_user(state: SandboxState, p: Params) -> Params:
    return state.contacts.batch_get_by_user(
        _ids(p, "userid_list"), text_field(p, "cursor"), _number(p, "limit", 50)
    )


def add_contact_way(state: SandboxState, p: Params) -> Params:
    return state.contacts.add_contact_way(p)


def convert_to_openid(state: SandboxState, p: Params) -> Params:
    ext = text_field(p, "external_userid")
    if not ext:
        raise WeComError(INVALID_PARAMETER, "external_userid required")
    return {"openid": state.payments.convert_to_openid(ext)}


# ---- customer groups -------------------------------------------------------------------


def groupchat_list(state: SandboxState, p: Params) -> Params:
    owners = _ids(_object(p, "owner_filter"), "userid_list")
    return state.groupchats.groupchat_list(
        _number(p, "status_filter", 0), owners, text_field(p, "cursor"), _number(p, "limit", 0)
    )


def groupchat_get(state: SandboxState, p: Params) -> Params:
    chat = state.groupchats.groupchat_get(
        text_field(p, "chat_id"), bool(_number(p, "need_name", 0))
    )
    return {"group_chat": chat}


def add_join_way(state: SandboxState, p: Params) -> Params:
    return {"config_id": state.groupchats.add_join_way(p)}


def get_join_way(state: SandboxState, p: Params) -> Params:
    return {"join_way": state.groupchats.get_join_way(text_field(p, "config_id"))}


def groupchat_statistic(state: SandboxState, p: Params) -> Params:
    return group_stats.statistic(state.groupchats, p, state.now())


def groupchat_statistic_by_day(state: SandboxState, p: Params) -> Params:
    return group_stats.statistic_group_by_day(state.groupchats, p, state.now())


# ---- mass messages ---------------------------------------------------------------------


def add_msg_template(state: SandboxState, p: Params) -> Params:
    return state.messages.mass.create(p)


def get_groupmsg_list_v2(state: SandboxState, p: Params) -> Params:
    return state.messages.mass.groupmsg_list(p)


def get_groupmsg_task(state: SandboxState, p: Params) -> Params:
    return state.messages.mass.groupmsg_task(
        text_field(p, "msgid"), p.get("limit"), text_field(p, "cursor")
    )


def get_groupmsg_send_result(state: SandboxState, p: Params) -> Params:
    return state.messages.mass.groupmsg_send_result(
        text_field(p, "msgid"), text_field(p, "userid"), p.get("limit"), text_field(p, "cursor")
    )


def remind_groupmsg_send(state: SandboxState, p: Params) -> None:
    state.messages.mass.remind(text_field(p, "msgid"))


def cancel_groupmsg_send(state: SandboxState, p: Params) -> None:
    state.messages.mass.cancel(text_field(p, "msgid"))


# ---- other messages --------------------------------------------------------------------


def message_send(state: SandboxState, p: Params) -> Params:
    return state.messages.send_app_message(p)


def webhook_send(state: SandboxState, p: Params) -> None:
    state.messages.post_webhook(text_field(p, "key"), {k: v for k, v in p.items() if k != "key"})


def send_welcome_msg(state: SandboxState, p: Params) -> None:
    state.messages.send_welcome_msg(p)


def add_moment_task(state: SandboxState, p: Params) -> Params:
    return {"jobid": state.messages.add_moment_task(p)}


def get_moment_task_result(state: SandboxState, p: Params) -> Params:
    return state.messages.moment_task_result(text_field(p, "jobid"))


WECOM_API: dict[str, Handler] = {
    "gettoken": gettoken,
    "externalcontact/get_corp_tag_list": get_corp_tag_list,
    "externalcontact/add_corp_tag": add_corp_tag,
    "externalcontact/edit_corp_tag": edit_corp_tag,
    "externalcontact/del_corp_tag": del_corp_tag,
    "externalcontact/mark_tag": mark_tag,
    "externalcontact/get_follow_user_list": get_follow_user_list,
    "externalcontact/list": contact_list,
    "externalcontact/get": contact_get,
    "externalcontact/batch/get_by_user": batch_get_by_user,
    "externalcontact/add_contact_way": add_contact_way,
    "externalcontact/convert_to_openid": convert_to_openid,
    "externalcontact/groupchat/list": groupchat_list,
    "externalcontact/groupchat/get": groupchat_get,
    "externalcontact/groupchat/add_join_way": add_join_way,
    "externalcontact/groupchat/get_join_way": get_join_way,
    "externalcontact/groupchat/statistic": groupchat_statistic,
    "externalcontact/groupchat/statistic_group_by_day": groupchat_statistic_by_day,
    "externalcontact/add_msg_template": add_msg_template,
    "externalcontact/get_groupmsg_list_v2": get_groupmsg_list_v2,
    "externalcontact/get_groupmsg_task": get_groupmsg_task,
    "externalcontact/get_groupmsg_send_result": get_groupmsg_send_result,
    "externalcontact/remind_groupmsg_send": remind_groupmsg_send,
    "externalcontact/cancel_groupmsg_send": cancel_groupmsg_send,
    "message/send": message_send,
    "webhook/send": webhook_send,
    "externalcontact/send_welcome_msg": send_welcome_msg,
    "externalcontact/add_moment_task": add_moment_task,
    "externalcontact/get_moment_task_result": get_moment_task_result,
}
