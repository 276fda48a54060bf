"""Choose siyu's environment in one place: saved blocks when there are any, else SIYU_* variables."""

from __future__ import annotations

from dataclasses import dataclass

from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.blocks.tag_rules import TagRules
from siyu.blocks.wecom import WeComApp
from siyu.schemas.settings import Settings

BLOCK_NAME = "siyu"


@dataclass
class Environment:
    """The connections a flow runs with."""

    wecom: WeComApp
    database: SiyuDatabase
    export_source: ExportSource
    tag_rules: TagRules


def from_settings(settings: Settings) -> Environment:
    """Blocks built from SIYU_* variables (headless runs, tests), not saved anywhere."""
    return Environment(
        wecom=WeComApp(
            corp_id=settings.wecom_corp_id,
            secret=settings.wecom_secret,
            agent_id=settings.wecom_agent_id,
            base_url=settings.wecom_base_url,
        ),
        database=SiyuDatabase(url=settings.database_url),
        export_source=ExportSource(
            landing_dir=str(settings.landing_dir),
            reports_dir=str(settings.reports_dir),
            branches=list(settings.branches),
            mobile_salt=settings.mobile_salt().decode(),
        ),
        tag_rules=TagRules(),
    )


def load_environment(name: str = BLOCK_NAME) -> Environment:
    """The blocks saved under `name` in Prefect, or, when none are, the SIYU_* variables."""
    try:
        return Environment(
            wecom=WeComApp.load(name),
            database=SiyuDatabase.load(name),
            export_source=ExportSource.load(name),
            tag_rules=TagRules.load(name),
        )
    except ValueError:  # Prefect says "Unable to find block document named ..."
        return from_settings(Settings.from_env())


def register_blocks(settings: Settings, *, wecom_base_url: str | None = None) -> Environment:
    """Save working default blocks under BLOCK_NAME where none are saved yet; return what is saved."""
    if wecom_base_url:
        settings = settings.model_copy(update={"wecom_base_url": wecom_base_url})
    env = from_settings(settings)
    for block in (env.wecom, env.database, env.export_source, env.tag_rules):
        try:
            type(block).load(BLOCK_NAME)  # saved before, perhaps edited by ops since: keep it
        except ValueError:
            block.save(BLOCK_NAME)
    return load_environment(BLOCK_NAME)
