"""The environment is chosen in one place: production names a missing block, embedded falls back."""

from __future__ import annotations

import contextlib
import secrets

import pytest
from pydantic import SecretStr

import siyu.flows.contacts_sync as contacts_sync_module
from siyu.blocks.database import SiyuDatabase
from siyu.blocks.environment import (
    BLOCK_TYPES,
    Environment,
    MissingBlock,
    MissingSalt,
    load_environment,
    register_blocks,
)
from siyu.blocks.export_source import ExportSource
from siyu.blocks.tag_rules import TagRules
from siyu.blocks.wecom import WeComApp
from siyu.schemas.settings import Settings
from tests.flows.conftest import system  # noqa: F401 - the flow fixture, for the last test


def unsaved_name() -> str:
    """A block name nothing on the test server is saved under."""
    return f"nowhere-{secrets.token_hex(4)}"


def test_a_missing_block_in_production_fails_with_its_type_and_name(prefect_server) -> None:
    name = unsaved_name()
    env = load_environment(name, kind="production")

    with pytest.raises(MissingBlock) as raised:
        _ = env.export_source

    message = str(raised.value)
    assert f"the siyu Export Source block '{name}' is not saved" in message
    assert "siyu up" in message and "Blocks page" in message
    assert raised.value.block_type is ExportSource


def test_production_is_the_default(prefect_server, monkeypatch) -> None:
    monkeypatch.delenv("SIYU_ENVIRONMENT")

    with pytest.raises(MissingBlock, match="WeCom App block"):
        _ = load_environment(unsaved_name()).wecom


def test_an_unknown_environment_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("SIYU_ENVIRONMENT", "staging")

    with pytest.raises(ValueError, match="staging"):
        load_environment(unsaved_name())


def test_embedded_takes_a_missing_block_from_the_siyu_variables(
    prefect_server, siyu_home, monkeypatch
) -> None:
    monkeypatch.setenv("SIYU_DATABASE_URL", "sqlite:///somewhere/siyu.db")
    monkeypatch.setenv("SIYU_MOBILE_SALT", "embedded-salt")

    env = load_environment(unsaved_name(), kind="embedded")

    assert env.database.url.get_secret_value() == "sqlite:///somewhere/siyu.db"
    assert env.export_source.salt() == b"embedded-salt"
    assert env.export_source.landing_path() == siyu_home.resolve() / "landing"


def test_a_saved_block_is_used_and_the_others_fall_back_one_by_one(
    prefect_server, siyu_home, monkeypatch
) -> None:
    name = unsaved_name()
    monkeypatch.setenv("SIYU_DATABASE_URL", "sqlite:///from-variables.db")
    SiyuDatabase(url="sqlite:///from-the-block.db").save(name)
    try:
        embedded = load_environment(name, kind="embedded")
        assert embedded.database.url.get_secret_value() == "sqlite:///from-the-block.db"
        assert embedded.tag_rules.rule_set is not None  # not saved: the default rules

        production = load_environment(name, kind="production")
        assert production.database.url.get_secret_value() == "sqlite:///from-the-block.db"
        with pytest.raises(MissingBlock, match="siyu Tag Rules"):
            _ = production.tag_rules
    finally:
        SiyuDatabase.delete(name)


def test_production_never_makes_up_a_salt(siyu_home, monkeypatch) -> None:
    monkeypatch.setenv("SIYU_ENVIRONMENT", "production")
    monkeypatch.delenv("SIYU_MOBILE_SALT", raising=False)

    with pytest.raises(MissingSalt, match="mobile_salt"):
        Settings.from_env().mobile_salt()
    assert not (siyu_home / "secrets").exists()


def test_a_saved_export_source_without_a_salt_is_refused_in_production(prefect_server) -> None:
    name = unsaved_name()
    ExportSource(landing_dir="/l", reports_dir="/r", mobile_salt=SecretStr("")).save(name)
    try:
        with pytest.raises(MissingSalt, match="same for every worker"):
            _ = load_environment(name, kind="production").export_source
    finally:
        ExportSource.delete(name)


def test_embedded_salt_is_one_per_home_and_kept_private(siyu_home, monkeypatch) -> None:
    monkeypatch.delenv("SIYU_MOBILE_SALT", raising=False)

    first = Settings.from_env().mobile_salt()
    again = Settings.from_env().mobile_salt()

    assert first == again and len(first) == 64
    assert (siyu_home / "secrets" / "mobile_salt").stat().st_mode & 0o777 == 0o600
    assert (siyu_home / "secrets").stat().st_mode & 0o777 == 0o700


