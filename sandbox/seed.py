"""Load a seed directory (the sample-data generator's Parquet files) into the sandbox's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from siyu.sandbox.state import SandboxState

SEED_FILES = ("employees", "follows", "tag_groups", "groups", "group_members")


def _rows(seed_dir: Path, name: str) -> list[dict[str, Any]]:
    """A seed table as row dicts; a missing file is an empty table."""
    path = seed_dir / f"{name}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def load_seed(state: SandboxState, seed_dir: Path) -> dict[str, int]:
    """Upsert the seed's employees, contacts, tags and groups; return what each file held.

    Tables are converted whole and written in one transaction per kind, so 50,000 follows
    load in about a second.
    """
    seed_dir = Path(seed_dir)
    if not seed_dir.is_dir():
        raise FileNotFoundError(f"seed directory not found: {seed_dir}")
    employee_rows = _rows(seed_dir, "employees")
    follow_rows = _rows(seed_dir, "follows")
    tag_rows = _rows(seed_dir, "tag_groups")
    group_rows = _rows(seed_dir, "groups")
    member_rows = _rows(seed_dir, "group_members")
    now = int(state.now())

    employees = [
        {"userid": _text(r["userid"]), "name": _text(r.get("name"))} for r in employee_rows
    ]

    contacts: dict[str, dict[str, Any]] = {}
    follows: list[dict[str, Any]] = []
    for r in follow_rows:
        ext = _text(r["external_userid"])
        if ext not in contacts:
            contacts[ext] = {
                "external_userid": ext,
                "name": _text(r.get("name")),
                "type": _int(r.get("type")) or 1,
                "gender": _int(r.get("gender")),
                "unionid": _text(r.get("unionid")),
            }
        follows.append(
            {
                "userid": _text(r["userid"]),
                "external_userid": ext,
                "remark": _text(r.get("remark")),
                "description": _text(r.get("description")),
                "createtime": _int(r.get("createtime")),
                "remark_mobiles": [_text(m) for m in r.get("remark_mobiles") or []],
                "add_way": _int(r.get("add_way")),
                "state": _text(r.get("state")),
                "tag_ids": list(dict.fromkeys(_text(t) for t in r.get("tag_ids") or [])),
                "deleted": False,
            }
        )

    tag_groups: dict[str, dict[str, Any]] = {}
    tags: list[dict[str, Any]] = []
    for r in tag_rows:
        group_id = _text(r["group_id"])
        group = tag_groups.get(group_id)
        if group is None:
            known = state.tag_groups.get(group_id)
            group = {
                "group_id": group_id,
                "group_name": _text(r.get("group_name")),
                "create_time": known["create_time"] if known else now,
                "order": _int(r.get("group_order")),
                "deleted": False,
                "tag_ids": list(known["tag_ids"]) if known else [],
            }
            tag_groups[group_id] = group
        tag_id = _text(r["tag_id"])
        if tag_id not in group["tag_ids"]:
            group["tag_ids"].append(tag_id)
        tags.append(
            {
                "id": tag_id,
                "name": _text(r.get("tag_name")),
                "create_time": now,
                "order": _int(r.get("tag_order")),
                "deleted": False,
                "group_id": group_id,
            }
        )

    groups: dict[str, dict[str, Any]] = {}
    for r in group_rows:
        chat_id = _text(r["chat_id"])
        groups[chat_id] = {
            "chat_id": chat_id,
            "name": _text(r.get("name")),
            "owner": _text(r.get("owner")),
            "create_time": _int(r.get("create_time")),
            "notice": _text(r.get("notice")),
            "members": [],
        }
    for r in member_rows:
        chat_id = _text(r["chat_id"])
        group = groups.get(chat_id) or state.groups.get(chat_id)
        if group is None:
            continue
        group["members"].append(
            {
                "userid": _text(r["userid"]),
                "type": _int(r.get("type")) or 2,
                "join_time": _int(r.get("join_time")),
                "join_scene": _int(r.get("join_scene")),
                "invitor": _text(r.get("invitor")),
            }
        )
        groups[chat_id] = group

    state.import_corp(
        employees=employees,
        contacts=list(contacts.values()),
        follows=follows,
        tag_groups=list(tag_groups.values()),
        tags=tags,
        groups=list(groups.values()),
    )
    return {
        "employees": len(employees),
        "contacts": len(contacts),
        "follows": len(follows),
        "tags": len(tags),
        "groups": len(group_rows),
        "members": len(member_rows),
    }
