"""The daily tag sync: gate the core-banking export, compute tags, push the difference to WeCom."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field


class TagSyncParameters(BaseModel):
    """What ops can set when they run the tag sync by hand."""

    export_file: str | None = Field(
        default=None,
        description="Export file to sync; default: the newest file in the landing directory",
    )
    dry_run: bool = Field(
        default=False, description="Compute and report the difference, send nothing to WeCom"
    )
    business_date: str | None = Field(
        default=None,
        pattern=r"^\d{8}$",
        description="Expected export date YYYYMMDD; default: today in Asia/Shanghai",
    )
    row_failure_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of quarantined rows above which the whole sync blocks (default 0.01)",
    )


@flow(name="tag-sync")
def tag_sync(params: TagSyncParameters | None = None) -> dict:
    """Sync tags from the core-banking export to WeCom contacts (stub until issue 3 lands).

    Args:
        params: which export, dry run, business date and quarantine threshold.
    """
    params = params or TagSyncParameters()
    return {"status": "stub", "params": params.model_dump()}
