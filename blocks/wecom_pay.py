"""The red-packet payout client: WeChat Pay's enterprise red packets, signed XML, re-entrant by bill number.

A payout is made under a bill number chosen before the first attempt. A timeout, a dropped
connection, an HTTP 5xx or SYSTEMERROR leave its outcome unknown (`PayOutcomeUnknown`): the
caller asks with `query_redpack(billno)` and, only if WeChat Pay has no trace of it, sends again
with the SAME bill number. A refusal for good (`PayRefused`) carries WeChat Pay's err_code.

Payouts are paced at the merchant's per-minute limit. WeChat Pay counts them per merchant, not
per process, so the account's client (`PayoutAccount.get_client`) paces through the same shared
mechanism as WeCom calls: a Prefect rate limit (`PrefectPacer`) named for `PAYOUT_API`, which
`ensure_payout_rate_limit(account)` creates or updates.
"""

from __future__ import annotations

import hashlib
import secrets
import xml.etree.ElementTree as ET  # noqa: S405 - parses replies of the configured pay host
from dataclasses import dataclass
from typing import Any

import requests

from siyu.blocks.group_cadence import PayoutAccount
from siyu.blocks.wecom.pacing import (
    ApiRateLimit,
    Pacer,
    limit_name,
    shared_shape,
    upsert_rate_limit,
)

SEND_REDPACK = "mmpaymkttransfers/sendworkwxredpack"
QUERY_REDPACK = "mmpaymkttransfers/queryworkwxredpack"
# What the pacer calls every payout call (sends and queries alike): one limit per merchant.
PAYOUT_API = "pay-redpacket"
# Codes after which the payout may or may not have happened: ask, then resend the same number.
UNKNOWN_CODES = frozenset({"SYSTEMERROR"})
# Codes that mean "not now": the row stays open for a later settlement.
RETRY_LATER_CODES = frozenset(
    {"FREQ_LIMIT", "SENDNUM_LIMIT", "RCVDAMOUNT_LIMIT", "SENDAMOUNT_LIMIT", "NOTENOUGH"}
)


class PayError(Exception):
    """The root of the payout client's errors."""


class PayRefused(PayError):
    """WeChat Pay refused this payout (result_code FAIL): err_code says why."""

    def __init__(self, err_code: str, err_code_des: str) -> None:
        super().__init__(f"{err_code}: {err_code_des}")
        self.err_code = err_code
        self.err_code_des = err_code_des

    @property
    def later(self) -> bool:
        """A limit of the day or the merchant: the same payout may go another day."""
        return self.err_code in RETRY_LATER_CODES


class PayOutcomeUnknown(PayError):
    """No answer, or SYSTEMERROR: the payout may have been made. Query it, never renumber it."""


class PayNotFound(PayError):
    """The query found no payout under this bill number."""


def pay_sign(fields: dict[str, Any], key: str) -> str:
    """WeChat Pay's MD5 signature: non-empty fields but `sign`, sorted, `&key=` appended."""
    pairs = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] != "")
    return hashlib.md5(f"{pairs}&key={key}".encode()).hexdigest().upper()  # noqa: S324 - the API's own scheme


def workwx_sign(fields: dict[str, Any], secret: str) -> str:
    """The WeCom payment signature over the fields WeCom names, with the payment secret."""
    names = (
        "act_name",
        "mch_billno",
        "mch_id",
        "nonce_str",
        "re_openid",
        "total_amount",
        "wxappid",
    )
    pairs = "&".join(f"{k}={fields[k]}" for k in names if fields.get(k) not in (None, ""))
    return hashlib.md5(f"{pairs}&secret={secret}".encode()).hexdigest().upper()  # noqa: S324


def to_xml(fields: dict[str, Any]) -> bytes:
    parts = []
    for name, value in fields.items():
        text = str(value).replace("]]>", "]]]]><![CDATA[>")
        parts.append(f"<{name}><![CDATA[{text}]]></{name}>")
    return ("<xml>" + "".join(parts) + "</xml>").encode()


def parse_xml(raw: bytes) -> dict[str, str]:
    try:
        root = ET.fromstring(raw)  # noqa: S314 - expat resolves no external entities
    except ET.ParseError as exc:
        raise PayOutcomeUnknown("the pay host answered something that is not XML") from exc
    return {child.tag: (child.text or "").strip() for child in root}


@dataclass(frozen=True)
class Payout:
    """A payout WeChat Pay made (or has under this bill number)."""

    billno: str
    total_amount: int
    send_listid: str
    status: str = "SENT"


def payout_limit_name() -> str:
    """The Prefect rate limit that paces payouts across processes (see pacing.limit_name)."""
    return limit_name(PAYOUT_API)


def pacing_scope(account: PayoutAccount) -> str:
    """What WeChat Pay counts payouts against: the merchant at its host."""
    return f"{account.pay_base_url}|{account.mch_id}"


