"""The sandbox's state split by service: each resets on its own, all of it survives a restart."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from siyu.sandbox.clock import SandboxClock
from siyu.sandbox.seed import load_seed
from siyu.sandbox.server import SandboxServer
from siyu.sandbox.state import SandboxState
from siyu.sandbox.store import SQLiteStateStore
from tests.fixtures.sandbox import (
    SEED_CHAT_IDS,
    SEED_CONTACT_IDS,
    SEED_INTEREST_TAGS,
    SandboxHandle,
)
from tests.sandbox.bare_client import WeCom, send_results, send_single, task_statuses

C1, C4 = SEED_CONTACT_IDS[0], SEED_CONTACT_IDS[3]
WEALTH = SEED_INTEREST_TAGS[0][0]


def busy_state(seed_dir: Path, store: SQLiteStateStore | None = None) -> SandboxState:
    """A state with something in every service, on a clock the test holds."""
    clock = SandboxClock(lambda: 1_765_000_000.0)
    state = SandboxState(store, clock)
    load_seed(state, seed_dir)
    state.contacts.mark_tag("mgr001", C1, [WEALTH], [])
    state.messages.mass.create(
        {"sender": "mgr001", "external_userid": [C1], "text": {"content": "x"}}
    )
    state.messages.post_webhook("ops", {"msgtype": "text", "text": {"content": "done"}})
    state.groupchats.record_messages(SEED_CHAT_IDS[0], "mgr001", clock.now())
    openid = state.payments.convert_to_openid(C1)
    state.payments.send_redpack(
        {
            "nonce_str": "n",
            "sign": "s",
            "mch_billno": "B1",
            "mch_id": "m",
            "wxappid": "ww-sandbox-corp",
            "re_openid": openid,
            "total_amount": "500",
        }
    )
    return state


def test_each_service_resets_on_its_own(seed_dir: Path) -> None:
    state = busy_state(seed_dir)
    state.messages.reset()
    assert state.messages.mass.messages == {} and state.messages.webhook_posts == []
    assert state.contacts.contact_tags("mgr001", C1) == [WEALTH]
    assert state.payments.payouts and state.groupchats.chat_days
    state.payments.reset()
    assert state.payments.payouts == {} and state.payments.openids == {}
    assert state.corp_counts()["groups"] == 2
    state.groupchats.reset()
    assert state.groupchats.groups == {} and state.contacts.employees
    state.reset()
    assert set(state.corp_counts().values()) == {0}
    assert state.clock.describe()["real"] is True


def test_a_service_reset_leaves_the_other_services_records(seed_dir: Path, tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "state.db")
    state = busy_state(seed_dir, store)
    state.payments.reset()
    state.close()
    reopened = SandboxState(SQLiteStateStore(tmp_path / "state.db"))
    counts = reopened.corp_counts()
    assert counts["payouts"] == 0 and counts["messages"] == 1 and counts["follows"] == 20
    assert reopened.contacts.contact_tags("mgr001", C1) == [WEALTH]
    reopened.close()


def test_new_state_survives_a_restart(tmp_path: Path, seed_dir: Path) -> None:
    state_file = tmp_path / "sandbox" / "state.db"
    start = datetime.fromisoformat("2026-12-07T10:00:00+08:00").timestamp()
    with SandboxServer(state_path=state_file) as server:
        handle = SandboxHandle(server)
        handle.seed(seed_dir)
        handle.set_clock(start, frozen=True)
        handle.config(confirm_delay_seconds=600, employee_confirm={"mgr001": "late"})
        wecom = WeCom(handle)
        msgid = send_single(wecom, "mgr001", [C1, C4])["msgid"]
        handle.group_activity(
            [
                {"chat_id": SEED_CHAT_IDS[0], "kind": "leave", "userid": C4},
                {"chat_id": SEED_CHAT_IDS[0], "kind": "message", "userid": C1, "count": 2},
            ]
        )
        openid = wecom.post("externalcontact/convert_to_openid", {"external_userid": C1})["openid"]
    with SandboxServer(state_path=state_file) as server:
        handle = SandboxHandle(server)
        assert handle.clock()["now"] == start and handle.clock()["frozen"] is True
        wecom = WeCom(handle)
        handle.advance_clock(600)
        assert task_statuses(wecom, msgid) == {"mgr001": 0}  # still late after the restart
        handle.advance_clock(9 * 600)
        assert send_results(wecom, msgid, "mgr001") == {C1: 1, C4: 1}
        handle.advance_clock(86_400)
        wecom.token = handle.token()
        day = datetime.fromisoformat("2026-12-07T00:00:00+08:00").timestamp()
        figures = wecom.post(
            "externalcontact/groupchat/statistic_group_by_day", {"day_begin_time": day}
        )["items"][0]["data"]
        assert figures["msg_total"] == 2 and figures["member_total"] == 7 + 8 - 1
        again = wecom.post("externalcontact/convert_to_openid", {"external_userid": C1})
        assert again["openid"] == openid
