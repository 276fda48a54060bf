"""The ExportSource block: where core-banking exports land, how they are written, what passes."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from siyu.schemas.export import DEFAULT_BRANCHES, CollapseLimits, Completeness, ExportLayout


class ExportSource(Block):
    """The bank's daily core-banking export and the quality bar it must clear.

    Load with `ExportSource.load("siyu")`.
    """

    _block_type_name = "siyu Export Source"
    _block_type_slug = "siyu-export-source"
    _description = "Where the core-banking export lands, its layout, and the gate's thresholds."

    landing_dir: str = Field(description="Directory the daily exports land in")
    reports_dir: str = Field(description="Directory where Data Docs of every gate run are kept")
    layout: ExportLayout = Field(
        default_factory=ExportLayout, description="File format, encoding, delimiter and headers"
    )
    branches: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BRANCHES), description="The bank's branch codes"
    )
    volume_tolerance: float = Field(
        default=0.20,
        ge=0,
        le=1,
        description="Allowed row-count change against the last accepted export",
    )
    row_failure_threshold: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Quarantined share of rows above which the sync blocks",
    )
    row_error_threshold: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Share of WeCom calls failing per contact above which the sync ends Failed",
    )
    timezone: str = Field(default="Asia/Shanghai", description="Time zone of the business date")
    completeness: Completeness = Field(
        default="stable_size",
        description="How a landed export is known to be complete before it is read: "
        "'marker' (a <file>.done or .ok beside it), 'control_total' (such a marker holding "
        "the row count) or 'stable_size' (its size holds still over stable_seconds)",
    )
    stable_seconds: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="With 'stable_size': seconds the file must go unchanged before it is read",
    )
    collapse: CollapseLimits = Field(
        default_factory=CollapseLimits,
        description="When values that collapsed against the last accepted export block the sync",
    )
    data_docs_keep_days: int = Field(
        default=30, ge=0, description="Days the Data Docs of a passed gate run are kept"
    )
    data_docs_keep_blocked: bool = Field(
        default=True, description="Keep the Data Docs of every blocked run, whatever their age"
    )
    reports_base_url: str | None = Field(
        default=None,
        description="URL under which reports_dir is served (e.g. https://ops.bank/siyu-reports); "
        "set it and the gate report links its Data Docs",
    )
    mobile_salt: SecretStr = Field(
        description="Secret salt for hashing mobiles; changing it unbinds every contact"
    )
    binding_drop_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fall of the share of contacts bound to export rows, against the last synced "
        "export, above which the sync fails and changes nothing (0.5: half of it gone)",
    )

    @field_validator("landing_dir", "reports_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # A worker runs each flow in a fresh temporary directory: a relative directory would be
        # a different (empty) place on every run and every machine.
        if not Path(value).is_absolute():
            raise ValueError(
                f"{value!r} is a relative directory: give the absolute path of the directory "
                "every worker reads (a shared mount in production)"
            )
        return value

    def landing_path(self) -> Path:
        """The landing directory as a path."""
        return Path(self.landing_dir)

    def reports_path(self) -> Path:
        """The reports directory as a path."""
        return Path(self.reports_dir)

    def salt(self) -> bytes:
        """The only place the salt is unwrapped."""
        return self.mobile_salt.get_secret_value().encode()
