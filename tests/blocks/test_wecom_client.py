"""WeComClient against the sandbox over real HTTP: every call, tokens, retries, errors, pacing."""

from __future__ import annotations

import logging
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import pytest

from siyu.blocks.wecom import (
    ApiRateLimit,
    ContactUnreachable,
    InvalidExternalUser,
    InvalidTag,
    WeComClient,
    WeComConfigError,
    WeComError,
    WeComOutcomeUnknown,
    WeComRowError,
    WeComUnavailable,
    pacing,
)
from siyu.schemas.settings import SANDBOX_AGENT_ID
from siyu.schemas.wecom import (
    AppMessageResult,
    ContactDetail,
    ContactWay,
    GroupChat,
    JoinWay,
    MsgTemplateResult,
    NewTag,
    TagGroup,
)

FOLLOW_USERS = "externalcontact/get_follow_user_list"
MARK_TAG = "externalcontact/mark_tag"


class Waits(list):
    """Records the backoff waits the client asks for, without waiting (keeps the tests fast)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(autouse=True)
def own_pacing(monkeypatch) -> None:
    """Each test paces in buckets of its own: no 45009 streak or slow-down leaks between tests."""
    monkeypatch.setattr(pacing, "_SHARED_LIMITS", {})


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_client(sandbox, waits) -> Iterator[Callable[..., WeComClient]]:
    """Build clients on the sandbox; backoff waits are recorded, not slept."""
    made: list[WeComClient] = []

    def make(**overrides) -> WeComClient:
        kwargs = {
            "base_url": sandbox.api_base,
            "corp_id": sandbox.corp_id,
            "secret": sandbox.secret,
            "agent_id": SANDBOX_AGENT_ID,
            "timeout": 5.0,
            "max_attempts": 4,
            "sleep": waits,
        }
        kwargs.update(overrides)
        client = WeComClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def seeded(sandbox, seed_dir):
    sandbox.seed(seed_dir)
    return sandbox


@pytest.fixture
def client(seeded, make_client) -> WeComClient:
    return make_client()


def _pair(client: WeComClient) -> tuple[str, str]:
    """An (employee, contact) relation from the seed."""
    for userid in client.get_follow_user_list():
        contacts = client.list_contacts(userid)
        if contacts:
            return userid, contacts[0]
    raise AssertionError("the seed has no follow relation")


def _sandbox_errors(sandbox, api: str) -> dict[str, int]:
    return sandbox.stats()["errors"].get(api, {})


# -- happy paths --------------------------------------------------------------------------------


def test_contacts_calls_read_the_seed(client: WeComClient) -> None:
    userids = client.get_follow_user_list()
    assert len(userids) == 3

    per_user = {u: client.list_contacts(u) for u in userids}
    follows = sum(len(c) for c in per_user.values())
    assert follows >= 10

    userid = next(u for u, c in per_user.items() if c)
    external_userid = per_user[userid][0]
    detail = client.get_contact(external_userid)
    assert isinstance(detail, ContactDetail)
    assert detail.external_contact.external_userid == external_userid
    assert userid in {f.userid for f in detail.follow_user}

    items = list(client.iter_contacts_by_user(userids, limit=100))
    assert len(items) == follows
    assert {(i.follow_info.userid, i.external_contact.external_userid) for i in items} == {
        (u, x) for u, xs in per_user.items() for x in xs
    }


def test_contacts_by_user_pages_with_the_cursor(client: WeComClient, seeded) -> None:
    userids = client.get_follow_user_list()
    everything = list(client.iter_contacts_by_user(userids, limit=100))
    before = client.calls["externalcontact/batch/get_by_user"]

    paged = list(client.iter_contacts_by_user(userids, limit=3))

    pages = client.calls["externalcontact/batch/get_by_user"] - before
    assert pages >= -(-len(everything) // 3)  # at least ceil(n / 3) pages were read
    assert sorted(i.model_dump_json() for i in paged) == sorted(
        i.model_dump_json() for i in everything
    )


def test_corp_tag_crud_and_mark_tag(client: WeComClient, seeded) -> None:
    groups = client.get_corp_tag_list()
    assert "客户意向" in {g.group_name for g in groups}

    group = client.add_corp_tag(
        group_name="siyu资产", tags=[NewTag(name="高净值", order=2), NewTag(name="代发")]
    )
    assert isinstance(group, TagGroup)
    assert {t.name for t in group.tag} == {"高净值", "代发"}
    ids = {t.name: t.id for t in group.tag}

    client.edit_corp_tag(ids["代发"], name="代发工资")
    [again] = client.get_corp_tag_list(group_ids=[group.group_id])
    assert {t.name for t in again.tag if not t.deleted} == {"高净值", "代发工资"}

    userid, external_userid = _pair(client)
    client.mark_tag(userid, external_userid, add_tag=[ids["高净值"], ids["代发"]])
    assert {ids["高净值"], ids["代发"]} <= set(seeded.contact_tags(userid, external_userid))
    client.mark_tag(userid, external_userid, remove_tag=[ids["代发"]])
    assert ids["代发"] not in seeded.contact_tags(userid, external_userid)

    client.del_corp_tag(tag_ids=[ids["高净值"]])
    live = {
        t.id for g in client.get_corp_tag_list() if not g.deleted for t in g.tag if not t.deleted
    }
    assert ids["高净值"] not in live
    assert ids["高净值"] not in seeded.contact_tags(userid, external_userid)


def test_mark_tag_refuses_an_empty_change_without_calling(client: WeComClient) -> None:
    with pytest.raises(ValueError):
        client.mark_tag("u", "wm1")
    assert MARK_TAG not in client.calls


def test_group_chat_calls(client: WeComClient) -> None:
    chats = list(client.iter_group_chats())
    assert len(chats) == 2
    assert list(client.iter_group_chats(limit=1)) == chats  # one group a page, same answer

    chat = client.get_group_chat(chats[0].chat_id)
    assert isinstance(chat, GroupChat)
    assert chat.chat_id == chats[0].chat_id
    assert {m.type for m in chat.member_list} <= {1, 2}
    assert any(m.type == 2 for m in chat.member_list)

    config_id = client.add_join_way(chat_id_list=[chat.chat_id], state="ch_menu", remark="test")
    way = client.get_join_way(config_id)
    assert isinstance(way, JoinWay)
    assert way.config_id == config_id
    assert chat.chat_id in way.chat_id_list


def test_mass_message_calls(client: WeComClient) -> None:
    userid, external_userid = _pair(client)
    started = int(time.time()) - 60

    result = client.add_msg_template(sender=userid, external_userid=[external_userid], text="您好")
    assert isinstance(result, MsgTemplateResult)
    assert result.msgid
    assert result.fail_list == []

    listed = list(
        client.iter_groupmsg_list(
            start_time=started, end_time=int(time.time()) + 60, creator=userid
        )
    )
    assert result.msgid in {m.msgid for m in listed}

    tasks = list(client.iter_groupmsg_task(result.msgid))
    assert [t.userid for t in tasks] == [userid]
    assert tasks[0].status in (0, 2)

    sent = list(client.iter_groupmsg_send_result(result.msgid, userid))
    assert [s.external_userid for s in sent] == [external_userid]

    client.remind_groupmsg_send(result.msgid)
    client.cancel_groupmsg_send(result.msgid)


def test_app_message_and_robot(client: WeComClient, seeded) -> None:
    userid = client.get_follow_user_list()[0]
    reply = client.send_app_message([userid], msgtype="text", content={"content": "请发布今日素材"})
    assert isinstance(reply, AppMessageResult)
    assert reply.invalid_users() == []
    messages = seeded.control("GET", "/sandbox/app_messages")
    assert "请发布今日素材" in str(messages)

    client.send_webhook("robot-key-1", {"msgtype": "text", "text": {"content": "tag sync failed"}})
    assert "tag sync failed" in str(seeded.control("GET", "/sandbox/webhook_posts"))
    assert "gettoken" in client.calls  # the app message needed a token...
    assert client.calls["webhook/send"] == 1  # ...the robot did not


def test_app_message_needs_an_agent_id(seeded, make_client) -> None:
    client = make_client(agent_id=None)
    with pytest.raises(WeComConfigError, match="agent_id"):
        client.send_app_message(["u1"], msgtype="text", content={"content": "x"})
    assert client.calls == {}


def test_welcome_contact_way_and_moments(client: WeComClient) -> None:
    userid, _ = _pair(client)
    way = client.add_contact_way(user=[userid], state="ch_app", remark="app channel")
    assert isinstance(way, ContactWay)
    assert way.config_id

    client.send_welcome_msg("welcome-code-1", text="欢迎")

    jobid = client.add_moment_task(text="周末理财沙龙", sender_userids=[userid])
    assert jobid
    assert client.get_moment_task_result(jobid).status in (1, 2)


# -- token --------------------------------------------------------------------------------------


def test_token_is_fetched_once_for_many_calls(client: WeComClient, seeded) -> None:
    for _ in range(5):
        client.get_follow_user_list()
    client.get_corp_tag_list()
    assert client.calls["gettoken"] == 1
    assert len(seeded.requests("gettoken")) == 1


def test_token_is_shared_by_threads(client: WeComClient) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                client.get_follow_user_list()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.calls["gettoken"] == 1
    assert client.calls[FOLLOW_USERS] == 40


def test_expired_token_is_refetched_once_mid_run(client: WeComClient, seeded, waits) -> None:
    client.get_follow_user_list()
    seeded.expire_tokens()

    assert len(client.get_follow_user_list()) == 3

    assert client.calls["gettoken"] == 2
    assert client.calls[FOLLOW_USERS] == 3  # 1 before, 1 refused with 42001, 1 resent
    assert _sandbox_errors(seeded, FOLLOW_USERS) == {"42001": 1}
    assert waits == []  # a token refresh is not a backoff attempt


@pytest.mark.parametrize("errcode", [40014, 41001])
def test_other_token_codes_refetch_once(client: WeComClient, seeded, errcode) -> None:
    client.get_follow_user_list()
    seeded.fault(api=FOLLOW_USERS, errcode=errcode, times=1)
    client.get_follow_user_list()
    assert client.calls["gettoken"] == 2


def test_a_token_refused_twice_is_an_error_not_a_loop(client: WeComClient, seeded) -> None:
    seeded.fault(api=FOLLOW_USERS, errcode=40014, times=5)
    with pytest.raises(WeComError) as caught:
        client.get_follow_user_list()
    assert caught.value.errcode == 40014
    assert client.calls[FOLLOW_USERS] == 2


# -- retries ------------------------------------------------------------------------------------

RETRIED_FAULTS = {
    "busy": {"errcode": -1},
    "rate-limited": {"errcode": 45009},
    "too-concurrent": {"errcode": 45033},
    "http-502": {"http_status": 502},
    "timeout": {"latency_ms": 1500},
    "dropped": {"drop_connection": True},
}


@pytest.mark.parametrize("fault", RETRIED_FAULTS.values(), ids=RETRIED_FAULTS.keys())
def test_retried_faults_succeed_after_n_failures(seeded, make_client, waits, fault) -> None:
    client = make_client(timeout=0.5, max_attempts=4)
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, times=2, **fault)

    assert len(client.get_follow_user_list()) == 3

    assert client.calls[FOLLOW_USERS] == 3
    assert len(waits) == 2
    assert all(w > 0 for w in waits)


@pytest.mark.parametrize("fault", RETRIED_FAULTS.values(), ids=RETRIED_FAULTS.keys())
def test_persistent_faults_raise_unavailable(seeded, make_client, waits, fault) -> None:
    client = make_client(timeout=0.5, max_attempts=3)
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, times=100, **fault)

    with pytest.raises(WeComUnavailable) as caught:
        client.get_follow_user_list()

    assert caught.value.attempts == 3
    assert caught.value.api == FOLLOW_USERS
    assert client.calls[FOLLOW_USERS] == 3
    assert len(waits) == 2
    if "errcode" in fault:
        assert caught.value.errcode == fault["errcode"]
        assert not isinstance(caught.value, WeComOutcomeUnknown)  # a refusal did nothing
    else:
        assert caught.value.errcode is None
        assert isinstance(caught.value, WeComOutcomeUnknown)  # the request may have landed


def test_backoff_grows_and_is_capped(seeded, make_client, waits, monkeypatch) -> None:
    client = make_client(max_attempts=6, backoff_max_seconds=2.0)
    monkeypatch.setattr(client, "_jitter", lambda seconds: seconds)
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, errcode=-1, times=100)
    with pytest.raises(WeComUnavailable):
        client.get_follow_user_list()
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_rate_limited_backs_off_briefly_not_to_the_next_minute(seeded, make_client, waits) -> None:
    client = make_client()
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, errcode=45009, times=1)
    client.get_follow_user_list()
    assert len(waits) == 1
    assert 0.5 <= waits[0] <= 1.0  # a short backoff first; repeats wait longer (test_pacing)


def test_retries_are_logged_as_warnings(seeded, make_client, caplog) -> None:
    client = make_client()
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, errcode=45033, times=2)
    with caplog.at_level(logging.DEBUG, logger="siyu.wecom"):
        client.get_follow_user_list()
    warnings = [
        r for r in caplog.records if r.name == "siyu.wecom" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 2
    assert "45033" in warnings[0].getMessage()
    assert "1/4" in warnings[0].getMessage() and "2/4" in warnings[1].getMessage()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(FOLLOW_USERS in m and "errcode=0" in m and "ms" in m for m in debug)


def test_mark_tag_is_resent_after_a_dropped_reply(client: WeComClient, seeded) -> None:
    userid, external_userid = _pair(client)
    group = client.add_corp_tag(group_name="siyu测试", tags=[NewTag(name="甲")])
    tag_id = group.tag[0].id
    seeded.fault(api=MARK_TAG, drop_connection=True, after_effect=True, times=1)

    client.mark_tag(userid, external_userid, add_tag=[tag_id])

    assert client.calls[MARK_TAG] == 2  # resent: adding a present tag is a no-op on WeCom
    assert tag_id in seeded.contact_tags(userid, external_userid)


def test_a_mass_message_is_not_resent_after_a_dropped_reply(client: WeComClient, seeded) -> None:
    userid, external_userid = _pair(client)
    seeded.fault(
        api="externalcontact/add_msg_template", drop_connection=True, after_effect=True, times=1
    )

    with pytest.raises(WeComOutcomeUnknown) as caught:
        client.add_msg_template(sender=userid, external_userid=[external_userid], text="您好")

    assert caught.value.attempts == 1
    assert client.calls["externalcontact/add_msg_template"] == 1
    assert len(seeded.requests("externalcontact/add_msg_template")) == 1
    assert caught.value.sent_at is not None  # when it left: reconcile after its in-flight window


def test_busy_codes_are_retried_even_for_writes_never_resent(client: WeComClient, seeded) -> None:
    userid, external_userid = _pair(client)
    seeded.fault(api="externalcontact/add_msg_template", errcode=-1, times=1)
    client.add_msg_template(sender=userid, external_userid=[external_userid], text="您好")
    assert client.calls["externalcontact/add_msg_template"] == 2  # -1 refused it: nothing sent


def test_refused_connection_is_unavailable_not_unknown(make_client) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/cgi-bin/", max_attempts=2)
    with pytest.raises(WeComUnavailable) as caught:
        client.get_token()
    assert not isinstance(caught.value, WeComOutcomeUnknown)
    assert client.calls["gettoken"] == 2


# -- fail fast ----------------------------------------------------------------------------------


def test_wrong_secret_fails_fast_with_advice(seeded, make_client, waits) -> None:
    client = make_client(secret="not-the-secret-7731")
    with pytest.raises(WeComConfigError) as caught:
        client.get_follow_user_list()
    assert caught.value.errcode == 40001
    assert "WeComApp block's secret" in str(caught.value)
    assert "not-the-secret-7731" not in str(caught.value)
    assert client.calls == {"gettoken": 1}
    assert waits == []


def test_wrong_corp_id_fails_fast(seeded, make_client) -> None:
    client = make_client(corp_id="ww-no-such-corp")
    with pytest.raises(WeComConfigError) as caught:
        client.get_follow_user_list()
    assert caught.value.errcode == 40013
    assert "corp_id" in str(caught.value)
    assert client.calls == {"gettoken": 1}


@pytest.mark.parametrize(("errcode", "advice"), [(60011, "permission"), (60020, "trusted IP")])
def test_privilege_and_ip_errors_fail_fast(client: WeComClient, seeded, waits, errcode, advice):
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, errcode=errcode, times=5)
    with pytest.raises(WeComConfigError, match=advice) as caught:
        client.get_follow_user_list()
    assert caught.value.errcode == errcode
    assert client.calls[FOLLOW_USERS] == 1
    assert waits == []


# -- row errors ---------------------------------------------------------------------------------


def test_mark_tag_row_errors_from_real_state(client: WeComClient, seeded, waits) -> None:
    userid, external_userid = _pair(client)
    group = client.add_corp_tag(group_name="siyu测试", tags=[NewTag(name="丁")])
    tag_id = group.tag[0].id

    with pytest.raises(InvalidTag) as caught:
        client.mark_tag(userid, external_userid, add_tag=["et-no-such-tag"])
    assert caught.value.errcode == 40068

    with pytest.raises(InvalidExternalUser) as caught:
        client.mark_tag(userid, "wm-no-such-contact", add_tag=[tag_id])
    assert caught.value.errcode == 40096

    seeded.delete_follow(userid, external_userid)
    with pytest.raises(ContactUnreachable) as caught:
        client.mark_tag(userid, external_userid, add_tag=[tag_id])
    assert caught.value.errcode == 84061

    assert client.calls[MARK_TAG] == 3  # one attempt each
    assert waits == []


@pytest.mark.parametrize(
    ("errcode", "kind"),
    [(84061, ContactUnreachable), (40096, InvalidExternalUser), (40068, InvalidTag)],
)
def test_row_errors_are_not_retried(client: WeComClient, seeded, waits, errcode, kind) -> None:
    userid, external_userid = _pair(client)
    seeded.fault(api=MARK_TAG, errcode=errcode, times=5)
    with pytest.raises(kind) as caught:
        client.mark_tag(userid, external_userid, add_tag=["et1"])
    assert isinstance(caught.value, WeComRowError)
    assert caught.value.api == MARK_TAG
    assert client.calls[MARK_TAG] == 1
    assert waits == []


def test_other_errcodes_are_plain_errors(client: WeComClient, seeded, waits) -> None:
    client.get_token()
    seeded.fault(api=FOLLOW_USERS, errcode=40058, times=5)
    with pytest.raises(WeComError) as caught:
        client.get_follow_user_list()
    assert type(caught.value) is WeComError
    assert caught.value.errcode == 40058
    assert client.calls[FOLLOW_USERS] == 1
    assert waits == []


def test_errors_survive_pickling() -> None:
    for exc in (
        ContactUnreachable(84061, "no relation", MARK_TAG),
        WeComOutcomeUnknown(None, "dropped", MARK_TAG, "reconcile", attempts=2),
        WeComConfigError(40001, "invalid credential", "gettoken", "check the secret"),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert (back.errcode, back.errmsg, back.api, str(back)) == (
            exc.errcode,
            exc.errmsg,
            exc.api,
            str(exc),
        )
    assert pickle.loads(pickle.dumps(exc)).__dict__ == exc.__dict__


# -- pacing -------------------------------------------------------------------------------------


def test_pacing_keeps_a_hammering_client_under_the_platform_limit(seeded, make_client) -> None:
    seeded.config(rate_limits={FOLLOW_USERS: 60})
    paced = make_client(api_rate_limits={FOLLOW_USERS: 60}, max_attempts=1)
    paced.get_token()
    done = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not done.is_set():
                paced.get_follow_user_list()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    done.wait(2.5)
    done.set()
    for t in threads:
        t.join()

    assert errors == []
    assert _sandbox_errors(seeded, FOLLOW_USERS) == {}
    assert paced.calls[FOLLOW_USERS] > ApiRateLimit(60).burst  # paced, not stopped

    # The same limit without pacing is blown at once: the test above means something.
    unpaced = make_client(rate_limit_per_minute=1_000_000, max_attempts=1)
    with pytest.raises(WeComUnavailable) as caught:
        for _ in range(80):
            unpaced.get_follow_user_list()
    assert caught.value.errcode == 45009


class FakeClock:
    """Time that only moves when the rate limit sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("per_minute", [10, 60, 600, 10_000])