def ensure_payout_rate_limit(account: PayoutAccount) -> dict[str, int]:
    """Make the shared rate limit of payouts fit the account's per-minute limit.

    Created when missing, and cut again (pacing.upsert_rate_limit, as every WeCom API's) when it
    lets more through than the account allows or was cut for another limit; one ops made
    stricter or turned off is kept. Returns {limit name: calls a minute}.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = payout_limit_name()
    shape = shared_shape(account.per_minute)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
        fits = limit is not None and (
            not limit.active
            or (
                shape.claim_slots <= limit.limit <= shape.limit_slots
                and 0 < limit.slot_decay_per_second <= shape.decay_slots_per_second * 1.000001
            )
        )
        if not fits:
            upsert_rate_limit(client, PAYOUT_API, account.per_minute)
    return {name: account.per_minute}


class PayClient:
    """Enterprise red packets for one merchant account; paced at the account's per-minute limit.

    With a `pacer` (the account's shared pacing) every call waits for `PAYOUT_API`'s slot;
    without one, an in-process bucket paces this client alone.
    """

    def __init__(
        self,
        account: PayoutAccount,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        rate_limit: ApiRateLimit | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        base = account.pay_base_url
        self.base_url = base if base.endswith("/") else base + "/"
        self.account = account
        self.timeout = timeout
        self._session = session or requests.Session()
        self._limit = rate_limit or ApiRateLimit(account.per_minute)
        self._pacer = pacer
        self.calls: dict[str, int] = {}

    def close(self) -> None:
        self._session.close()

    def _post(self, api: str, fields: dict[str, Any]) -> dict[str, str]:
        key = self.account.api_key.get_secret_value()
        if key:
            fields["sign"] = pay_sign(fields, key)
        else:
            fields["sign"] = "unsigned"
        if self._pacer is not None:
            self._pacer.acquire(PAYOUT_API)
        else:
            self._limit.acquire()
        self.calls[api] = self.calls.get(api, 0) + 1
        try:
            reply = self._session.post(
                self.base_url + api, data=to_xml(fields), timeout=self.timeout
            )
        except requests.ConnectionError as exc:
            # A refused connection never reached the host, but a dropped one may have paid.
            raise PayOutcomeUnknown(f"{api}: no answer ({type(exc).__name__})") from exc
        except requests.Timeout as exc:
            raise PayOutcomeUnknown(f"{api}: timed out") from exc
        if reply.status_code >= 500:
            raise PayOutcomeUnknown(f"{api}: HTTP {reply.status_code}")
        data = parse_xml(reply.content)
        if data.get("return_code") != "SUCCESS":
            raise PayRefused("RETURN_FAIL", data.get("return_msg", "")[:200])
        return data

    def send_redpack(
        self,
        *,
        billno: str,
        openid: str,
        amount_fen: int,
        act_name: str,
        wishing: str = "恭喜获奖",
        remark: str = "",
        scene_id: str | None = None,
    ) -> Payout:
        """Pay one red packet under `billno` (re-entrant: the same number pays once)."""
        fields: dict[str, Any] = {
            "nonce_str": secrets.token_hex(16),
            "mch_billno": billno,
            "mch_id": self.account.mch_id,
            "wxappid": self.account.wxappid,
            "sender_name": self.account.sender_name,
            "re_openid": openid,
            "total_amount": int(amount_fen),
            "wishing": wishing,
            "act_name": act_name,
            "remark": remark,
        }
        if scene_id:
            fields["scene_id"] = scene_id
        secret = self.account.payment_secret.get_secret_value()
        if secret:
            fields["workwx_sign"] = workwx_sign(fields, secret)
        data = self._post(SEND_REDPACK, fields)
        if data.get("result_code") != "SUCCESS":
            code = data.get("err_code", "UNKNOWN")
            if code in UNKNOWN_CODES:
                raise PayOutcomeUnknown(f"{SEND_REDPACK}: {code}")
            raise PayRefused(code, data.get("err_code_des", "")[:200])
        return Payout(
            billno, int(data.get("total_amount") or amount_fen), data.get("send_listid", "")
        )

    def query_redpack(self, billno: str) -> Payout:
        """The payout under `billno`; PayNotFound when WeChat Pay has none."""
        fields = {
            "nonce_str": secrets.token_hex(16),
            "mch_billno": billno,
            "mch_id": self.account.mch_id,
        }
        data = self._post(QUERY_REDPACK, fields)
        if data.get("result_code") != "SUCCESS":
            code = data.get("err_code", "UNKNOWN")
            if code == "NOT_FOUND":
                raise PayNotFound(billno)
            if code in UNKNOWN_CODES:
                raise PayOutcomeUnknown(f"{QUERY_REDPACK}: {code}")
            raise PayRefused(code, data.get("err_code_des", "")[:200])
        return Payout(
            billno,
            int(data.get("total_amount") or 0),
            data.get("detail_id", ""),
            data.get("status", "SENT"),
        )
