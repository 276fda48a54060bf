"""Pydantic models of the WeCom server API's replies and request pieces that siyu uses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WeComModel(BaseModel):
    """Base of every WeCom payload model: unknown fields are ignored, the platform adds fields."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- token --------------------------------------------------------------------------------------


class AccessToken(WeComModel):
    """The reply of `gettoken`. Never log or repr the token itself."""

    access_token: str = Field(repr=False, description="The token; a secret")
    expires_in: int = Field(default=7200, description="Seconds until the token expires")


# -- corp tags ----------------------------------------------------------------------------------


class Tag(WeComModel):
    """A corp tag inside a tag group."""

    id: str = Field(description="Tag id (et...)")
    name: str = Field(description="Tag name, unique within its group")
    create_time: int = Field(default=0, description="Creation time, epoch seconds")
    order: int = Field(default=0, description="Sort order: larger comes first")
    deleted: bool = Field(default=False, description="True when the tag was deleted")


class TagGroup(WeComModel):
    """A corp tag group and its tags."""

    group_id: str = Field(description="Group id (et...)")
    group_name: str = Field(description="Group name")
    create_time: int = Field(default=0, description="Creation time, epoch seconds")
    order: int = Field(default=0, description="Sort order: larger comes first")
    deleted: bool = Field(default=False, description="True when the group was deleted")
    tag: list[Tag] = Field(default_factory=list, description="The group's tags")


class NewTag(WeComModel):
    """A tag to create with `add_corp_tag`."""

    name: str = Field(description="Tag name (WeCom caps names at about 30 characters)")
    order: int | None = Field(default=None, description="Sort order: larger comes first")


# -- contacts -----------------------------------------------------------------------------------
# Names, remarks and remark mobiles are customers' personal data: kept out of repr so a model
# printed in a log line or an exception does not leak them.


class ExternalContact(WeComModel):
    """A customer (external contact) as WeCom describes them."""

    external_userid: str = Field(description="Contact id (wm... / wo...)")
    name: str = Field(default="", repr=False, description="WeChat nickname: personal data")
    type: int = Field(default=1, description="1 WeChat user, 2 WeCom user")
    gender: int = Field(default=0, description="0 unknown, 1 male, 2 female")
    unionid: str | None = Field(default=None, repr=False, description="WeChat unionid")
    avatar: str | None = Field(default=None, repr=False, description="Avatar URL")
    corp_name: str | None = Field(default=None, description="Company name of a WeCom user")


class ContactTag(WeComModel):
    """A tag an employee put on a contact, as `externalcontact/get` reports it."""

    group_name: str | None = Field(default=None, description="Tag group name")
    tag_name: str | None = Field(default=None, description="Tag name")
    tag_id: str | None = Field(default=None, description="Tag id (only corp tags have one)")
    type: int = Field(default=1, description="1 corp tag, 2 personal tag, 3 rule-group tag")


class FollowUser(WeComModel):
    """One employee's relation with a contact, with the tags that employee put on them."""

    userid: str = Field(description="The employee")
    remark: str | None = Field(default=None, repr=False, description="Employee's note name")
    description: str | None = Field(default=None, repr=False, description="Employee's note")
    createtime: int = Field(default=0, description="When the contact was added, epoch seconds")
    tags: list[ContactTag] = Field(default_factory=list, description="Tags on this pair")
    remark_mobiles: list[str] = Field(
        default_factory=list, repr=False, description="Mobiles noted by the employee: personal data"
    )
    add_way: int = Field(default=0, description="How the contact was added")
    state: str | None = Field(default=None, description="Channel code of the QR code used")


class ContactDetail(WeComModel):
    """The reply of `externalcontact/get`, every page of follow_user gathered."""

    external_contact: ExternalContact = Field(description="The customer")
    follow_user: list[FollowUser] = Field(
        default_factory=list, description="Every employee the customer added"
    )


