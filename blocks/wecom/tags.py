"""Corp tags through the WeCom API: the catalog, its edits, and tags on a contact (mark_tag).

Every write here sets a state, so a lost reply is resent: adding a present tag, removing an
absent one or renaming to the same name again leaves WeCom as one call would. (A resent
add_corp_tag or del_corp_tag may answer that the name is taken or the tag is gone.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from siyu.blocks.wecom.calls import read, write
from siyu.blocks.wecom.transport import Transport
from siyu.schemas.wecom import NewTag, TagGroup


class TagsApi(Transport):
    """The corp tag calls."""

    @read("externalcontact/get_corp_tag_list")
    def get_corp_tag_list(
        self, tag_ids: Sequence[str] | None = None, group_ids: Sequence[str] | None = None
    ) -> list[TagGroup]:
        """The corp tag groups with their tags (all, or those asked for)."""
        body: dict[str, Any] = {}
        if tag_ids:
            body["tag_id"] = list(tag_ids)
        if group_ids:
            body["group_id"] = list(group_ids)
        data = self._call("POST", "externalcontact/get_corp_tag_list", body=body)
        return [TagGroup.model_validate(g) for g in data.get("tag_group") or []]

    @write("externalcontact/add_corp_tag", resendable=True)
    def add_corp_tag(
        self,
        *,
        group_id: str | None = None,
        group_name: str | None = None,
        tags: Sequence[NewTag],
        order: int | None = None,
    ) -> TagGroup:
        """Create tags in an existing group (`group_id`) or a group found/created by name."""
        if not group_id and not group_name:
            raise ValueError("add_corp_tag needs group_id or group_name")
        body: dict[str, Any] = {
            "tag": [t.model_dump(exclude_none=True) for t in tags],
        }
        if group_id:
            body["group_id"] = group_id
        if group_name:
            body["group_name"] = group_name
        if order is not None:
            body["order"] = order
        data = self._call("POST", "externalcontact/add_corp_tag", body=body)
        return TagGroup.model_validate(data["tag_group"])

    @write("externalcontact/edit_corp_tag", resendable=True)
    def edit_corp_tag(
        self,
        id: str,  # the API's own name for a tag or group id
        *,
        name: str | None = None,
        order: int | None = None,
    ) -> None:
        """Rename or reorder a tag or a tag group."""
        body: dict[str, Any] = {"id": id}
        if name is not None:
            body["name"] = name
        if order is not None:
            body["order"] = order
        self._call("POST", "externalcontact/edit_corp_tag", body=body)

    @write("externalcontact/del_corp_tag", resendable=True)
    def del_corp_tag(self, *, tag_ids: Sequence[str] = (), group_ids: Sequence[str] = ()) -> None:
        """Delete tags and/or whole tag groups (WeCom removes them from every contact)."""
        if not tag_ids and not group_ids:
            raise ValueError("del_corp_tag needs tag_ids or group_ids")
        self._call(
            "POST",
            "externalcontact/del_corp_tag",
            body={"tag_id": list(tag_ids), "group_id": list(group_ids)},
        )

    @write("externalcontact/mark_tag", resendable=True)
    def mark_tag(
        self,
        userid: str,
        external_userid: str,
        *,
        add_tag: Sequence[str] = (),
        remove_tag: Sequence[str] = (),
    ) -> None:
        """Add and remove corp tags on one (employee, contact) pair. Idempotent in effect."""
        if not add_tag and not remove_tag:
            raise ValueError("mark_tag needs tags to add or to remove")
        self._call(
            "POST",
            "externalcontact/mark_tag",
            body={
                "userid": userid,
                "external_userid": external_userid,
                "add_tag": list(add_tag),
                "remove_tag": list(remove_tag),
            },
        )
