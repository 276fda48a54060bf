"""The red-packet client against the sandbox's WeChat Pay: signed XML, one payout per bill number, lost replies."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from siyu.blocks.group_cadence import PayoutAccount
from siyu.blocks.wecom import WeComClient
from siyu.blocks.wecom_pay import (
    SEND_REDPACK,
    PayClient,
    PayNotFound,
    PayOutcomeUnknown,
    PayRefused,
    pay_sign,
)
from tests.fixtures.sandbox import SEED_CONTACT_IDS

KEY = "k" * 32


@pytest.fixture
def pay(sandbox, seed_dir) -> tuple[PayClient, str]:
    sandbox.seed(seed_dir)
    sandbox.config(pay_api_key=KEY)
    account = PayoutAccount(
        pay_base_url=sandbox.pay_base, wxappid=sandbox.corp_id, api_key=SecretStr(KEY)
    )
    wecom = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    return PayClient(account), wecom.convert_to_openid(SEED_CONTACT_IDS[0])


def test_a_payout_is_made_once_per_bill_number(pay, sandbox):
    client, openid = pay
    first = client.send_redpack(billno="RTEST0001", openid=openid, amount_fen=500, act_name="quiz")
    again = client.send_redpack(billno="RTEST0001", openid=openid, amount_fen=500, act_name="quiz")
    assert first.send_listid == again.send_listid
    assert len(sandbox.payouts()) == 1
    assert client.query_redpack("RTEST0001").total_amount == 500


def test_a_lost_reply_is_unknown_and_the_query_finds_the_payout(pay, sandbox):
    client, openid = pay
    sandbox.fault(api=SEND_REDPACK, drop_connection=True, after_effect=True, times=1)
    with pytest.raises(PayOutcomeUnknown):
        client.send_redpack(billno="RTEST0002", openid=openid, amount_fen=500, act_name="quiz")
    assert client.query_redpack("RTEST0002").total_amount == 500
    with pytest.raises(PayNotFound):
        client.query_redpack("RTEST0003")


def test_systemerror_is_unknown_and_a_limit_is_a_refusal_for_later(pay, sandbox):
    client, openid = pay
    sandbox.fault(api=SEND_REDPACK, err_code="SYSTEMERROR", times=1)
    with pytest.raises(PayOutcomeUnknown):
        client.send_redpack(billno="RTEST0004", openid=openid, amount_fen=500, act_name="quiz")
    with pytest.raises(PayRefused) as refused:
        client.send_redpack(billno="RTEST0005", openid=openid, amount_fen=50, act_name="quiz")
    assert refused.value.err_code == "MONEY_LIMIT" and not refused.value.later


def test_a_wrong_key_is_refused_by_the_signature_check(sandbox, seed_dir):
    sandbox.seed(seed_dir)
    sandbox.config(pay_api_key=KEY)
    account = PayoutAccount(
        pay_base_url=sandbox.pay_base, wxappid=sandbox.corp_id, api_key=SecretStr("x")
    )
    wecom = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    openid = wecom.convert_to_openid(SEED_CONTACT_IDS[0])
    with pytest.raises(PayRefused) as refused:
        PayClient(account).send_redpack(
            billno="RTEST0006", openid=openid, amount_fen=500, act_name="q"
        )
    assert refused.value.err_code == "SIGN_ERROR"


def test_the_signature_is_wechat_pays_md5():
    fields = {"b": "2", "a": "1", "empty": "", "sign": "x"}
    import hashlib

    assert pay_sign(fields, "K") == hashlib.md5(b"a=1&b=2&key=K").hexdigest().upper()


def test_the_pay_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SIYU_PAY_BASE_URL", "http://127.0.0.1:9/")
    assert PayoutAccount.from_env("ww1").pay_base_url == "http://127.0.0.1:9/"
