"""The sandbox's WeChat Pay: enterprise red packets, paid once per bill number, within the platform's limits."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.contacts import ContactBackend
from siyu.sandbox.platform import INVALID_EXTERNAL_USERID, WeComError, china_day
from siyu.schemas.settings import SANDBOX_CORP_ID

BILLNO = re.compile(r"[0-9A-Za-z]{1,28}")
REQUIRED = ("nonce_str", "sign", "mch_billno", "mch_id", "wxappid", "re_openid", "total_amount")
# What makes two calls with one bill number the same payout.
IDENTITY = ("mch_id", "wxappid", "re_openid", "total_amount")


class PayError(Exception):
    """A payout WeChat Pay refuses: result_code FAIL with its err_code and err_code_des.

    Codes as the red-packet API names them: PARAM_ERROR, SIGN_ERROR, MONEY_LIMIT,
    SENDNUM_LIMIT, FREQ_LIMIT, NOTENOUGH, OPENID_ERROR, SYSTEMERROR, NOT_FOUND. Unconfirmed
    (read off the ordinary red packet's page, not the enterprise one's): RCVDAMOUNT_LIMIT for
    a customer's daily amount, SENDAMOUNT_LIMIT for the merchant's, ILLEGAL_APPID.
    """

    def __init__(self, err_code: str, err_code_des: str) -> None:
        super().__init__(f"{err_code}: {err_code_des}")
        self.err_code = err_code
        self.err_code_des = err_code_des


def pay_sign(fields: dict[str, Any], key: str) -> str:
    """WeChat Pay's MD5 signature: non-empty fields but `sign`, sorted, `&key=` appended."""
    pairs = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] != "")
    return hashlib.md5(f"{pairs}&key={key}".encode()).hexdigest().upper()  # noqa: S324 - the API's own scheme


def openid_for(external_userid: str) -> str:
    """A stable openid per contact, shaped like WeChat's (`o` and 27 more characters)."""
    return "oSbx" + hashlib.sha256(f"{SANDBOX_CORP_ID}:{external_userid}".encode()).hexdigest()[:24]