class FollowInfo(WeComModel):
    """One employee's relation with a contact as `batch/get_by_user` reports it."""

    userid: str = Field(description="The employee")
    remark: str | None = Field(default=None, repr=False, description="Employee's note name")
    description: str | None = Field(default=None, repr=False, description="Employee's note")
    createtime: int = Field(default=0, description="When the contact was added, epoch seconds")
    tag_id: list[str] = Field(default_factory=list, description="Corp tag ids on this pair")
    remark_mobiles: list[str] = Field(
        default_factory=list, repr=False, description="Mobiles noted by the employee: personal data"
    )
    add_way: int = Field(default=0, description="How the contact was added")
    state: str | None = Field(default=None, description="Channel code of the QR code used")


class ContactWithFollowInfo(WeComModel):
    """One item of `batch/get_by_user`: a contact seen from one employee."""

    external_contact: ExternalContact = Field(description="The customer")
    follow_info: FollowInfo = Field(description="The employee's relation with the customer")


# -- customer groups ----------------------------------------------------------------------------


class GroupChatRef(WeComModel):
    """One item of `groupchat/list`."""

    chat_id: str = Field(description="Group chat id (wr...)")
    status: int = Field(default=0, description="0 normal, 1-3 handover states of a leaver's group")


class GroupMember(WeComModel):
    """A member of a customer group."""

    userid: str = Field(description="Employee userid or external_userid")
    type: int = Field(description="1 employee, 2 external contact")
    join_time: int = Field(default=0, description="Join time, epoch seconds")
    join_scene: int = Field(default=0, description="1 invited, 2 via link, 3 via QR code")
    invitor: str | None = Field(default=None, description="Userid of the employee who invited")
    group_nickname: str | None = Field(default=None, repr=False, description="Nickname in group")
    name: str | None = Field(default=None, repr=False, description="Member name: personal data")
    unionid: str | None = Field(default=None, repr=False, description="WeChat unionid")

    @field_validator("invitor", mode="before")
    @classmethod
    def _invitor_userid(cls, value: Any) -> Any:
        # The platform sends {"userid": ...}; a flat string is accepted as well.
        if isinstance(value, dict):
            return value.get("userid")
        return value


class GroupAdmin(WeComModel):
    """An admin of a customer group."""

    userid: str = Field(description="Employee userid")


class GroupChat(WeComModel):
    """The reply of `groupchat/get`."""

    chat_id: str = Field(description="Group chat id (wr...)")
    name: str = Field(default="", description="Group name")
    owner: str = Field(default="", description="Owner's userid")
    create_time: int = Field(default=0, description="Creation time, epoch seconds")
    notice: str | None = Field(default=None, description="Group notice")
    member_list: list[GroupMember] = Field(default_factory=list, description="Members")
    admin_list: list[GroupAdmin] = Field(default_factory=list, description="Admins")


class JoinWay(WeComModel):
    """A "join the group" configuration (`groupchat/get_join_way`)."""

    config_id: str = Field(description="Configuration id")
    scene: int = Field(default=2, description="1 mini-program, 2 QR code")
    remark: str | None = Field(default=None, description="Free note")
    auto_create_room: int = Field(default=0, description="1: open a new group when full")
    room_base_name: str | None = Field(default=None, description="Base name of new groups")
    room_base_id: int | None = Field(default=None, description="First number of new groups")
    chat_id_list: list[str] = Field(default_factory=list, description="The groups (<= 5)")
    qr_code: str | None = Field(default=None, description="URL of the QR code image")
    state: str | None = Field(default=None, description="Channel code")


# -- mass messages ------------------------------------------------------------------------------


class MsgTemplateResult(WeComModel):
    """The reply of `add_msg_template`."""

    msgid: str = Field(description="Handle of the mass message, to read its outcome")
    fail_list: list[str] = Field(
        default_factory=list, description="Targets that cannot receive it (not contacts)"
    )