def test_explicit_blocks_need_no_server_and_nothing_else_is_invented() -> None:
    database = SiyuDatabase(url="sqlite://")
    env = Environment(database=database)

    assert env.database is database
    with pytest.raises(AttributeError, match="tag_rules"):
        _ = env.tag_rules


def test_blocks_load_lazily_one_at_a_time() -> None:
    asked: list[str] = []

    def loader(attribute: str):
        asked.append(attribute)
        return TagRules() if attribute == "tag_rules" else SiyuDatabase(url="sqlite://")

    env = Environment(loader=loader)
    assert asked == []

    _ = env.database
    _ = env.database

    assert asked == ["database"]
    assert env.loaded() == {"database"}


def test_register_blocks_saves_what_is_missing_and_keeps_what_is_saved(
    prefect_server, siyu_home, monkeypatch
) -> None:
    from siyu.blocks.environment import BLOCK_NAME

    saved_before = {}
    for block_type in BLOCK_TYPES.values():
        with contextlib.suppress(ValueError):
            saved_before[block_type] = block_type.load(BLOCK_NAME)
    monkeypatch.setenv("SIYU_MOBILE_SALT", "register-salt")
    monkeypatch.setenv("SIYU_DATABASE_URL", "sqlite:///registered.db")
    SiyuDatabase(url="sqlite:///edited-by-ops.db").save(BLOCK_NAME, overwrite=True)
    try:
        env = register_blocks(Settings.from_env(), wecom_base_url="http://127.0.0.1:1/cgi-bin/")

        assert env.database.url.get_secret_value() == "sqlite:///edited-by-ops.db"
        assert env.wecom.base_url == "http://127.0.0.1:1/cgi-bin/"
        assert env.export_source.salt() == b"register-salt"
    finally:
        # Other tests rely on no "siyu" blocks on the session server (embedded fallback).
        for block_type in BLOCK_TYPES.values():
            if block_type in saved_before:
                saved_before[block_type].save(BLOCK_NAME, overwrite=True)
            else:
                with contextlib.suppress(Exception):
                    block_type.delete(BLOCK_NAME)


def test_contacts_sync_never_loads_the_tag_rules(system, monkeypatch) -> None:  # noqa: F811
    asked: list[str] = []
    real = load_environment(kind="embedded")

    def loader(attribute: str):
        asked.append(attribute)
        if attribute == "tag_rules":
            raise MissingBlock(TagRules, "siyu")
        return getattr(real, attribute)

    monkeypatch.setattr(
        contacts_sync_module, "load_environment", lambda: Environment(loader=loader)
    )

    state = contacts_sync_module.contacts_sync(return_state=True)

    assert state.is_completed(), state.message
    assert "tag_rules" not in asked
    assert "wecom" in asked


def test_every_siyu_block_type_is_listed_for_the_setup() -> None:
    import importlib
    import pkgutil

    from prefect.blocks.core import Block

    import siyu.blocks
    from siyu.blocks.environment import SIYU_BLOCK_TYPES

    defined = set()
    for module in pkgutil.walk_packages(siyu.blocks.__path__, "siyu.blocks."):
        for value in vars(importlib.import_module(module.name)).values():
            if (
                isinstance(value, type)
                and issubclass(value, Block)
                and value.__module__ == module.name
                and value.get_block_type_slug().startswith("siyu-")
            ):
                defined.add(value)

    assert defined == set(SIYU_BLOCK_TYPES)


def test_a_production_run_in_a_fresh_directory_leaves_nothing_there(
    prefect_server, tmp_path, monkeypatch
) -> None:
    """A worker runs each flow in a new temporary directory: no state may land in it."""
    name = unsaved_name()
    shared = tmp_path / "shared"
    saved = {
        "wecom": WeComApp(corp_id="ww1", secret=SecretStr("s"), agent_id=1),
        "database": SiyuDatabase(url=f"sqlite:///{shared / 'siyu.db'}"),
        "export_source": ExportSource(
            landing_dir=str(shared / "landing"),
            reports_dir=str(shared / "reports"),
            mobile_salt=SecretStr("one-salt"),
        ),
        "tag_rules": TagRules(),
    }
    for block in saved.values():
        block.save(name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    monkeypatch.delenv("SIYU_ENVIRONMENT")
    monkeypatch.delenv("SIYU_HOME")
    try:
        env = load_environment(name)
        for attribute in BLOCK_TYPES:
            getattr(env, attribute)
        assert env.export_source.salt() == b"one-salt"
        assert env.export_source.landing_path() == shared / "landing"
    finally:
        for attribute, block in saved.items():
            BLOCK_TYPES[attribute].delete(name)
    assert list(run_dir.iterdir()) == []
