"""Ops' manual actions against the sandbox and a real database: each does its one thing, once."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prefect.artifacts import Artifact
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import ConversionPaths
from siyu.blocks.group_cadence import CadenceTemplate
from siyu.blocks.wecom import WeComClient
from siyu.flows import ops_actions
from siyu.schemas.cadence import FAILED as WIN_FAILED
from siyu.schemas.cadence import PAID, RewardWin
from siyu.schemas.database import make_engine
from siyu.schemas.ledger import Send
from siyu.tasks.ops_alerts import OPS_ACTION_FLOWS
from tests.fixtures.sandbox import SEED_CHAT_IDS, SEED_CONTACT_IDS
from tests.flows.test_conversion_path import scheduled, synced  # noqa: F401 - fixtures
from tests.flows.test_group_cadence import seed_and_point_siyu_at
from tests.tasks.test_delivery import MGR001, TUESDAY_10, send, wanted

ZONE = dt.timezone(dt.timedelta(hours=8))


def _restored(block_type) -> Iterator[None]:
    """Whatever block "siyu" of `block_type` the session had is back after the test."""
    from prefect.client.orchestration import get_client

    try:
        before = block_type.load("siyu")
    except ValueError:
        before = None
    yield
    if before is not None:
        before.save("siyu", overwrite=True)
        return
    with contextlib.suppress(ValueError):
        saved = block_type.load("siyu")
        with get_client(sync_client=True) as client:
            client.delete_block_document(saved._block_document_id)


@pytest.fixture
def paths_restored(prefect_server) -> Iterator[None]:
    yield from _restored(ConversionPaths)


@pytest.fixture
def template_restored(prefect_server) -> Iterator[None]:
    yield from _restored(CadenceTemplate)


@pytest.fixture
def small(prefect_server, sandbox, seed_dir, database_url, monkeypatch, siyu_home):
    """The small seed in the sandbox, a migrated database, siyu's settings pointing at both."""
    seed_and_point_siyu_at(sandbox, seed_dir, database_url, monkeypatch)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _artifact(key: str) -> str:
    return Artifact.get(key).data


def test_every_action_is_a_flow_with_a_form_description() -> None:
    flows = ops_actions.action_flows()
    assert set(flows) == set(OPS_ACTION_FLOWS)
    for flow in flows.values():
        assert flow.description and len(flow.description) > 40
        assert "Args:" in flow.fn.__doc__  # the form's fields are described
    from prefect.utilities.callables import parameter_schema

    touch = parameter_schema(flows["touch-rerun"]).model_dump()["properties"]["touch"]
    assert (touch["minimum"], touch["maximum"]) == (1, 4)  # the Run form refuses a touch 5
    bill = parameter_schema(flows["payout-resend"]).model_dump()["properties"]["billno"]
    assert bill["maxLength"] == 28 and bill["pattern"] == "^[0-9A-Za-z]+$"


def test_path_pause_and_resume_save_the_block_and_say_so(paths_restored) -> None:
    state = ops_actions.path_pause("payroll-wealth", return_state=True)
    assert state.is_completed(), state.message
    assert ConversionPaths.load("siyu").path("payroll-wealth").paused is True
    assert "send nothing" in _artifact("path-pause")
    again = ops_actions.path_pause("payroll-wealth", return_state=True)
    assert "already" in again.message

    assert ops_actions.path_resume("payroll-wealth", return_state=True).is_completed()
    books = ConversionPaths.load("siyu")
    assert books.path("payroll-wealth").paused is False
    assert not any(p.paused for p in books.paths)

    unknown = ops_actions.path_pause("no-such-path", return_state=True)
    assert unknown.is_failed() and "no conversion path 'no-such-path'" in unknown.message


def test_cadence_pause_makes_the_groups_override_and_resume_keeps_its_other_settings(
    template_restored,
) -> None:
    chat = SEED_CHAT_IDS[0]
    template = CadenceTemplate()
    template.save("siyu", overwrite=True)
    state = ops_actions.cadence_pause(chat, return_state=True)
    assert state.is_completed() and "override was made" in state.message
    assert chat not in state.message  # masked where people read
    assert CadenceTemplate.load("siyu").paused() == {chat}

    saved = CadenceTemplate.load("siyu")
    saved.overrides[0].skip = ["mon-post"]  # ops' own edit of the override
    saved.save("siyu", overwrite=True)
    assert ops_actions.cadence_resume(chat, return_state=True).is_completed()
    (override,) = CadenceTemplate.load("siyu").overrides
    assert (override.paused, override.skip) == (False, ["mon-post"])


def _at(sandbox, when: dt.datetime) -> dt.datetime:
    sandbox.set_clock(when.timestamp(), frozen=True)
    return when


def test_message_cancel_cancels_in_wecom_and_fails_its_sends_once(small, sandbox) -> None:
    engine = small
    sandbox.config(employee_confirm={"mgr001": "never"})
    with WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    ) as client:
        send(engine, client, wanted(MGR001[:2]), as_of=_at(sandbox, TUESDAY_10))
    (message,) = sandbox.mass_messages()
    later = TUESDAY_10 + dt.timedelta(hours=3)
    _at(sandbox, later)

    state = ops_actions.message_cancel(message["msgid"], as_of=later, return_state=True)
    assert state.is_completed(), state.message
    assert "2 sends failed 'cancelled'" in state.message
    assert sandbox.mass_messages()[0]["cancelled"] is True
    with Session(engine) as session:
        rows = session.execute(sa.select(Send.status, Send.reason)).all()
    assert set(rows) == {("failed", "cancelled")}
    assert "cancelled by ops" in _artifact("message-cancel")

    again = ops_actions.message_cancel(message["msgid"], as_of=later, return_state=True)
    assert "0 sends failed" in again.message and "2 already final" in again.message
    missing = ops_actions.message_cancel("no-such-msgid", return_state=True)
    assert missing.is_failed() and "no mass message" in missing.message


