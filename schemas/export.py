"""The core-banking export's contract: its columns, how values are written, and its layouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

ColumnKind = Literal["string", "pii", "mobile", "branch", "class", "decimal", "flag", "date"]


@dataclass(frozen=True)
class ExportColumn:
    """One column of the export: the bank's header, our field name, and how to read it."""

    header: str
    field: str
    kind: ColumnKind
    personal: bool = False
    # Required columns must carry values: one empty on every row blocks the export.
    required: bool = True


EXPORT_COLUMNS: tuple[ExportColumn, ...] = (
    ExportColumn("客户号", "customer_id", "string"),
    ExportColumn("姓名", "name", "pii", personal=True, required=False),
    ExportColumn("手机号", "mobile", "mobile", personal=True),
    ExportColumn("开户机构", "branch_code", "branch"),
    ExportColumn("客户类型", "customer_class", "class"),
    ExportColumn("当前资产", "aum", "decimal"),
    ExportColumn("历史最高资产", "aum_peak", "decimal"),
    ExportColumn("代发工资", "payroll", "flag"),
    ExportColumn("持有理财", "holds_wealth", "flag"),
    ExportColumn("持有基金", "holds_fund", "flag"),
    ExportColumn("持有保险", "holds_insurance", "flag"),
    ExportColumn("持有贷款", "holds_loan", "flag"),
    ExportColumn("信用卡", "holds_credit_card", "flag"),
    ExportColumn("开户日期", "opened_on", "date"),
    ExportColumn("数据日期", "export_date", "date"),
)
FIELDS: tuple[str, ...] = tuple(c.field for c in EXPORT_COLUMNS)
FLAG_FIELDS: tuple[str, ...] = tuple(c.field for c in EXPORT_COLUMNS if c.kind == "flag")
PERSONAL_FIELDS: tuple[str, ...] = tuple(c.field for c in EXPORT_COLUMNS if c.personal)

# Customer classes as the bank writes them, and our codes for them.
CUSTOMER_CLASSES: dict[str, str] = {"直营": "direct", "代工": "agency"}

# Flags arrive as 是/否, Y/N or 1/0 (and the odd true/false): anything else is a type error.
FLAG_TRUE: frozenset[str] = frozenset({"是", "Y", "y", "1", "true", "True", "TRUE"})
FLAG_FALSE: frozenset[str] = frozenset({"否", "N", "n", "0", "false", "False", "FALSE"})

# Dates arrive as YYYYMMDD or YYYY-MM-DD.
DATE_FORMATS: tuple[str, ...] = ("%Y%m%d", "%Y-%m-%d")

MOBILE_PATTERN = r"^1[3-9][0-9]{9}$"

# The sample bank's branches; a real deployment lists its own (SIYU_BRANCHES or the block).
DEFAULT_BRANCHES: tuple[str, ...] = tuple(f"BR{i:03d}" for i in range(1, 13))


class ExportLayout(BaseModel):
    """How a bank writes its export file: format, encoding, delimiter and header names."""

    format: Literal["csv", "parquet"] = Field(
        default="csv", description="csv (delimited text) or parquet"
    )
    encoding: str = Field(
        default="gbk",
        description="Text encoding of a CSV export (gbk by default; utf-8 and utf-8-sig also load)",
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="CSV delimiter")
    headers: dict[str, str] = Field(
        default_factory=lambda: {c.field: c.header for c in EXPORT_COLUMNS},
        description="Field name -> header in the file. Parquet files use the field names.",
    )

    def header_to_field(self) -> dict[str, str]:
        """Map the file's headers (or field names, for Parquet) to our field names."""
        if self.format == "parquet":
            return {f: f for f in FIELDS}
        return {h: f for f, h in self.headers.items()}


# How siyu decides an export has been completely written before reading it:
#   marker         a done-marker beside it (<file>.done / .ok, or <stem>.done / .ok)
#   control_total  such a marker whose content is the file's row count, checked after reading
#   stable_size    no marker: the size and mtime must hold still over a short wait
Completeness = Literal["marker", "control_total", "stable_size"]
MARKER_SUFFIXES: tuple[str, ...] = (".done", ".ok")


class CollapseLimits(BaseModel):
    """When an export's values collapsed against the last accepted one: the gate then blocks."""

    max_empty_share_rise: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Block when a column's share of empty values rises by more than this "
        "(0.5: from 2 % empty to over 52 %)",
    )
    max_zero_share_rise: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Block when an amount column's share of zeros rises by more than this",
    )
    flag_mixed_share: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description="A flag counts as mixed when both answers were on at least this share of rows",
    )
    flag_collapse_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Block when an answer of a mixed flag falls below this fraction of its "
        "previous share (0.1: 30 % 是 -> under 3 %)",
    )
    aum_plausible_max: float = Field(
        default=1e10,
        gt=0,
        description="Largest plausible AUM or peak AUM of one customer, in yuan; any above blocks",
    )
    aum_median_factor: float = Field(
        default=10.0,
        gt=1,
        description="Block when the median AUM moves by more than this factor either way "
        "(a unit change: fen for yuan is 100)",
    )