class GroupMsg(WeComModel):
    """One mass message (`get_groupmsg_list_v2`)."""

    msgid: str = Field(description="Mass message id")
    creator: str | None = Field(default=None, description="Employee who created it")
    create_time: int = Field(default=0, description="Creation time, epoch seconds")
    create_type: int = Field(default=0, description="0 by the enterprise, 1 by an employee")
    text: dict[str, Any] | None = Field(default=None, description="The text object")
    attachments: list[dict[str, Any]] = Field(default_factory=list, description="Attachments")


class GroupMsgTask(WeComModel):
    """One sender's task for a mass message (`get_groupmsg_task`)."""

    userid: str = Field(description="The employee asked to send")
    status: int = Field(default=0, description="0 not sent, 2 sent")
    send_time: int | None = Field(default=None, description="When sent, epoch seconds")


class GroupMsgSendResult(WeComModel):
    """One target's outcome of a mass message (`get_groupmsg_send_result`)."""

    external_userid: str | None = Field(default=None, description="Target contact (single)")
    chat_id: str | None = Field(default=None, description="Target group (group)")
    userid: str = Field(description="The sender")
    status: int = Field(
        default=0,
        description="0 not sent, 1 sent, 2 failed (not a contact), 3 failed (mass-message cap)",
    )
    send_time: int | None = Field(default=None, description="When sent, epoch seconds")


# -- messages to employees ----------------------------------------------------------------------


class AppMessageResult(WeComModel):
    """The reply of `message/send`."""

    invaliduser: str = Field(default="", description="Userids ('|'-joined) that were not reached")
    invalidparty: str = Field(default="", description="Departments that were not reached")
    invalidtag: str = Field(default="", description="Tags that were not reached")
    msgid: str | None = Field(default=None, description="Message id, to recall it")
    response_code: str | None = Field(default=None, description="For updating a template card")

    def invalid_users(self) -> list[str]:
        """The userids WeCom could not reach, as a list."""
        return [u for u in self.invaliduser.split("|") if u]


# -- welcome and Moments ------------------------------------------------------------------------


class ContactWay(WeComModel):
    """The reply of `add_contact_way`: a "contact me" configuration."""

    config_id: str = Field(description="Configuration id")
    qr_code: str | None = Field(default=None, description="URL of the QR code image")


class MomentResult(WeComModel):
    """What a finished Moments task produced."""

    moment_id: str | None = Field(default=None, description="The post's id")
    invalid_sender_list: dict[str, Any] | list[Any] | None = Field(
        default=None, description="Senders that could not post"
    )
    invalid_external_contact_list: dict[str, Any] | list[Any] | None = Field(
        default=None, description="Targets that could not be reached"
    )


class MomentTaskResult(WeComModel):
    """The reply of `get_moment_task_result`."""

    status: int = Field(description="1 running, 2 done, 3 failed")
    type: str | None = Field(default=None, description="Task type, add_moment_task")
    result: MomentResult | None = Field(default=None, description="The outcome once done")


# -- group statistics and openids ---------------------------------------------------------------


class GroupChatStatisticData(WeComModel):
    """One owner's groups' figures over the days asked (`groupchat/statistic`)."""

    new_chat_cnt: int = Field(default=0, description="Groups created")
    chat_total: int = Field(default=0, description="Groups in total")
    chat_has_msg: int = Field(default=0, description="Groups where someone spoke")
    new_member_cnt: int = Field(default=0, description="Members who joined")
    member_total: int = Field(default=0, description="Members in total")
    member_has_msg: int = Field(default=0, description="Members who spoke")
    msg_total: int = Field(default=0, description="Messages sent")


class GroupChatStatistic(WeComModel):
    """One item of `groupchat/statistic`: a group owner and their groups' figures."""

    owner: str = Field(description="The group owner (employee userid)")
    data: GroupChatStatisticData = Field(
        default_factory=GroupChatStatisticData, description="The owner's figures"
    )


class OpenIdResult(WeComModel):
    """The reply of `convert_to_openid`. The openid identifies a customer: never log it."""

    openid: str = Field(repr=False, description="The customer's WeChat openid")
