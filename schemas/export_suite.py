"""The registry of the export's quality checks: one entry per property, and the GX suite built from it.

Each check says what it tests, the phrase ops read when it fails, whether it blocks the file
(level "table") or quarantines rows (level "row"), and, where GX evaluates it, the rule: one
predicate that becomes both the GX expectation and the gate's per-row mask. Checks without a
rule are decided while reading or profiling the file; they enter the suite as their outcome,
so Data Docs list every check the gate made and reach the same verdict. Adding a check is one
entry in CHECKS (and, for a new kind of rule, one branch in `expectation` and the gate's mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from siyu.schemas.export import CUSTOMER_CLASSES, MOBILE_PATTERN

if TYPE_CHECKING:  # great_expectations costs seconds to import: only the gate imports it, late
    from great_expectations import ExpectationSuite

SUITE_NAME = "core_export"
# Each expectation's meta names the check it implements.
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

Level = Literal["table", "row"]
RuleKind = Literal["row_count", "not_null", "unique", "in_set", "at_least", "regex"]


@dataclass(frozen=True)
class SuiteContext:
    """What one day's rules depend on: the business date, the branches, the volume bounds."""

    expected_date: date
    branches: tuple[str, ...]
    row_bounds: tuple[int, int | None]


@dataclass(frozen=True)
class Rule:
    """One predicate over a validated column (or the table), read as GX's and as the gate's.

    row_count  the table has between bounds(ctx) rows
    not_null   the column has a value          unique    no value appears twice
    in_set     the value is in allowed(ctx)    at_least  the value is >= minimum
    regex      the value matches pattern
    Missing values pass every rule but not_null, as in GX.
    """

    kind: RuleKind
    column: str | None = None
    allowed: Callable[[SuiteContext], Sequence[Any]] | None = None
    bounds: Callable[[SuiteContext], tuple[int, int | None]] | None = None
    minimum: float | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class Check:
    """One property of a good export: its name, level, what it tests and what ops read.

    `phrase` is formatted with the failure's facts: {count}, {sample} (" (sample: ...)"),
    {problem} (what reading or profiling found) and the check's own (see the gate).
    """

    name: str
    level: Level
    description: str
    phrase: str
    rule: Rule | None = None


CHECKS: tuple[Check, ...] = (
    Check(
        "file_complete",
        "table",
        "the file was completely delivered (marker, control total or a size that holds still)",
        "{problem}",
    ),
    Check("encoding", "table", "the file is readable GBK or UTF-8 text (or Parquet)", "{problem}"),
    Check(
        "columns_present",
        "table",
        "every required column (客户号 ... 数据日期) is present",
        "{problem}",
    ),
    Check("header_unique", "table", "no column is named twice in the header", "{problem}"),
    Check(
        "not_empty",
        "table",
        "the file has at least one data row",
        "{problem}",
        Rule("row_count", bounds=lambda ctx: (1, None)),
    ),
    Check(
        "not_truncated",
        "table",
        "the last line is complete (the file was fully written)",
        "{problem}",
    ),
    Check(
        "types_parse",
        "table",
        "every non-empty amount, flag and date parses (当前资产 ... 数据日期)",
        "{count:,} rows with unparsable values ({by_column}){sample}",
        Rule("in_set", "unparsable_value", allowed=lambda ctx: [False]),
    ),
    Check(
        "required_values",
        "table",
        "every required column carries values (none is empty on every row)",
        "{problem}",
    ),
    Check(
        "customer_id_not_null",
        "table",
        "every row has a customer id (客户号)",
        "{count:,} rows without a customer id{sample}",
        Rule("not_null", "customer_id"),
    ),
    Check(
        "customer_id_unique",
        "table",
        "no customer id (客户号) appears twice",
        "{count:,} rows sharing a customer id{sample}",
        Rule("unique", "customer_id"),
    ),
    Check(
        "export_date_expected",
        "table",
        "every row's export date (数据日期) is the business date",
        "{count:,} rows not dated {expected} (found {found}){sample}",
        Rule("in_set", "export_date", allowed=lambda ctx: [ctx.expected_date.isoformat()]),
    ),
    Check(
        "row_count_stable",
        "table",
        "the row count is close to the last accepted export's",
        "{rows:,} rows against {previous:,} in the last accepted export ({change:+.1%}; "
        "allowed {low:,}-{high:,}, ±{tolerance:.0%})",
        Rule("row_count", bounds=lambda ctx: ctx.row_bounds),
    ),
    Check(
        "distribution_stable",
        "table",
        "no column's values collapsed against the last accepted export (empty, zero, one-sided "
        "flags, implausible AUM)",
        "{problem}",
    ),
    Check(
        "mobile_format",
        "row",
        "the mobile (手机号) is 11 digits starting 13-19",
        "{count:,} rows with a malformed mobile{sample}",
        Rule("regex", "mobile", pattern=MOBILE_PATTERN),
    ),
    Check(
        "aum_non_negative",
        "row",
        "current AUM (当前资产) is >= 0",
        "{count:,} rows with negative AUM{sample}",
        Rule("at_least", "aum", minimum=0),
    ),
    Check(
        "aum_peak_non_negative",
        "row",
        "peak AUM (历史最高资产) is >= 0",
        "{count:,} rows with negative peak AUM{sample}",
        Rule("at_least", "aum_peak", minimum=0),
    ),
    Check(
        "branch_known",
        "row",
        "the branch (开户机构) is a known branch code",
        "{count:,} rows with an unknown branch{sample}",
        Rule("in_set", "branch_code", allowed=lambda ctx: sorted(ctx.branches)),
    ),
    Check(
        "class_known",
        "row",
        "the customer class (客户类型) is 直营 or 代工",
        "{count:,} rows with an unknown customer class{sample}",
        Rule("in_set", "customer_class", allowed=lambda ctx: list(CUSTOMER_CLASSES)),
    ),
    Check(
        "quarantine_share",
        "table",
        "the share of rows failing row checks is within the threshold",
        "{count:,} of {rows:,} rows ({share} %) failed row checks, above the {threshold} % "
        "threshold{sample}",
    ),
)
CHECKS_BY_NAME: dict[str, Check] = {c.name: c for c in CHECKS}
ROW_CHECKS: tuple[str, ...] = tuple(c.name for c in CHECKS if c.level == "row")


