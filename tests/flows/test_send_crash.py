"""kill -9 between creating a mass message and recording it; the rerun finds it: one message a key."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient, carries_key
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import Send
from siyu.schemas.models import OutboxEntry
from siyu.tasks.delivery import MASS_API, MessageContent, send_batch
from tests.fixtures.sandbox import SEED_CONTACT_IDS

ZONE = ZoneInfo("Asia/Shanghai")
AS_OF = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)
TARGETS = [SEED_CONTACT_IDS[i] for i in (0, 3, 6)]  # mgr001's customers

# The first run, in its own process: it sends, loses the reply, and waits out the in-flight
# window before reconciling; the test kills it during that wait.
CHILD = """
import datetime as dt, sys
from zoneinfo import ZoneInfo
import pandas as pd
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.schemas.database import make_engine
from siyu.tasks.delivery import MessageContent, send_batch

database_url, api_base, corp_id, secret, targets = sys.argv[1:6]
wanted = pd.DataFrame({
    "target_kind": "customer", "target_id": targets.split(","), "sender": "mgr001",
    "channel": "mass_template", "programme": "path:onboard", "step": "touch-1",
    "period": "2026-12", "wanted_at": None,
})
with WeComClient(api_base, corp_id, secret) as client:
    send_batch(
        make_engine(database_url), client, wanted, MessageContent(text="first text"),
        rules=SendRules(), as_of=dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")),
        playbook="onboard", version="v1", in_flight_seconds=600,
    )
"""


def wanted() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target_kind": "customer",
            "target_id": TARGETS,
            "sender": "mgr001",
            "channel": "mass_template",
            "programme": "path:onboard",
            "step": "touch-1",
            "period": "2026-12",
            "wanted_at": None,
        }
    )


@pytest.mark.parametrize("edited", [False, True], ids=["same-text", "edited-text"])
def test_killed_after_the_message_landed_the_rerun_holds_one_message(
    edited, sandbox, seed_dir, database_url
) -> None:
    sandbox.seed(seed_dir)
    sandbox.set_clock(AS_OF.timestamp(), frozen=True)
    upgrade(database_url)
    # WeCom creates the message, then the reply never comes back.
    sandbox.fault(api=MASS_API, drop_connection=True, after_effect=True, times=1)
    args = [database_url, sandbox.api_base, sandbox.corp_id, sandbox.secret, ",".join(TARGETS)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args])  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while not sandbox.mass_messages():
            assert child.poll() is None, "the first run ended before WeCom held its message"
            assert time.monotonic() < deadline, "WeCom never received the mass message"
            time.sleep(0.1)
        time.sleep(0.5)  # the lost reply reaches the client; it records it in flight
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    engine = make_engine(database_url)
    with Session(engine) as session:
        assert set(session.scalars(sa.select(Send.status))) == {"planned"}
        assert session.scalar(sa.select(OutboxEntry.status)) == "sending"

    text = "edited text" if edited else "first text"
    with WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret) as client:
        report = send_batch(
            engine,
            client,
            wanted(),
            MessageContent(text=text),
            rules=SendRules(),
            as_of=AS_OF,
            playbook="onboard",
            version="v2" if edited else "v1",
            in_flight_seconds=1,
        )
    assert report.plan["skipped:already_planned"] == 3
    assert report.reconciled == 1
    assert report.calls.get(MASS_API, 0) == 0  # found on WeCom, never created twice

    messages = sandbox.mass_messages()
    with Session(engine) as session:
        key = session.scalar(sa.select(OutboxEntry.key))
        rows = session.execute(sa.select(Send.status, Send.msgid)).all()
    assert len([m for m in messages if carries_key(m["text"]["content"], key)]) == 1
    assert len(messages) == 1
    assert {tuple(r) for r in rows} == {("created", messages[0]["msgid"])}
    engine.dispose()
