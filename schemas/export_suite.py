"""The core-banking export's quality checks and their GX 1.x expectation suite, one per property."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Literal

from siyu.schemas.export import CUSTOMER_CLASSES, MOBILE_PATTERN

if TYPE_CHECKING:  # great_expectations costs seconds to import: only the gate imports it, late
    from great_expectations import ExpectationSuite

SUITE_NAME = "core_export"
# Each expectation's meta names the gate check it implements.
CHECK_META_KEY = "siyu_check"
# Values only ever as counts: the default result format copies failing values (mobiles) into
# results, stored JSON and Data Docs.
RESULT_FORMAT: dict[str, object] = {"result_format": "SUMMARY", "partial_unexpected_count": 0}

# The columns GX sees, nothing more (GX fingerprints every column it is handed), repeating
# ones as categoricals. Two are stand-ins that keep the property and drop the personal value:
#   customer_id   the id's code as a categorical (missing when empty): equal ids <=> equal codes
#   mobile        the mobile's shape: its first two characters, then "000000000" when the rest
#                 is exactly nine ASCII digits, else "?"; it matches MOBILE_PATTERN exactly
#                 when the mobile does, and no mobile ever reaches GX
#   export_date   the date as YYYY-MM-DD text, "" when empty or unparsable
#   unparsable_value  True where a non-empty amount, flag or date did not parse
VALIDATED_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "mobile",
    "branch_code",
    "customer_class",
    "aum",
    "aum_peak",
    "export_date",
    "unparsable_value",
)
MOBILE_SHAPE_DIGITS = "000000000"
MOBILE_SHAPE_BAD = "?"


@dataclass(frozen=True)
class QualityCheck:
    """One property of a good export: its stable name, level, and what it means to ops."""

    name: str
    level: Literal["table", "row"]
    description: str


QUALITY_CHECKS: tuple[QualityCheck, ...] = (
    QualityCheck(
        "columns_present", "table", "every required column (客户号 ... 数据日期) is present"
    ),
    QualityCheck("encoding", "table", "the file is readable GBK or UTF-8 text (or Parquet)"),
    QualityCheck("not_empty", "table", "the file has at least one data row"),
    QualityCheck(
        "not_truncated", "table", "the last line is complete (the file was fully written)"
    ),
    QualityCheck(
        "types_parse",
        "table",
        "every non-empty amount, flag and date parses (当前资产 ... 数据日期)",
    ),
    QualityCheck("customer_id_not_null", "table", "every row has a customer id (客户号)"),
    QualityCheck("customer_id_unique", "table", "no customer id (客户号) appears twice"),
    QualityCheck(
        "export_date_expected", "table", "every row's export date (数据日期) is the business date"
    ),
    QualityCheck(
        "row_count_stable", "table", "the row count is close to the last accepted export's"
    ),
    QualityCheck("mobile_format", "row", "the mobile (手机号) is 11 digits starting 13-19"),
    QualityCheck("aum_non_negative", "row", "current AUM (当前资产) is >= 0"),
    QualityCheck("aum_peak_non_negative", "row", "peak AUM (历史最高资产) is >= 0"),
    QualityCheck("branch_known", "row", "the branch (开户机构) is a known branch code"),
    QualityCheck("class_known", "row", "the customer class (客户类型) is 直营 or 代工"),
)
QUARANTINE_CHECK = QualityCheck(
    "quarantine_share", "table", "the share of rows failing row checks is within the threshold"
)
CHECKS_BY_NAME: dict[str, QualityCheck] = {c.name: c for c in (*QUALITY_CHECKS, QUARANTINE_CHECK)}
# Checks found while reading the file, before GX can look at it.
LOAD_CHECKS: tuple[str, ...] = ("columns_present", "encoding", "not_truncated")
ROW_CHECKS: tuple[str, ...] = tuple(c.name for c in QUALITY_CHECKS if c.level == "row")


def row_count_bounds(previous_row_count: int | None, tolerance: float) -> tuple[int, int | None]:
    """Accepted row counts: within ±tolerance of the last accepted export (any, when none)."""
    if previous_row_count is None:
        return 0, None
    low = math.ceil(previous_row_count * (1 - tolerance))
    high = math.floor(previous_row_count * (1 + tolerance))
    return max(low, 0), high


def build_export_suite(
    *,
    expected_date: date,
    branches: Sequence[str],
    previous_row_count: int | None,
    volume_tolerance: float,
) -> ExpectationSuite:
    """The suite for one day's export: one expectation per quality check that GX evaluates."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    low, high = row_count_bounds(previous_row_count, volume_tolerance)
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta("not_empty")),
        gxe.ExpectColumnValuesToBeInSet(
            column="unparsable_value", value_set=[False], meta=_meta("types_parse")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="customer_id", meta=_meta("customer_id_not_null")),
        gxe.ExpectColumnValuesToBeUnique(column="customer_id", meta=_meta("customer_id_unique")),
        gxe.ExpectColumnValuesToBeInSet(
            column="export_date",
            value_set=[expected_date.isoformat()],
            meta=_meta("export_date_expected"),
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=low, max_value=high, meta=_meta("row_count_stable")
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="mobile", regex=MOBILE_PATTERN, meta=_meta("mobile_format")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="aum", min_value=0, meta=_meta("aum_non_negative")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="aum_peak", min_value=0, meta=_meta("aum_peak_non_negative")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="branch_code", value_set=sorted(branches), meta=_meta("branch_known")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="customer_class", value_set=list(CUSTOMER_CLASSES), meta=_meta("class_known")
        ),
    ]
    for expectation in expectations:
        check = CHECKS_BY_NAME[expectation.meta[CHECK_META_KEY]]
        expectation.description = f"{check.name}: {check.description}"
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
    return suite


def _meta(check: str) -> dict[str, str]:
    return {CHECK_META_KEY: check}
