"""The sandbox's corp tags: tag groups holding tags, listed, added, renamed and deleted as WeCom does."""

from __future__ import annotations

from typing import Any

from siyu.sandbox.backend import Backend
from siyu.sandbox.platform import (
    INVALID_PARAMETER,
    INVALID_TAG_ID,
    TAG_NAME_EXISTS,
    WeComError,
    check_name,
    new_id,
)


class TagBackend(Backend):
    """Tag groups and tags; which contact carries which tag lives with the contacts."""

    kinds = ("tag_group", "tag")

    def clear(self) -> None:
        self.tag_groups: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, Any]] = {}

    def load(self, kind: str, body: Any) -> None:
        if kind == "tag_group":
            self.tag_groups[body["group_id"]] = body
        else:
            self.tags[body["id"]] = body

    def live_tag(self, tag_id: Any) -> dict[str, Any] | None:
        tag = self.tags.get(str(tag_id))
        return tag if tag is not None and not tag["deleted"] else None

    def live_group(self, group_id: Any) -> dict[str, Any] | None:
        group = self.tag_groups.get(str(group_id))
        return group if group is not None and not group["deleted"] else None

    def tag_refs(self, tag_ids: list[str]) -> list[dict[str, Any]]:
        """Live tags as a contact's `tags[]` shows them (group and tag names)."""
        refs = []
        for tag_id in tag_ids:
            tag = self.live_tag(tag_id)
            if tag is not None:
                group = self.tag_groups[tag["group_id"]]
                refs.append(
                    {
                        "group_name": group["group_name"],
                        "tag_name": tag["name"],
                        "tag_id": tag_id,
                        "type": 1,
                    }
                )
        return refs

    def _group_view(self, group: dict[str, Any], only: set[str] | None = None) -> dict[str, Any]:
        tags = [
            {
                "id": tag["id"],
                "name": tag["name"],
                "create_time": tag["create_time"],
                "order": tag["order"],
                "deleted": False,
            }
            for tag in (self.tags[t] for t in group["tag_ids"])
            if not tag["deleted"] and (only is None or tag["id"] in only)
        ]
        return {
            "group_id": group["group_id"],
            "group_name": group["group_name"],
            "create_time": group["create_time"],
            "order": group["order"],
            "deleted": False,
            "tag": tags,
        }

    def corp_tag_list(self, tag_ids: list[str], group_ids: list[str]) -> list[dict[str, Any]]:
        """All live groups; or the named groups; or the groups holding the named tags.

        As on the platform, group_id wins when both filters are given.
        """
        if group_ids:
            groups = [g for g in (self.live_group(i) for i in group_ids) if g is not None]
            return [self._group_view(g) for g in groups]
        live = [g for g in self.tag_groups.values() if not g["deleted"]]
        if tag_ids:
            wanted = set(tag_ids)
            return [self._group_view(g, wanted) for g in live if wanted.intersection(g["tag_ids"])]
        return [self._group_view(g) for g in live]

    def add_corp_tag(
        self,
        group_id: str | None,
        group_name: str | None,
        order: int,
        tags: list[dict[str, Any]],
    ) -> dict[str, Any]:
        if not tags:
            raise WeComError(INVALID_PARAMETER, "tag list is empty")
        names = [check_name(t.get("name") if isinstance(t, dict) else None, "tag") for t in tags]
        if len(set(names)) != len(names):
            raise WeComError(TAG_NAME_EXISTS, "tag name exists")
        name = ""
        if group_id:
            group = self.live_group(group_id)
            if group is None:
                raise WeComError(INVALID_TAG_ID, "invalid group_id")
        elif group_name is not None:
            name = check_name(group_name, "group")
            group = next(
                (
                    g
                    for g in self.tag_groups.values()
                    if not g["deleted"] and g["group_name"] == name
                ),
                None,
            )
        else:
            raise WeComError(INVALID_PARAMETER, "group_id or group_name required")
        now = int(self.now())
        if group is None:
            group = {
                "group_id": new_id("et"),
                "group_name": name,
                "create_time": now,
                "order": order,
                "deleted": False,
                "tag_ids": [],
            }
            self.tag_groups[group["group_id"]] = group
        taken = {self.tags[t]["name"] for t in group["tag_ids"] if not self.tags[t]["deleted"]}
        if taken.intersection(names):
            raise WeComError(TAG_NAME_EXISTS, "tag name exists")
        created: list[dict[str, Any]] = []
        for spec, tag_name in zip(tags, names, strict=True):
            tag = {
                "id": new_id("et"),
                "name": tag_name,
                "create_time": now,
                "order": int(spec.get("order") or 0),
                "deleted": False,
                "group_id": group["group_id"],
            }
            self.tags[tag["id"]] = tag
            group["tag_ids"].append(tag["id"])
            created.append(tag)
        self.store.put("tag_group", group["group_id"], group)
        self.store.put_many("tag", ((t["id"], t) for t in created))
        return self._group_view(group, {t["id"] for t in created})

    def edit_corp_tag(self, item_id: str, name: str | None, order: int | None) -> None:
        tag, group = self.live_tag(item_id), self.live_group(item_id)
        if tag is not None:
            if name is not None:
                name = check_name(name, "tag")
                siblings = self.tag_groups[tag["group_id"]]["tag_ids"]
                if any(
                    t != tag["id"] and not self.tags[t]["deleted"] and self.tags[t]["name"] == name
                    for t in siblings
                ):
                    raise WeComError(TAG_NAME_EXISTS, "tag name exists")
                tag["name"] = name
            if order is not None:
                tag["order"] = order
            self.store.put("tag", tag["id"], tag)
        elif group is not None:
            if name is not None:
                name = check_name(name, "group")
                if any(
                    g is not group and not g["deleted"] and g["group_name"] == name
                    for g in self.tag_groups.values()
                ):
                    raise WeComError(TAG_NAME_EXISTS, "tag group name exists")
                group["group_name"] = name
            if order is not None:
                group["order"] = order
            self.store.put("tag_group", group["group_id"], group)
        else:
            raise WeComError(INVALID_TAG_ID, "invalid tag id")

    def del_corp_tag(self, tag_ids: list[str], group_ids: list[str]) -> set[str]:
        """Mark tags (and whole groups) deleted; returns every tag id that went.

        Taking them off contacts is the contacts' part (the composed state does both).
        """
        if not tag_ids and not group_ids:
            raise WeComError(INVALID_PARAMETER, "tag_id and group_id are both empty")
        if any(self.live_tag(t) is None for t in tag_ids) or any(
            self.live_group(g) is None for g in group_ids
        ):
            raise WeComError(INVALID_TAG_ID, "invalid tag id")
        doomed = set(tag_ids)
        for group_id in group_ids:
            doomed.update(self.tag_groups[group_id]["tag_ids"])
        for tag_id in doomed:
            self.tags[tag_id]["deleted"] = True
        touched_groups = {self.tags[t]["group_id"] for t in doomed} | set(group_ids)
        for group_id in touched_groups:
            group = self.tag_groups[group_id]
            # A group whose last tag goes is gone too, as on the platform.
            if all(self.tags[t]["deleted"] for t in group["tag_ids"]):
                group["deleted"] = True
        self.store.put_many("tag", ((t, self.tags[t]) for t in doomed))
        self.store.put_many("tag_group", ((g, self.tag_groups[g]) for g in touched_groups))
        return doomed

    def import_tables(self, tag_groups: list[dict[str, Any]], tags: list[dict[str, Any]]) -> None:
        """Upsert whole tables (the seed loader's path): one transaction per kind."""
        for g in tag_groups:
            self.tag_groups[g["group_id"]] = g
        for t in tags:
            self.tags[t["id"]] = t
        self.store.put_many("tag_group", ((g["group_id"], g) for g in tag_groups))
        self.store.put_many("tag", ((t["id"], t) for t in tags))