def test_message_cancel_leaves_a_confirmed_message_to_the_tracker(small, sandbox) -> None:
    engine = small
    sandbox.config(confirm_delay_seconds=60)
    with WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    ) as client:
        send(engine, client, wanted(MGR001[:2]), as_of=_at(sandbox, TUESDAY_10))
    (message,) = sandbox.mass_messages()
    later = _at(sandbox, TUESDAY_10 + dt.timedelta(hours=1))  # mgr001 confirmed meanwhile
    state = ops_actions.message_cancel(message["msgid"], as_of=later, return_state=True)
    assert state.is_completed() and "already confirmed" in state.message
    with Session(engine) as session:
        assert set(session.scalars(sa.select(Send.status))) == {"created"}


def test_tracking_rerun_runs_the_tracker_at_its_time(small) -> None:
    when = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)
    state = ops_actions.tracking_rerun(as_of=when, return_state=True)
    assert state.is_completed(), state.message
    assert "messages tracked" in state.message
    assert "2026-12-01T10:00" in _artifact("tracking-rerun")


def _failed_win(engine, billno: str, member: str) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            RewardWin(
                activity_key="cadence:default:fri-big:2026-W49",
                round=0,
                member=member,
                chat_id=SEED_CHAT_IDS[0],
                script="friday-qa",
                amount_fen=500,
                billno=billno,
                status=WIN_FAILED,
                reason="SYSTEMERROR",
                week="2026-W49",
                month="2026-12",
                won_at=dt.datetime(2026, 12, 4, 14, tzinfo=ZONE),
                pay_due=dt.date(2026, 12, 4),
            )
        )


def _status(engine, billno: str) -> str:
    with Session(engine) as session:
        return session.scalar(sa.select(RewardWin.status).where(RewardWin.billno == billno))


def test_payout_resend_pays_a_failed_bill_once(small, sandbox) -> None:
    engine = small
    billno = "1900000109202612040000000001"
    _failed_win(engine, billno, SEED_CONTACT_IDS[0])
    state = ops_actions.payout_resend(billno, return_state=True)
    assert state.is_completed(), state.message
    assert _status(engine, billno) == PAID
    assert [p["mch_billno"] for p in sandbox.payouts()] == [billno]
    assert "sent again" in _artifact("payout-resend")

    again = ops_actions.payout_resend(billno, return_state=True)
    assert "paid already" in again.message
    assert len(sandbox.payouts()) == 1
    unknown = ops_actions.payout_resend("X1", return_state=True)
    assert unknown.is_failed() and "no reward with bill number X1" in unknown.message


def test_payout_resend_asks_wechat_pay_first_and_never_pays_twice(small, sandbox) -> None:
    """The payout went through but its reply was lost: the bill is marked failed by mistake."""
    from siyu.blocks.group_cadence import PayoutAccount
    from siyu.blocks.wecom_pay import PayClient

    engine = small
    billno = "1900000109202612040000000002"
    member = SEED_CONTACT_IDS[1]
    _failed_win(engine, billno, member)
    account = PayoutAccount(pay_base_url=sandbox.pay_base, wxappid=sandbox.corp_id)
    with WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret) as client:
        openid = client.convert_to_openid(member)
    PayClient(account).send_redpack(billno=billno, openid=openid, amount_fen=500, act_name="qa")

    state = ops_actions.payout_resend(billno, return_state=True)
    assert state.is_completed(), state.message
    assert _status(engine, billno) == PAID
    assert len(sandbox.payouts()) == 1  # asked, found, recorded: not sent again
    assert "recorded paid" in _artifact("payout-resend")


def test_touch_rerun_sends_nobody_a_touch_twice_even_forced(
    synced,  # noqa: F811 - the conversion path tests' fixtures
    scheduled,  # noqa: F811
) -> None:
    from siyu.flows.conversion_path import path_enroll
    from siyu.schemas.conversion import Cohort
    from tests.flows.conftest import DAY
    from tests.flows.test_conversion_path import MASS_API, at

    engine = synced.engine()
    assert path_enroll(as_of=at(DAY, 9), return_state=True).is_completed()
    with Session(engine) as session:
        cohort = session.scalar(sa.select(sa.func.min(Cohort.id)))
    first = ops_actions.touch_rerun(cohort, 1, as_of=at(DAY, 10), return_state=True)
    assert first.is_completed(), first.message

    def sends() -> list[tuple[str, str]]:
        with Session(engine) as session:
            return list(session.execute(sa.select(Send.target_id, Send.step)).all())

    before, calls = sends(), synced.sandbox.stats()["calls"].get(MASS_API, 0)
    assert before
    again = ops_actions.touch_rerun(cohort, 1, as_of=at(DAY, 10, 30), return_state=True)
    assert "already ran" in again.message
    forced = ops_actions.touch_rerun(cohort, 1, force=True, as_of=at(DAY, 11), return_state=True)
    assert forced.is_completed(), forced.message
    assert sorted(sends()) == sorted(before) and len(set(before)) == len(before)
    assert synced.sandbox.stats()["calls"].get(MASS_API, 0) == calls
    assert "forced: yes" in _artifact(f"touch-rerun-{cohort}-1")