def check_named(name: str) -> Check:
    """The registered check of this name; a KeyError names an unregistered one."""
    try:
        return CHECKS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no quality check named {name!r} in the registry") from None


def row_count_bounds(previous_row_count: int | None, tolerance: float) -> tuple[int, int | None]:
    """Accepted row counts: within ±tolerance of the last accepted export (any, when none)."""
    if previous_row_count is None:
        return 0, None
    low = math.ceil(previous_row_count * (1 - tolerance))
    high = math.floor(previous_row_count * (1 + tolerance))
    return max(low, 0), high


def expectation(check: Check, ctx: SuiteContext) -> Any:
    """The GX expectation of a check's rule. Row checks never fail the suite on their own
    (mostly=0: GX counts the rows, the quarantine share decides), as they never block the gate."""
    import great_expectations.expectations as gxe

    rule = check.rule
    assert rule is not None, check.name
    extra: dict[str, Any] = {"meta": {CHECK_META_KEY: check.name}}
    extra["description"] = f"{check.name}: {check.description}"
    if check.level == "row":
        extra["mostly"] = 0.0
    if rule.kind == "row_count":
        low, high = rule.bounds(ctx)
        return gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high, **extra)
    if rule.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=rule.column, **extra)
    if rule.kind == "unique":
        return gxe.ExpectColumnValuesToBeUnique(column=rule.column, **extra)
    if rule.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(
            column=rule.column, value_set=list(rule.allowed(ctx)), **extra
        )
    if rule.kind == "at_least":
        return gxe.ExpectColumnValuesToBeBetween(
            column=rule.column, min_value=rule.minimum, **extra
        )
    if rule.kind == "regex":
        return gxe.ExpectColumnValuesToMatchRegex(column=rule.column, regex=rule.pattern, **extra)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def decided_expectation(check: Check, passed: bool, detail: str) -> Any:
    """A check decided outside GX, as an expectation with its outcome (a table-shape fact GX
    computes once for all of them), so Data Docs list it with the gate's verdict and reason."""
    import great_expectations.expectations as gxe

    extra: dict[str, Any] = {
        "meta": {CHECK_META_KEY: check.name, "decided_by": "siyu gate"},
        "description": f"{check.name}: {check.description}"
        + (f" - FAILED: {detail}" if not passed else " - decided by the gate: passed"),
    }
    if passed:
        return gxe.ExpectTableColumnCountToBeBetween(min_value=0, **extra)
    return gxe.ExpectTableColumnCountToEqual(value=-1, **extra)


def build_export_suite(
    ctx: SuiteContext, decided: Mapping[str, tuple[bool, str]] | None = None
) -> ExpectationSuite:
    """The suite for one day's export: the rule of every check GX evaluates, plus the checks
    the gate decided itself (name -> (passed, reason)), in registry order."""
    import great_expectations as gx

    decided = decided or {}
    expectations = []
    for check in CHECKS:
        if check.name in decided:
            passed, detail = decided[check.name]
            expectations.append(decided_expectation(check, passed, detail))
        elif check.rule is not None:
            expectations.append(expectation(check, ctx))
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