def test_rate_limit_never_exceeds_the_window_and_sustains_90_percent(per_minute) -> None:
    clock = FakeClock()
    limit = ApiRateLimit(per_minute, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for _ in range(per_minute * 3):
        limit.acquire()
        sent.append(clock.now)

    # No 60-second window holds more than the limit (the platform's window is never overrun).
    left = 0
    for right, at in enumerate(sent):
        while sent[left] <= at - 60.0:
            left += 1
        assert right - left + 1 <= per_minute

    # Sustained: the calls after the first burst come at >= 90 % of the configured rate.
    paced = sent[limit.burst :]
    rate_per_minute = (len(paced) - 1) / (paced[-1] - paced[0]) * 60.0
    assert rate_per_minute >= 0.9 * per_minute


def test_rate_limit_allows_a_small_burst_then_paces() -> None:
    clock = FakeClock()
    limit = ApiRateLimit(600, clock=clock, sleep=clock.sleep)
    waits = [limit.acquire() for _ in range(limit.burst + 3)]
    assert limit.burst == 30
    assert waits[: limit.burst] == [0.0] * limit.burst
    assert all(w > 0 for w in waits[limit.burst :])


def test_per_api_limits_are_separate(make_client) -> None:
    client = make_client(rate_limit_per_minute=1000, api_rate_limits={MARK_TAG: 20})
    assert client._rate_limit(MARK_TAG).per_minute == 20
    assert client._rate_limit(FOLLOW_USERS).per_minute == 1000
    assert client._rate_limit(MARK_TAG) is client._rate_limit(MARK_TAG)


def test_clients_of_one_corp_share_their_budget(make_client) -> None:
    first = make_client(api_rate_limits={MARK_TAG: 20})
    second = make_client(api_rate_limits={MARK_TAG: 20})
    other_corp = make_client(corp_id="ww-other-corp", api_rate_limits={MARK_TAG: 20})
    assert first._rate_limit(MARK_TAG) is second._rate_limit(MARK_TAG)
    assert first._rate_limit(MARK_TAG) is not other_corp._rate_limit(MARK_TAG)


# -- secrets ------------------------------------------------------------------------------------


ROBOT_KEY = "robot-key-5521"
WRONG_SECRET = "wrong-secret-9913"


def test_no_secret_token_or_robot_key_in_logs_or_errors(seeded, make_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(timeout=0.5, max_attempts=2)
    token = client.get_token()
    client.get_follow_user_list()
    client.send_webhook(ROBOT_KEY, {"msgtype": "text", "text": {"content": "x"}})

    caught: list[BaseException] = []
    seeded.fault(api=FOLLOW_USERS, drop_connection=True, times=2)
    seeded.fault(api="webhook/send", latency_ms=1500, times=2)
    for call in (
        client.get_follow_user_list,
        lambda: client.send_webhook(ROBOT_KEY, {"msgtype": "text"}),
        lambda: make_client(secret=WRONG_SECRET).get_token(),
    ):
        with pytest.raises(WeComError) as info:
            call()
        caught.append(info.value)

    texts = [str(e) for e in caught] + ["".join(traceback.format_exception(e)) for e in caught]
    # The sandbox runs in this process: its own logs are its business, the client's are ours.
    client_logs = "\n".join(
        r.getMessage()
        for r in caplog.records
        if not r.name.startswith(("uvicorn", "siyu.sandbox", "sandbox"))
    )
    assert "siyu.wecom" in {r.name for r in caplog.records}
    for secret in (seeded.secret, token, ROBOT_KEY, WRONG_SECRET):
        assert secret not in client_logs
        for text in texts:
            assert secret not in text
        assert secret not in repr(client)
