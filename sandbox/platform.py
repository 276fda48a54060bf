"""What every sandbox service shares with the platform: its error codes, ids, cursors and calendar."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

# The platform's calendar is China's: "this month" and "today" for the caps are Beijing time.
CHINA = timezone(timedelta(hours=8))
DAY_SECONDS = 86_400
MAX_NAME_CHARS = 30
MAX_STATE_CHARS = 30
MAX_ATTACHMENTS = 9
ATTACHMENT_TYPES = {"image", "link", "miniprogram", "video", "file"}

# The platform's own error codes (errmsg texts are ours: short, and never carry a secret).
SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_MESSAGE_TYPE = 40008
INVALID_CORPID = 40013
INVALID_TOKEN = 40014
INVALID_CHAT_ID = 40050
INVALID_AGENT_ID = 40056
INVALID_PARAMETER = 40058
INVALID_TAG_ID = 40068
TAG_NAME_EXISTS = 40071
INVALID_EXTERNAL_USERID = 40096
MISSING_TOKEN = 41001
MISSING_CORPID = 41002
MISSING_SECRET = 41004
# Unconfirmed: the official page of remind_groupmsg_send states the limit (3 in 24 h) but not
# the code it answers with past it; 41050 is our reading, and SandboxConfig can change it.
REMIND_LIMIT_REACHED = 41050
TOKEN_EXPIRED = 42001
OUT_OF_LIMIT = 45009
DATA_FORMAT_ERROR = 47001
INVALID_USERID = 60111
ALL_RECEIVERS_INVALID = 81013
NO_CONTACT_RELATION = 84061
INVALID_WEBHOOK_KEY = 93000


class WeComError(Exception):
    """A call the platform refuses: the errcode and errmsg WeCom would answer with."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


def new_id(prefix: str, nbytes: int = 10) -> str:
    """Ids shaped like the platform's: `et...` tags, `wm...` contacts, `wr...` chats."""
    return prefix + secrets.token_hex(nbytes)


def seq_key(n: int) -> str:
    """A store key that sorts like the number (logs are kept in arrival order)."""
    return f"{n:012d}"


def encode_cursor(*positions: int) -> str:
    return base64.urlsafe_b64encode(":".join(map(str, positions)).encode()).decode()


def decode_cursor(cursor: str | None, width: int = 1) -> tuple[int, ...]:
    """An opaque cursor back to its positions; empty means the start."""
    if not cursor:
        return (0,) * width
    try:
        parts = tuple(int(p) for p in base64.urlsafe_b64decode(cursor.encode()).decode().split(":"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise WeComError(INVALID_PARAMETER, "invalid cursor") from None
    if len(parts) != width or min(parts) < 0:
        raise WeComError(INVALID_PARAMETER, "invalid cursor")
    return parts


def page_limit(value: Any, default: int = 500, most: int = 1000) -> int:
    """A `limit` field checked as the platform does: a number from 1 to `most`."""
    try:
        limit = int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        raise WeComError(INVALID_PARAMETER, "invalid limit") from None
    if not 1 <= limit <= most:
        raise WeComError(INVALID_PARAMETER, f"limit must be 1-{most}")
    return limit


def china_day(ts: float) -> str:
    """The Beijing calendar day of a timestamp, as YYYY-MM-DD."""
    return datetime.fromtimestamp(ts, CHINA).strftime("%Y-%m-%d")


def china_month(ts: float) -> str:
    """The Beijing calendar month of a timestamp, as YYYY-MM."""
    return datetime.fromtimestamp(ts, CHINA).strftime("%Y-%m")


def china_midnight(ts: float) -> int:
    """The Beijing midnight that starts the day holding `ts`."""
    moment = datetime.fromtimestamp(ts, CHINA)
    return int(moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def check_name(name: Any, what: str) -> str:
    text = str(name or "").strip()
    if not text or len(text) > MAX_NAME_CHARS:
        raise WeComError(INVALID_PARAMETER, f"{what} name must be 1-{MAX_NAME_CHARS} characters")
    return text


def check_content(text: Any, attachments: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A message needs text or attachments; attachments are at most nine, of known types."""
    text = text if isinstance(text, dict) else {}
    attachments = attachments if isinstance(attachments, list) else []
    if not str(text.get("content") or "") and not attachments:
        raise WeComError(INVALID_PARAMETER, "text.content or attachments required")
    if len(attachments) > MAX_ATTACHMENTS:
        raise WeComError(INVALID_PARAMETER, f"at most {MAX_ATTACHMENTS} attachments")
    for item in attachments:
        if not isinstance(item, dict) or item.get("msgtype") not in ATTACHMENT_TYPES:
            raise WeComError(INVALID_PARAMETER, "invalid attachment msgtype")
    return text, attachments


def channel_state(spec: dict[str, Any]) -> str:
    """The `state` (channel code) of a contact or join way, checked as the platform does."""
    state = str(spec.get("state") or "")
    if len(state) > MAX_STATE_CHARS:
        raise WeComError(INVALID_PARAMETER, f"state is at most {MAX_STATE_CHARS} characters")
    return state
