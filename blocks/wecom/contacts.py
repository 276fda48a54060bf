"""Customers (external contacts) through the WeCom API: who follows whom, details, channels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from siyu.blocks.wecom.calls import read, write
from siyu.blocks.wecom.errors import ContactUnreachable
from siyu.blocks.wecom.transport import Transport, without_none
from siyu.schemas.wecom import ContactDetail, ContactWay, ContactWithFollowInfo, OpenIdResult


class ContactsApi(Transport):
    """The external-contact calls."""

    @read("externalcontact/get_follow_user_list")
    def get_follow_user_list(self) -> list[str]:
        """Userids of the employees who may have external contacts."""
        data = self._call("GET", "externalcontact/get_follow_user_list")
        return list(data.get("follow_user") or [])

    @read("externalcontact/list")
    def list_contacts(self, userid: str) -> list[str]:
        """The external_userids of one employee's contacts."""
        try:
            data = self._call("GET", "externalcontact/list", params={"userid": userid})
        except ContactUnreachable:
            # The platform answers 84061 for an employee without any contact.
            return []
        return list(data.get("external_userid") or [])

    @read("externalcontact/get")
    def get_contact(self, external_userid: str) -> ContactDetail:
        """One contact and every employee they added (all follow_user pages gathered)."""
        cursor = ""
        first: dict[str, Any] | None = None
        follow_user: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            params = {"external_userid": external_userid}
            if cursor:
                params["cursor"] = cursor
            data = self._call("GET", "externalcontact/get", params=params)
            first = first or data
            follow_user.extend(data.get("follow_user") or [])
            cursor = data.get("next_cursor") or ""
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        return ContactDetail.model_validate(
            {"external_contact": first["external_contact"], "follow_user": follow_user}
        )

    @read("externalcontact/batch/get_by_user")
    def iter_contacts_by_user(
        self, userids: Iterable[str], *, limit: int = 100
    ) -> Iterator[ContactWithFollowInfo]:
        """Every (contact, follow info) of these employees, 100 employees per request, paged."""
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100")
        ids = list(userids)
        for start in range(0, len(ids), 100):
            body = {"userid_list": ids[start : start + 100], "limit": limit}
            for item in self._pages(
                "externalcontact/batch/get_by_user", body, "external_contact_list"
            ):
                yield ContactWithFollowInfo.model_validate(item)

    @read("externalcontact/convert_to_openid")
    def convert_to_openid(self, external_userid: str) -> str:
        """The WeChat openid of a WeChat customer (wm...), which red packet payouts address.

        The openid identifies a customer: keep it out of logs like the external_userid.
        """
        data = self._call(
            "POST",
            "externalcontact/convert_to_openid",
            body={"external_userid": external_userid},
        )
        return OpenIdResult.model_validate(data).openid

    # A second config is a second QR code: harmless but not the same state, so never resent.
    @write("externalcontact/add_contact_way", resendable=False)
    def add_contact_way(
        self,
        *,
        type: Literal[1, 2] = 1,  # the API's name: 1 single employee, 2 several
        scene: Literal[1, 2] = 2,
        user: Sequence[str] = (),
        state: str | None = None,
        skip_verify: bool = True,
        remark: str | None = None,
    ) -> ContactWay:
        """Create a "contact me" QR code for employees, tagged with a channel `state`."""
        body = without_none(
            {
                "type": type,
                "scene": scene,
                "user": list(user),
                "state": state,
                "skip_verify": skip_verify,
                "remark": remark,
            }
        )
        data = self._call("POST", "externalcontact/add_contact_way", body=body)
        return ContactWay.model_validate(data)