class PaymentBackend(Backend):
    """Openids handed out by convert_to_openid, and every payout by bill number."""

    kinds = ("openid", "payout")

    def __init__(self, shared: Shared, contacts: ContactBackend) -> None:
        self.contacts = contacts
        super().__init__(shared)

    def clear(self) -> None:
        self.openids: dict[str, str] = {}  # openid -> external_userid
        self.payouts: dict[str, dict[str, Any]] = {}
        self.per_customer_day: dict[tuple[str, str], list[int]] = {}  # -> [packets, fen]
        self.merchant_day: dict[str, int] = {}
        self.paid_fen = 0

    def load(self, kind: str, body: Any) -> None:
        if kind == "openid":
            self.openids[body["openid"]] = body["external_userid"]
        else:
            self._book(body)

    def _book(self, payout: dict[str, Any]) -> None:
        self.payouts[payout["mch_billno"]] = payout
        tally = self.per_customer_day.setdefault((payout["day"], payout["re_openid"]), [0, 0])
        tally[0] += 1
        tally[1] += payout["total_amount"]
        self.merchant_day[payout["day"]] = (
            self.merchant_day.get(payout["day"], 0) + payout["total_amount"]
        )
        self.paid_fen += payout["total_amount"]

    # ---- the WeCom side ----------------------------------------------------------------

    def convert_to_openid(self, external_userid: str) -> str:
        contact = self.contacts.contacts.get(external_userid)
        # A WeCom user (type 2) has no WeChat openid; the platform's code for it is unconfirmed.
        if contact is None or contact.get("type", 1) != 1:
            raise WeComError(INVALID_EXTERNAL_USERID, "invalid external_userid")
        openid = openid_for(external_userid)
        if openid not in self.openids:
            self.openids[openid] = external_userid
            self.store.put("openid", openid, {"openid": openid, "external_userid": external_userid})
        return openid

    # ---- red packets -------------------------------------------------------------------

    def _check_request(self, fields: dict[str, str]) -> int:
        missing = [name for name in REQUIRED if not fields.get(name)]
        if missing:
            raise PayError("PARAM_ERROR", f"missing {', '.join(missing)}")
        key = self.config.pay_api_key
        if key is not None and fields["sign"] != pay_sign(fields, key):
            raise PayError("SIGN_ERROR", "signature check failed")
        if fields["wxappid"] != SANDBOX_CORP_ID:
            raise PayError("ILLEGAL_APPID", "wxappid is not the corp's id")
        if not BILLNO.fullmatch(fields["mch_billno"]):
            raise PayError("PARAM_ERROR", "mch_billno is 1-28 characters of 0-9a-zA-Z")
        try:
            return int(fields["total_amount"])
        except ValueError:
            raise PayError("PARAM_ERROR", "total_amount must be a number of fen") from None

    def send_redpack(self, fields: dict[str, str]) -> dict[str, Any]:
        """Pay one red packet, or answer for the one already paid under this bill number."""
        amount = self._check_request(fields)
        paid = self.payouts.get(fields["mch_billno"])
        if paid is not None:
            if any(str(paid[name]) != fields[name] for name in IDENTITY):
                raise PayError("PARAM_ERROR", "mch_billno already used with other parameters")
            return paid
        config = self.config
        most = (
            config.redpack_max_with_scene_fen if fields.get("scene_id") else config.redpack_max_fen
        )
        if not config.redpack_min_fen <= amount <= most:
            raise PayError("MONEY_LIMIT", "amount outside the allowed range")
        ext = self.openids.get(fields["re_openid"])
        if ext is None:
            raise PayError("OPENID_ERROR", "openid does not belong to this appid")
        now = self.now()
        day = china_day(now)
        packets, fen = self.per_customer_day.get((day, fields["re_openid"]), [0, 0])
        if packets >= config.redpack_daily_count:
            raise PayError("SENDNUM_LIMIT", "the customer got the most red packets for today")
        if fen + amount > config.redpack_daily_fen:
            raise PayError("RCVDAMOUNT_LIMIT", "the customer got the most money for today")
        if self.merchant_day.get(day, 0) + amount > config.merchant_daily_fen:
            raise PayError("SENDAMOUNT_LIMIT", "the merchant paid the most for today")
        balance = config.merchant_balance_fen
        if balance is not None and self.paid_fen + amount > balance:
            raise PayError("NOTENOUGH", "the merchant balance is too low")
        payout = {
            "mch_billno": fields["mch_billno"],
            "mch_id": fields["mch_id"],
            "wxappid": fields["wxappid"],
            "re_openid": fields["re_openid"],
            "external_userid": ext,
            "total_amount": amount,
            "sender_name": fields.get("sender_name", ""),
            "wishing": fields.get("wishing", ""),
            "act_name": fields.get("act_name", ""),
            "remark": fields.get("remark", ""),
            "scene_id": fields.get("scene_id", ""),
            "send_listid": f"1000{int(now)}{secrets.randbelow(10**10):010d}",
            "send_time": now,
            "day": day,
        }
        self._book(payout)
        self.store.put("payout", payout["mch_billno"], payout)
        return payout

    def status(self, payout: dict[str, Any]) -> str:
        """SENT, then RECEIVED once the customer opened it (after the configured delay)."""
        opened = payout["send_time"] + self.config.redpack_receive_delay_seconds
        return "RECEIVED" if self.now() >= opened else "SENT"

    def query(self, fields: dict[str, str]) -> dict[str, Any]:
        """One payout by bill number, for reconciling an unknown outcome."""
        billno = fields.get("mch_billno") or ""
        if not billno or not fields.get("mch_id"):
            raise PayError("PARAM_ERROR", "mch_billno and mch_id are required")
        payout = self.payouts.get(billno)
        if payout is None or payout["mch_id"] != fields["mch_id"]:
            raise PayError("NOT_FOUND", "no payout with this mch_billno")
        return {**payout, "status": self.status(payout)}

    def describe(self) -> list[dict[str, Any]]:
        """Every payout in the order paid (control API)."""
        return [{**p, "status": self.status(p)} for p in self.payouts.values()]
