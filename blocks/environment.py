"""Choose siyu's environment in one place: saved blocks in production, SIYU_* only where embedded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound

from siyu.blocks.conversion_paths import ConversionPaths
from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.blocks.group_cadence import (
    ActivityLibrary,
    CadenceTemplate,
    EntriesSource,
    PayoutAccount,
    ProductCalendar,
)
from siyu.blocks.send_rules import SendRules
from siyu.blocks.tag_rules import TagRules
from siyu.blocks.wecom import WeComApp
from siyu.schemas.settings import (
    EMBEDDED,
    EnvironmentKind,
    MissingSalt,
    Settings,
    environment_kind,
)

BLOCK_NAME = "siyu"

# Each connection a flow may use, by attribute, and the block type it comes from.
BLOCK_TYPES: dict[str, type[Block]] = {
    "wecom": WeComApp,
    "database": SiyuDatabase,
    "export_source": ExportSource,
    "tag_rules": TagRules,
}

# The playbooks ops edit; each has working defaults, so a server gets them saved to edit.
PLAYBOOK_TYPES: tuple[type[Block], ...] = (
    ConversionPaths,
    SendRules,
    CadenceTemplate,
    ProductCalendar,
    ActivityLibrary,
)
# Money and customer files: saved only from values someone gave, never from demo defaults.
GIVEN_ONLY_TYPES: tuple[type[Block], ...] = (EntriesSource, PayoutAccount)
# Every block type siyu defines: registered on a server so its Blocks page can make each.
SIYU_BLOCK_TYPES: tuple[type[Block], ...] = (
    *BLOCK_TYPES.values(),
    *PLAYBOOK_TYPES,
    *GIVEN_ONLY_TYPES,
)


class MissingBlock(LookupError):
    """A block the run needs is not saved (production never falls back to demo defaults)."""

    def __init__(self, block_type: type[Block], name: str) -> None:
        self.block_type = block_type
        self.name = name
        super().__init__(
            f"the {_type_name(block_type)} block {name!r} is not saved: run `siyu up` (embedded) "
            "or `siyu deploy` (production), or save it in the Blocks page of the Prefect UI "
            f"(block type {block_type.get_block_type_slug()!r}, name {name!r})"
        )


def _type_name(block_type: type[Block]) -> str:
    return getattr(block_type, "_block_type_name", None) or block_type.__name__


class Environment:
    """The connections a flow runs with, each loaded on first use.

    Built with blocks (`Environment(wecom=..., database=..., ...)`, as tests do) or by
    `load_environment()`, which loads a block only when its attribute is first read: a flow
    that never reads `tag_rules` never loads (or fails on) the tag rules block.
    """

    def __init__(
        self,
        wecom: WeComApp | None = None,
        database: SiyuDatabase | None = None,
        export_source: ExportSource | None = None,
        tag_rules: TagRules | None = None,
        *,
        loader: Callable[[str], Block] | None = None,
    ) -> None:
        given = {
            "wecom": wecom,
            "database": database,
            "export_source": export_source,
            "tag_rules": tag_rules,
        }
        self._blocks: dict[str, Block] = {k: v for k, v in given.items() if v is not None}
        self._loader = loader

    def _block(self, attribute: str) -> Any:
        if attribute not in self._blocks:
            if self._loader is None:
                raise AttributeError(f"this Environment was built without {attribute!r}")
            self._blocks[attribute] = self._loader(attribute)
        return self._blocks[attribute]

    @property
    def wecom(self) -> WeComApp:
        """The WeCom app (corp id, secret, limits)."""
        return self._block("wecom")

    @property
    def database(self) -> SiyuDatabase:
        """siyu's own database."""
        return self._block("database")

    @property
    def export_source(self) -> ExportSource:
        """Where exports land, their layout, the gate's thresholds and the mobile salt."""
        return self._block("export_source")

    @property
    def tag_rules(self) -> TagRules:
        """The tag rules ops edit."""
        return self._block("tag_rules")

    def loaded(self) -> set[str]:
        """The attributes whose blocks are loaded (or were given) so far."""
        return set(self._blocks)


def from_settings(settings: Settings) -> Environment:
    """Blocks built from SIYU_* variables (embedded runs, tests, benchmarks), not saved anywhere."""
    return Environment(
        **{attribute: _block_from_settings(attribute, settings) for attribute in BLOCK_TYPES}
    )


def _block_from_settings(attribute: str, settings: Settings) -> Block:
    """One block from the SIYU_* settings."""
    if attribute == "wecom":
        return WeComApp(
            corp_id=settings.wecom_corp_id,
            secret=settings.wecom_secret,
            agent_id=settings.wecom_agent_id,
            base_url=settings.wecom_base_url,
        )
    if attribute == "database":
        return SiyuDatabase(url=settings.database_url)
    if attribute == "export_source":
        return ExportSource(
            landing_dir=str(settings.landing_dir),
            reports_dir=str(settings.reports_dir),
            branches=list(settings.branches),
            mobile_salt=settings.mobile_salt().decode(),
        )
    if attribute == "tag_rules":
        return TagRules()
    raise KeyError(attribute)


def load_saved(block_type: type[Block], name: str) -> Block | None:
    """The block saved under `name`, or None when there is none (a broken one still raises)."""
    try:
        return block_type.load(name)
    except ValueError as exc:
        # Prefect says "Unable to find block document named ..." for a missing block only.
        if isinstance(exc.__cause__, ObjectNotFound):
            return None
        raise


def _checked(attribute: str, block: Block, name: str) -> Block:
    """A loaded block, refused when it cannot work the same on every worker."""
    if attribute == "export_source" and not block.mobile_salt.get_secret_value():  # type: ignore[attr-defined]
        raise MissingSalt(
            f"the siyu Export Source block {name!r} has no mobile_salt: set one secret salt in "
            "the Blocks page (the same for every worker; changing it later unbinds every contact)"
        )
    return block


def load_environment(name: str = BLOCK_NAME, kind: EnvironmentKind | None = None) -> Environment:
    """The blocks saved under `name`, each loaded on first use.

    Production (the default): a missing block raises MissingBlock naming it. Embedded
    (SIYU_ENVIRONMENT=embedded, set by `siyu up` and the tests): a missing block comes from
    the SIYU_* variables and their sandbox defaults.
    """
    kind = kind or environment_kind()
    settings: list[Settings] = []  # read once, only if a block is missing

    def load(attribute: str) -> Block:
        block_type = BLOCK_TYPES[attribute]
        block = load_saved(block_type, name)
        if block is not None:
            return _checked(attribute, block, name)
        if kind != EMBEDDED:
            raise MissingBlock(block_type, name)
        if not settings:
            settings.append(Settings.from_env())
        return _block_from_settings(attribute, settings[0])

    return Environment(loader=load)


def register_blocks(settings: Settings, *, wecom_base_url: str | None = None) -> Environment:
    """Save working default blocks under BLOCK_NAME where none are saved yet; return what is saved."""
    if wecom_base_url:
        settings = settings.model_copy(update={"wecom_base_url": wecom_base_url})
    for attribute, block_type in BLOCK_TYPES.items():
        # Saved before, perhaps edited by ops since: keep it.
        if load_saved(block_type, BLOCK_NAME) is None:
            _block_from_settings(attribute, settings).save(BLOCK_NAME)
    return load_environment(BLOCK_NAME, kind=EMBEDDED)
