"""WeChat Pay red packets over real HTTP: XML in and out, paid once per bill number, the limits, lost replies."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any

import pytest
import requests

from siyu.sandbox.payments import pay_sign
from siyu.sandbox.platform import CHINA
from tests.fixtures.sandbox import SEED_CONTACT_IDS, SandboxHandle
from tests.sandbox.bare_client import WeCom

SEND = "mmpaymkttransfers/sendworkwxredpack"
QUERY = "mmpaymkttransfers/queryworkwxredpack"
C1, C2 = SEED_CONTACT_IDS[:2]
MCH_ID = "1900000109"


def to_xml(fields: dict[str, Any]) -> bytes:
    return ("<xml>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items()) + "</xml>").encode()


def from_xml(body: bytes) -> dict[str, str]:
    return {child.tag: child.text or "" for child in ET.fromstring(body)}


class Pay:
    """A bare WeChat Pay caller: builds a red packet body, posts it, reads the XML reply."""

    def __init__(self, wecom: WeCom) -> None:
        self.wecom = wecom
        self.handle = wecom.handle
        self.openids: dict[str, str] = {}

    def openid(self, ext: str) -> str:
        if ext not in self.openids:
            reply = self.wecom.post("externalcontact/convert_to_openid", {"external_userid": ext})
            assert reply["errcode"] == 0, reply
            self.openids[ext] = reply["openid"]
        return self.openids[ext]

    def fields(self, billno: str, ext: str = C1, fen: int = 500, **extra: Any) -> dict[str, Any]:
        return {
            "nonce_str": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
            "sign": "UNCHECKED",
            "mch_billno": billno,
            "mch_id": MCH_ID,
            "wxappid": self.handle.corp_id,
            "sender_name": "王经理",
            "re_openid": self.openid(ext),
            "total_amount": fen,
            "wishing": "恭喜中奖",
            "act_name": "周二骰子",
            "remark": "群活动奖励",
            **extra,
        }

    def post(self, api: str, fields: dict[str, Any]) -> dict[str, str]:
        reply = requests.post(self.handle.pay_base + api, data=to_xml(fields), timeout=30)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/xml")
        return from_xml(reply.content)

    def send(self, billno: str, ext: str = C1, fen: int = 500, **extra: Any) -> dict[str, str]:
        return self.post(SEND, self.fields(billno, ext, fen, **extra))

    def query(self, billno: str) -> dict[str, str]:
        body = {"nonce_str": "n1", "sign": "x", "mch_billno": billno, "mch_id": MCH_ID}
        return self.post(QUERY, {**body, "appid": self.handle.corp_id})


@pytest.fixture
def pay(wecom: WeCom) -> Pay:
    wecom.handle.set_clock(datetime(2026, 12, 4, 15, 0, tzinfo=CHINA).timestamp(), frozen=True)
    wecom.handle.config(token_ttl_seconds=30 * 86_400)
    wecom.token = wecom.handle.token()
    return Pay(wecom)


def test_a_red_packet_is_paid_once_per_bill_number(pay: Pay) -> None:
    paid = pay.send("W50G0001R1M001")
    assert (paid["return_code"], paid["result_code"], paid["err_code"]) == ("SUCCESS",) * 3
    assert paid["mch_billno"] == "W50G0001R1M001" and paid["total_amount"] == "500"
    assert paid["send_listid"] and paid["re_openid"] == pay.openid(C1)

    again = pay.send("W50G0001R1M001")
    assert again == paid  # re-entrant: the same answer, and no second payout
    [payout] = pay.handle.payouts()
    assert payout["external_userid"] == C1 and payout["total_amount"] == 500
    assert payout["status"] == "SENT"

    changed = pay.send("W50G0001R1M001", fen=600)
    assert (changed["result_code"], changed["err_code"]) == ("FAIL", "PARAM_ERROR")
    assert len(pay.handle.payouts()) == 1

    found = pay.query("W50G0001R1M001")
    assert found["status"] == "SENT" and found["detail_id"] == paid["send_listid"]
    pay.handle.advance_clock(60)
    assert pay.query("W50G0001R1M001")["status"] == "RECEIVED"
    assert pay.query("W50G0001R1M999")["err_code"] == "NOT_FOUND"


def test_openids_come_from_convert_to_openid(pay: Pay) -> None:
    first = pay.openid(C1)
    again = pay.wecom.post("externalcontact/convert_to_openid", {"external_userid": C1})
    assert again["openid"] == first and first.startswith("o") and len(first) == 28
    assert pay.openid(C2) != first
    unknown = pay.wecom.post("externalcontact/convert_to_openid", {"external_userid": "wmNope"})
    assert unknown["errcode"] == 40096
    stranger = {**pay.fields("W50X1"), "re_openid": "oSbxNeverConverted0000000000"}
    assert pay.post(SEND, stranger)["err_code"] == "OPENID_ERROR"


def test_amount_and_daily_limits_per_customer(pay: Pay) -> None:
    assert pay.send("BILL0001", fen=99)["err_code"] == "MONEY_LIMIT"
    assert pay.send("BILL0002", fen=20_001)["err_code"] == "MONEY_LIMIT"
    assert pay.send("BILL0003", fen=20_001, scene_id="PRODUCT_1")["result_code"] == "SUCCESS"
    codes = [pay.send(f"BILL1{i:03d}", fen=100)["err_code"] for i in range(10)]
    assert codes == ["SUCCESS"] * 9 + ["SENDNUM_LIMIT"]  # ten a customer a day
    assert pay.send("BILL2000", ext=C2, fen=100)["err_code"] == "SUCCESS"  # another customer

    # The next Beijing day: the count starts again; 1,000 yuan a customer a day.
    pay.handle.advance_clock(9 * 3600)
    codes = [pay.send(f"BILL3{i:03d}", fen=20_000)["err_code"] for i in range(6)]
    assert codes == ["SUCCESS"] * 5 + ["RCVDAMOUNT_LIMIT"]
    assert pay.send("BILL3000", fen=20_000)["err_code"] == "SUCCESS"  # paid before: same answer
    assert len(pay.handle.payouts()) == 1 + 9 + 1 + 5


def test_merchant_limits_and_balance(pay: Pay) -> None:
    pay.handle.config(merchant_daily_fen=1000)
    assert pay.send("M1", fen=600)["err_code"] == "SUCCESS"
    assert pay.send("M2", ext=C2, fen=600)["err_code"] == "SENDAMOUNT_LIMIT"
    pay.handle.config(merchant_daily_fen=10**8, merchant_balance_fen=1000)
    assert pay.send("M3", ext=C2, fen=500)["err_code"] == "NOTENOUGH"
    assert pay.send("M4", ext=C2, fen=400)["err_code"] == "SUCCESS"


def test_payouts_a_minute_answer_freq_limit(pay: Pay) -> None:
    pay.handle.config(redpack_per_minute=2)
    codes = [pay.send(f"F{i}", fen=100)["err_code"] for i in range(3)]
    assert codes == ["SUCCESS", "SUCCESS", "FREQ_LIMIT"]
    assert [p["mch_billno"] for p in pay.handle.payouts()] == ["F0", "F1"]


def test_a_lost_reply_after_the_payout_is_reconciled_by_bill_number(pay: Pay) -> None:
    pay.handle.fault(api=SEND, drop_connection=True, after_effect=True, times=1)
    with pytest.raises(requests.ConnectionError):
        pay.send("LOST0001")
    assert pay.query("LOST0001")["status"] == "SENT"  # WeChat Pay paid; the caller never heard
    retried = pay.send("LOST0001")
    assert retried["result_code"] == "SUCCESS" and len(pay.handle.payouts()) == 1

    pay.handle.fault(api=SEND, err_code="SYSTEMERROR", after_effect=True, times=1)
    busy = pay.send("BUSY0001")
    assert (busy["result_code"], busy["err_code"]) == ("FAIL", "SYSTEMERROR")
    assert pay.send("BUSY0001")["result_code"] == "SUCCESS"
    assert len(pay.handle.payouts()) == 2

    pay.handle.fault(api=SEND, errcode=-1, match={"mch_billno": "EARLY001"}, times=1)
    assert pay.send("EARLY001")["err_code"] == "SYSTEMERROR"  # before the effect: nothing paid
    assert pay.query("EARLY001")["err_code"] == "NOT_FOUND"
    log = pay.handle.requests(api=SEND)
    assert [e["fault"] for e in log[:2]] == ["drop_connection after effect", None]
    assert all("sign" not in e["params"] for e in log)


def test_requests_are_checked_and_signed_when_a_key_is_set(pay: Pay) -> None:
    bad = requests.post(pay.handle.pay_base + SEND, data=b"{not xml", timeout=30)
    assert from_xml(bad.content)["return_code"] == "FAIL"
    missing = pay.fields("S1")
    del missing["re_openid"]
    assert pay.post(SEND, missing)["err_code"] == "PARAM_ERROR"
    assert pay.send("bill-with-dash")["err_code"] == "PARAM_ERROR"
    assert pay.send("B" * 29)["err_code"] == "PARAM_ERROR"
    assert pay.post(SEND, {**pay.fields("S2"), "wxappid": "wwOther"})["err_code"] == "ILLEGAL_APPID"

    pay.handle.config(pay_api_key="sandbox-merchant-key")
    assert pay.send("S3")["err_code"] == "SIGN_ERROR"
    fields = pay.fields("S4")
    fields["sign"] = pay_sign({k: str(v) for k, v in fields.items()}, "sandbox-merchant-key")
    assert pay.post(SEND, fields)["result_code"] == "SUCCESS"
    unknown = requests.post(pay.handle.pay_base + "mmpaymkttransfers/nope", data=b"<xml/>")
    assert unknown.status_code == 404


def test_a_reset_forgets_payouts(pay: Pay, sandbox: SandboxHandle) -> None:
    assert pay.send("R1")["result_code"] == "SUCCESS"
    assert pay.handle.stats()["corp"]["payouts"] == 1
    sandbox.reset()
    assert sandbox.payouts() == []
