"""The WeComApp block: its fields, the one place the secret is unwrapped, save and load."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from siyu.blocks.wecom import DEFAULT_BASE_URL, WeComApp, WeComClient
from siyu.schemas.settings import SANDBOX_AGENT_ID


def test_defaults_point_at_wecom() -> None:
    app = WeComApp(corp_id="ww1", secret="s")
    assert app.base_url == DEFAULT_BASE_URL
    assert app.rate_limit_per_minute == 10_000
    assert app.api_rate_limits == {}
    assert app.timeout_seconds == 10
    assert app.agent_id is None
    assert isinstance(app.secret, SecretStr)


def test_secret_stays_wrapped_outside_get_client() -> None:
    app = WeComApp(corp_id="ww1", secret="block-secret-4410")
    for text in (repr(app), str(app), app.model_dump_json(), str(app.model_dump())):
        assert "block-secret-4410" not in text


def test_get_client_carries_the_settings() -> None:
    app = WeComApp(
        corp_id="ww1",
        secret="s",
        agent_id=1000009,
        base_url="http://127.0.0.1:1/cgi-bin",
        rate_limit_per_minute=500,
        api_rate_limits={"externalcontact/mark_tag": 40},
        timeout_seconds=3.5,
    )
    with app.get_client() as client:
        assert isinstance(client, WeComClient)
        assert client.base_url == "http://127.0.0.1:1/cgi-bin/"
        assert client.corp_id == "ww1"
        assert client.agent_id == 1000009
        assert client.timeout == 3.5
        assert client._rate_limit("externalcontact/mark_tag").per_minute == 40
        assert client._rate_limit("externalcontact/list").per_minute == 500


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        WeComApp(corp_id="ww1", secret="s", rate_limit_per_minute=0)
    with pytest.raises(ValueError):
        WeComApp(corp_id="ww1", secret="s", timeout_seconds=0)


def test_saved_block_loads_and_talks_to_wecom(prefect_server, sandbox, seed_dir) -> None:
    sandbox.seed(seed_dir)
    name = f"sandbox-{uuid.uuid4().hex[:8]}"
    WeComApp(
        corp_id=sandbox.corp_id,
        secret=sandbox.secret,
        agent_id=SANDBOX_AGENT_ID,
        base_url=sandbox.api_base,
        api_rate_limits={"webhook/send": 20},
    ).save(name)

    loaded = WeComApp.load(name)

    assert loaded.secret.get_secret_value() == sandbox.secret
    assert loaded.api_rate_limits == {"webhook/send": 20}
    with loaded.get_client() as client:
        assert len(client.get_follow_user_list()) == 3
