"""The red-packet client against the sandbox's WeChat Pay: signed XML, one payout per bill number, lost replies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from pydantic import SecretStr

from siyu.blocks.group_cadence import PayoutAccount
from siyu.blocks.wecom import WeComClient
from siyu.blocks.wecom.pacing import PrefectPacer, RateLimits
from siyu.blocks.wecom_pay import (
    SEND_REDPACK,
    PayClient,
    PayNotFound,
    PayOutcomeUnknown,
    PayRefused,
    ensure_payout_rate_limit,
    pacing_scope,
    pay_sign,
    payout_limit_name,
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


PAY_ONE = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from siyu.blocks.group_cadence import PayoutAccount

    pay_base, corp, key, openid = sys.argv[1:]
    account = PayoutAccount(pay_base_url=pay_base, wxappid=corp, api_key=SecretStr(key),
                            per_minute=1)
    account.get_client().send_redpack(billno="RPACED0001", openid=openid, amount_fen=500,
                                      act_name="quiz")
    """
)


def test_payouts_share_one_prefect_rate_limit_across_processes(prefect_server, pay, sandbox):
    """The merchant's limit holds for all workers: a payout in another process uses it up."""
    _, openid = pay
    account = PayoutAccount(
        pay_base_url=sandbox.pay_base, wxappid=sandbox.corp_id, api_key=SecretStr(KEY),
        per_minute=1,
    )  # fmt: skip
    assert ensure_payout_rate_limit(account) == {payout_limit_name(): 1}
    assert account.shared_pacing
    with get_client(sync_client=True) as client:  # slots other tests' payouts left: none here
        client.update_global_concurrency_limit(
            payout_limit_name(), GlobalConcurrencyLimitUpdate(active_slots=0)
        )
    done = subprocess.run(
        [sys.executable, "-c", PAY_ONE, sandbox.pay_base, sandbox.corp_id, KEY, openid],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PREFECT_API_URL": prefect_server},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(sandbox.payouts()) == 1
    # This minute's one payout is spent: here the next one waits for the shared limit's refill.
    here = PayClient(
        account,
        pacer=PrefectPacer(pacing_scope(account), RateLimits(1), timeout_seconds=1),
    )
    with pytest.raises(TimeoutError, match=payout_limit_name()):
        here.send_redpack(billno="RPACED0002", openid=openid, amount_fen=500, act_name="quiz")
    assert len(sandbox.payouts()) == 1
    # A limit ops made stricter is kept; one cut for another per-minute limit is cut again.
    with get_client(sync_client=True) as client:
        made = client.read_global_concurrency_limit_by_name(payout_limit_name())
        client.update_global_concurrency_limit(
            payout_limit_name(),
            GlobalConcurrencyLimitUpdate(slot_decay_per_second=made.slot_decay_per_second / 2),
        )
        ensure_payout_rate_limit(account)
        kept = client.read_global_concurrency_limit_by_name(payout_limit_name())
        assert kept.slot_decay_per_second == made.slot_decay_per_second / 2
        ensure_payout_rate_limit(PayoutAccount(wxappid=sandbox.corp_id))  # 1,800 a minute
        recut = client.read_global_concurrency_limit_by_name(payout_limit_name())
        assert recut.limit > made.limit and recut.slot_decay_per_second > made.slot_decay_per_second
