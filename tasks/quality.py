"""The export's quality gate: every check of the registry decided once, one verdict, one message.

GX evaluates the checks that have a rule; the same rule, read as a vectorised mask, picks the
quarantine rows and the masked samples. Checks decided while reading (completeness, encoding,
header) and profiling (empty columns, collapsed distributions) enter the GX suite as their
outcome, so Data Docs show exactly the gate's checks and verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.export import EXPORT_COLUMNS, CollapseLimits
from siyu.schemas.export_suite import (
    CHECK_META_KEY,
    CHECKS,
    MOBILE_SHAPE_BAD,
    MOBILE_SHAPE_DIGITS,
    RESULT_FORMAT,
    ROW_CHECKS,
    SUITE_NAME,
    Check,
    Rule,
    SuiteContext,
    build_export_suite,
    check_named,
    row_count_bounds,
)
from siyu.schemas.models import Export
from siyu.tasks.export import LOADED_COLUMNS, LOADED_FIELDS, PARSED_FIELDS, LoadedExport
from siyu.tasks.export_registry import COMMITTED, PASSED

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

SAMPLE_SIZE = 5
RERUN_HINT = "fix the export and rerun tag-sync"
# Problems found while reading that leave nothing GX could judge.
_UNREADABLE = ("file_complete", "encoding", "columns_present", "header_unique")
# Where an accepted export's value profile is kept in its `exports.report`.
PROFILE_KEY = "gate_profile"
# The verdict each Data Docs folder keeps beside it, for retention.
VERDICT_FILE = "siyu-gate.json"
# Validated columns GX must see as text: it turns a categorical into text to match a pattern.
_TEXT_FOR_GX = frozenset(c.rule.column for c in CHECKS if c.rule and c.rule.kind == "regex")
_HEADERS = {c.field: c.header for c in EXPORT_COLUMNS}

# One GX context per process: building one costs far more than a validation of a small file.
_GX_LOCK = threading.Lock()
_GX_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: counts and masked sample ids, never values."""

    name: str
    description: str
    level: Literal["table", "row"]
    passed: bool
    failed_count: int
    sample: list[str]
    detail: str = ""


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: blocked or not, every check, the rows to sync and the rows held back.

    `profile` is the export's value profile, the baseline the next export is compared with.
    """

    passed: bool
    checks: list[CheckResult]
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    message: str
    data_docs: Path | None
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Coded:
    """A validated column as a code per row (-1: missing) and its distinct values (None: the
    codes are the identity, as for customer ids)."""

    codes: np.ndarray
    values: pa.Array | None


Column = _Coded | np.ndarray


@dataclass(frozen=True)
class _Outcome:
    """One check's raw outcome before it is phrased."""

    passed: bool
    count: int
    mask: np.ndarray | None = None
    problem: str | None = None


def mask_customer_id(customer_id: str) -> str:
    """Show only the last four characters of a customer id: "C0000000042" -> "C****0042"."""
    text = str(customer_id).strip()
    if len(text) <= 5:
        return "****" + text[-2:]
    return f"{text[0]}****{text[-4:]}"


def run_gate(
    export: LoadedExport,
    *,
    expected_date: date,
    previous_row_count: int | None,
    branches: Sequence[str],
    volume_tolerance: float = 0.20,
    row_failure_threshold: float = 0.01,
    docs_dir: Path | None = None,
    previous_profile: Mapping[str, Any] | None = None,
    limits: CollapseLimits | None = None,
) -> GateResult:
    """Check an export against every registered check; block it, or pass it with its bad rows
    quarantined. The report (checks, message, Data Docs) is built once, at the end."""
    limits = limits or CollapseLimits()
    label = expected_date.isoformat()
    problems: dict[str, str] = {}
    for p in export.problems:
        problems.setdefault(p.check, p.message)
    frame = export.frame
    readable = not (set(_UNREADABLE) & problems.keys()) and all(
        f in frame.columns for f in LOADED_FIELDS
    )
    if not readable or (len(frame) == 0 and "not_empty" not in problems and problems):
        return _unreadable(export, problems, label, docs_dir)

    ctx = SuiteContext(
        expected_date=expected_date,
        branches=tuple(branches),
        row_bounds=row_count_bounds(previous_row_count, volume_tolerance),
    )
    columns = _validation_columns(frame)
    masks = _masks(columns, ctx)
    row_any = np.zeros(len(frame), dtype=bool)
    for name in ROW_CHECKS:
        row_any |= masks[name]
    quarantined_count = int(row_any.sum())
    share = quarantined_count / len(frame) if len(frame) else 0.0
    profile = export_profile(frame, columns)
    empty_columns = _empty_required(profile)
    collapsed = _collapsed(profile, previous_profile, limits, skip=empty_columns)

    # Outcomes the gate decides itself: from reading, profiling and the quarantine share.
    decided: dict[str, _Outcome] = {}
    for check in CHECKS:
        if check.name in problems:
            decided[check.name] = _Outcome(False, 1, masks.get(check.name), problems[check.name])
        elif check.rule is None:
            decided[check.name] = _Outcome(True, 0)
    decided["required_values"] = _Outcome(
        not empty_columns,
        len(empty_columns),
        problem=_sentence([f"column {_named(f)} is empty on every row" for f in empty_columns]),
    )
    decided["distribution_stable"] = _Outcome(
        not collapsed, len(collapsed), problem=_sentence(collapsed)
    )
    share_ok = share <= row_failure_threshold
    decided["quarantine_share"] = _Outcome(
        share_ok, 0 if share_ok else quarantined_count, None if share_ok else row_any
    )

    facts = _facts(
        frame,
        masks,
        expected=label,
        previous_row_count=previous_row_count,
        volume_tolerance=volume_tolerance,
        share=share,
        threshold=row_failure_threshold,
    )
    details = {
        name: _phrase(check_named(name), outcome, facts, export.is_csv, frame)
        for name, outcome in decided.items()
        if not outcome.passed
    }
    suite = build_export_suite(
        ctx, {name: (o.passed, details.get(name, "")) for name, o in decided.items()}
    )
    gx_outcomes, data_docs = _validate(_gx_frame(columns), suite, docs_dir)
    outcomes: dict[str, _Outcome] = {}
    for check in CHECKS:
        if check.name in decided:
            outcomes[check.name] = decided[check.name]
            continue
        success, count = gx_outcomes[check.name]
        # A row check never blocks: it fails (and quarantines) exactly the rows GX counted.
        passed = count == 0 if check.level == "row" else success
        outcomes[check.name] = _Outcome(passed, count, masks.get(check.name))

    gate = _report(
        export,
        outcomes,
        facts,
        label=label,
        quarantined=_quarantine(frame, masks, row_any),
        accepted=lambda passed: _accepted(frame, row_any) if passed else _no_rows(frame),
        share=share,
        data_docs=data_docs,
        profile=profile,
    )
    _remember_verdict(data_docs, docs_dir, gate.passed, label)
    return gate


def _report(
    export: LoadedExport,
    outcomes: Mapping[str, _Outcome],
    facts: _Facts,
    *,
    label: str,
    quarantined: pd.DataFrame,
    accepted: Callable[[bool], pd.DataFrame],
    share: float,
    data_docs: Path | None,
    profile: dict[str, Any],
) -> GateResult:
    """The gate's report, built once from every check's outcome, in registry order."""
    frame = export.frame
    checks = [
        _result(check, outcomes[check.name], facts, export.is_csv, frame)
        for check in CHECKS
        if check.name in outcomes
    ]
    failed = [c for c in checks if not c.passed]
    passed = all(c.passed for c in checks if c.level == "table")
    if passed:
        message = (
            f"export {label} passed the quality gate ({len(checks) - len(failed)} of "
            f"{len(checks)} checks clean); {len(quarantined):,} rows quarantined "
            f"({_percent(share)} %)"
        )
        if failed:
            message += ": " + "; ".join(c.detail for c in failed)
    else:
        ordered = [c for c in failed if c.level == "table"] + [
            c for c in failed if c.level == "row"
        ]
        message = (
            f"export {label} failed {len(failed)} of {len(checks)} checks: "
            + "; ".join(c.detail for c in ordered)
            + f" - {RERUN_HINT}"
        )
    return GateResult(passed, checks, accepted(passed), quarantined, message, data_docs, profile)


def _result(
    check: Check, outcome: _Outcome, facts: _Facts, is_csv: bool, frame: pd.DataFrame
) -> CheckResult:
    if outcome.passed:
        return CheckResult(check.name, check.description, check.level, True, 0, [])
    sample = _Sampler(frame, is_csv)(outcome.mask) if outcome.mask is not None else []
    detail = _phrase(check, outcome, facts, is_csv, frame, sample)
    return CheckResult(
        check.name, check.description, check.level, False, int(outcome.count), sample, detail
    )


def _phrase(
    check: Check,
    outcome: _Outcome,
    facts: _Facts,
    is_csv: bool,
    frame: pd.DataFrame,
    sample: list[str] | None = None,
) -> str:
    """The check's phrase with this failure's facts; what reading found, when it found it."""
    if outcome.problem:
        return outcome.problem
    if sample is None:
        sample = _Sampler(frame, is_csv)(outcome.mask) if outcome.mask is not None else []
    known = {
        "count": outcome.count,
        "sample": f" (sample: {', '.join(sample)})" if sample else "",
        "problem": f"{check.name} failed",
    }
    return check.phrase.format_map(facts.with_known(known))


class _Facts(dict):
    """What a phrase may name, each computed only when a failing check's phrase asks for it."""

    def __init__(self, lazy: Mapping[str, Callable[[], object]]) -> None:
        super().__init__()
        self._lazy = lazy

    def with_known(self, known: Mapping[str, object]) -> _Facts:
        facts = _Facts(self._lazy)
        facts.update(self)
        facts.update(known)
        return facts

    def __missing__(self, key: str) -> object:
        value = self._lazy[key]()
        self[key] = value
        return value


def _facts(
    frame: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    *,
    expected: str,
    previous_row_count: int | None,
    volume_tolerance: float,
    share: float,
    threshold: float,
) -> _Facts:
    low, high = row_count_bounds(previous_row_count, volume_tolerance)

    def by_column() -> str:
        return ", ".join(
            f"{name} {int(frame[f'_bad_{name}'].sum()):,}"
            for name in PARSED_FIELDS
            if f"_bad_{name}" in frame.columns and frame[f"_bad_{name}"].any()
        )

    def found() -> str:
        dates = pd.unique(frame.loc[masks["export_date_expected"], "export_date"])[:3]
        return ", ".join(
            "empty" if pd.isna(d) else pd.Timestamp(d).date().isoformat() for d in dates
        )

    return _Facts(
        {
            "by_column": by_column,
            "found": found,
            "expected": lambda: expected,
            "rows": lambda: len(frame),
            "previous": lambda: previous_row_count or 0,
            "change": lambda: len(frame) / previous_row_count - 1 if previous_row_count else 0.0,
            "low": lambda: low,
            "high": lambda: high or 0,
            "tolerance": lambda: volume_tolerance,
            "share": lambda: _percent(share),
            "threshold": lambda: _percent(threshold),
        }
    )


def _unreadable(
    export: LoadedExport, problems: dict[str, str], label: str, docs_dir: Path | None
) -> GateResult:
    """A file too broken for GX to judge: report what reading found; the rest cannot run."""
    checks = [
        CheckResult(c.name, c.description, "table", False, 1, [], problems[c.name])
        for c in CHECKS
        if c.name in problems
    ]
    message = (
        f"export {label} failed {len(checks)} check(s) before the others could run: "
        + "; ".join(c.detail for c in checks)
        + f" - {RERUN_HINT}"
    )
    data_docs = None
    if docs_dir is not None:
        suite = build_export_suite(
            SuiteContext(date.fromisoformat(label), (), (0, None)),
            {c.name: (False, c.detail) for c in checks},
        )
        # Only the decided outcomes: the suite holds no rule, so GX needs no column of the file.
        suite.expectations = [e for e in suite.expectations if e.meta.get("decided_by") is not None]
        _, data_docs = _validate(
            pd.DataFrame({"file": pd.Series([], dtype=object)}), suite, docs_dir
        )
        _remember_verdict(data_docs, docs_dir, False, label)
    return GateResult(
        False,
        checks,
        _no_rows(export.frame),
        _empty_quarantine(),
        message,
        data_docs,
    )


def _validation_columns(frame: pd.DataFrame) -> dict[str, Column]:
    """The validated columns (see the suite), each coded once: repeating columns as codes
    into their distinct values, so a rule tests each distinct value once."""
    shape_codes, shapes = _mobile_shapes(_arrow_text(frame["mobile"]))
    day_codes, days = pd.factorize(frame["export_date"], use_na_sentinel=True)
    day_labels = [d.strftime("%Y-%m-%d") for d in pd.DatetimeIndex(days)] + [""]
    day_codes = np.where(day_codes < 0, len(day_labels) - 1, day_codes)
    unparsable = np.zeros(len(frame), dtype=bool)
    for name in PARSED_FIELDS:
        column = f"_bad_{name}"
        if column in frame.columns:
            unparsable |= frame[column].to_numpy(dtype=bool, na_value=False)
    return {
        "customer_id": _Coded(_id_codes(_arrow_text(frame["customer_id"])), None),
        "mobile": _Coded(shape_codes, shapes),
        "branch_code": _Coded(*_distinct(frame["branch_code"])),
        "customer_class": _Coded(*_distinct(frame["customer_class"])),
        "aum": frame["aum"].to_numpy(dtype="float64", na_value=np.nan),
        "aum_peak": frame["aum_peak"].to_numpy(dtype="float64", na_value=np.nan),
        "export_date": _Coded(day_codes.astype(np.int32), pa.array(day_labels, pa.string())),
        "unparsable_value": unparsable,
    }


def _masks(columns: Mapping[str, Column], ctx: SuiteContext) -> dict[str, np.ndarray]:
    """Each column rule's failing rows: the registry's predicates, the same GX evaluates."""
    return {
        check.name: failing_rows(check.rule, columns[check.rule.column], ctx)
        for check in CHECKS
        if check.rule is not None and check.rule.column is not None
    }


def failing_rows(rule: Rule, column: Column, ctx: SuiteContext) -> np.ndarray:
    """The rows a rule fails, as a numpy bool mask. Missing values fail only not_null (as in GX)."""
    if isinstance(column, _Coded):
        codes = column.codes
        if rule.kind == "not_null":
            return codes < 0
        if rule.kind == "unique":
            present = codes >= 0
            counts = np.bincount(codes[present], minlength=1)
            return present & (counts[np.where(present, codes, 0)] > 1)
        if rule.kind == "in_set":
            ok = pc.is_in(column.values, value_set=pa.array(list(rule.allowed(ctx)), pa.string()))
        elif rule.kind == "regex":
            ok = pc.fill_null(pc.match_substring_regex(column.values, rule.pattern), False)
        else:
            raise ValueError(f"rule {rule.kind} does not apply to a coded column")
        return _spread(pc.invert(ok), codes)
    if rule.kind == "not_null":
        return pd.isna(column)
    if rule.kind == "in_set":
        return ~np.isin(column, list(rule.allowed(ctx)))
    if rule.kind == "at_least":
        with np.errstate(invalid="ignore"):
            return column < rule.minimum
    raise ValueError(f"rule {rule.kind} does not apply to a plain column")


def _gx_frame(columns: Mapping[str, Column]) -> pd.DataFrame:
    """The validated columns in forms that are cheap to fingerprint: repeating ones as
    categoricals (GX hashes, filters and tests set membership on their small integer codes)."""
    out: dict[str, Any] = {}
    for name, column in columns.items():
        if not isinstance(column, _Coded):
            out[name] = column
        elif column.values is None:
            codes = column.codes
            out[name] = pd.Categorical.from_codes(
                codes, categories=pd.RangeIndex(int(codes.max(initial=-1)) + 1), validate=False
            )
        elif name in _TEXT_FOR_GX:
            codes = column.codes
            out[name] = pc.take(column.values, pa.array(codes, mask=codes < 0)).to_pandas()
        else:
            out[name] = _categorical(column.codes, column.values)
    return pd.DataFrame(out, copy=False)


def export_profile(
    frame: pd.DataFrame, columns: Mapping[str, Column] | None = None
) -> dict[str, Any]:
    """Shares per column (empty, zero, yes), AUM's median and the amounts' maximum: aggregates
    only, the baseline against which the next export's distribution is judged. Amount arrays
    already made for the gate (`columns`) are reused."""
    rows = len(frame)
    columns = columns or {}
    profile: dict[str, dict[str, float | None]] = {}
    for column in LOADED_COLUMNS:
        values = frame[column.field]
        if column.kind in ("mobile", "branch", "class"):
            # Missing text is "" (see the loader): count zero-length values on the Arrow data.
            empty = pc.sum(pc.equal(pc.binary_length(_arrow_text(values)), 0)).as_py() or 0
        else:
            missing = values.isna().to_numpy(dtype=bool)
            bad = frame.get(f"_bad_{column.field}")
            if bad is not None:
                missing = missing & ~bad.to_numpy(dtype=bool)
            empty = int(missing.sum())
        entry: dict[str, float | None] = {"empty": empty / rows if rows else 0.0}
        if column.kind == "decimal":
            numbers = columns.get(column.field)
            if not isinstance(numbers, np.ndarray):
                numbers = values.to_numpy(dtype="float64", na_value=np.nan)
            nan = np.isnan(numbers)
            present = len(numbers) - int(np.count_nonzero(nan))
            entry["zero"] = np.count_nonzero(numbers == 0) / present if present else None
            entry["max"] = float(np.fmax.reduce(numbers)) if present else None
            if column.field == "aum":  # a unit change moves the median; peaks follow it
                # Every k-th row is plenty to see a tenfold move, at a tenth of the cost.
                step = max(1, len(numbers) // 100_000)
                sampled = numbers[::step][~nan[::step]]
                entry["median"] = float(np.median(sampled)) if len(sampled) else None
        elif column.kind == "flag":
            answered = ~values.isna().to_numpy(dtype=bool)
            yes = values.to_numpy(dtype=bool, na_value=False)
            count = int(np.count_nonzero(answered))
            entry["yes"] = np.count_nonzero(yes) / count if count else None
        profile[column.field] = entry
    return {"rows": rows, "columns": profile}


def _named(field_name: str) -> str:
    return f"{_HEADERS.get(field_name, field_name)} ({field_name})"


def _empty_required(profile: Mapping[str, Any]) -> list[str]:
    """The required columns that are empty on every row."""
    if not profile.get("rows"):
        return []
    return [
        c.field
        for c in LOADED_COLUMNS
        if c.required and profile["columns"][c.field]["empty"] >= 1.0
    ]


def _collapsed(
    profile: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    limits: CollapseLimits,
    *,
    skip: Sequence[str] = (),
) -> list[str]:
    """What collapsed against the previous accepted export's profile, in words (and AUM beyond
    any plausible bound, which needs no baseline)."""
    if not profile.get("rows"):
        return []
    now = profile["columns"]
    found: list[str] = []
    for field_name in ("aum", "aum_peak"):
        top = now[field_name].get("max")
        if top is not None and top > limits.aum_plausible_max:
            found.append(
                f"column {_named(field_name)} reaches {top:,.0f}, above the plausible "
                f"{limits.aum_plausible_max:,.0f}"
            )
    before = (previous or {}).get("columns") or {}
    for column in LOADED_COLUMNS:
        old, new = before.get(column.field), now[column.field]
        if not old or column.field in skip:  # already reported as empty on every row
            continue
        name = _named(column.field)
        if new["empty"] - old["empty"] > limits.max_empty_share_rise:
            found.append(f"column {name} is {new['empty']:.0%} empty (was {old['empty']:.0%})")
            continue
        if column.kind == "decimal":
            zero_now, zero_then = new.get("zero"), old.get("zero")
            if (
                zero_now is not None
                and zero_then is not None
                and zero_now - zero_then > limits.max_zero_share_rise
            ):
                found.append(f"column {name} is {zero_now:.0%} zero (was {zero_then:.0%})")
            median_now, median_then = new.get("median"), old.get("median")
            if column.field == "aum" and median_now and median_then and median_then > 0:
                ratio = median_now / median_then
                if ratio > limits.aum_median_factor or ratio < 1 / limits.aum_median_factor:
                    found.append(
                        f"median {name} moved {ratio:.3g}x ({median_then:,.0f} -> "
                        f"{median_now:,.0f}): a unit or scale change?"
                    )
        elif column.kind == "flag":
            yes_now, yes_then = new.get("yes"), old.get("yes")
            if yes_now is None or yes_then is None:
                continue
            mixed = min(yes_then, 1 - yes_then) >= limits.flag_mixed_share
            ratio = limits.flag_collapse_ratio
            if mixed and (yes_now < yes_then * ratio or 1 - yes_now < (1 - yes_then) * ratio):
                side = "no" if yes_now < yes_then * ratio else "yes"
                found.append(
                    f"flag {name} is {1 - yes_now if side == 'no' else yes_now:.0%} {side} "
                    f"(was {yes_then:.0%} yes)"
                )
    return found


def _sentence(parts: Sequence[str]) -> str | None:
    return "; ".join(parts) if parts else None


def prune_data_docs(root: Path, *, keep_days: int, keep_blocked: bool, now: datetime) -> list[Path]:
    """Remove the Data Docs folders under `root` older than keep_days (a blocked run's stay
    when keep_blocked); return what was removed."""
    if not root.is_dir():
        return []
    removed: list[Path] = []
    cutoff = now.timestamp() - keep_days * 86_400
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        verdict = _verdict(folder)
        if keep_blocked and verdict is not None and not verdict.get("passed", True):
            continue
        if folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _verdict(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / VERDICT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _remember_verdict(
    data_docs: Path | None, docs_dir: Path | None, passed: bool, label: str
) -> None:
    if data_docs is not None and docs_dir is not None:
        (Path(docs_dir) / VERDICT_FILE).write_text(
            json.dumps({"passed": passed, "export_date": label})
        )


def data_docs_link(index: Path, reports_dir: Path, base_url: str | None) -> tuple[str, str | None]:
    """Data Docs as ops reach them: the path relative to reports_dir, and, when reports_dir is
    served at `base_url`, the URL."""
    relative = Path(index).resolve().relative_to(Path(reports_dir).resolve()).as_posix()
    if not base_url:
        return relative, None
    return relative, f"{base_url.rstrip('/')}/{quote(relative)}"


def store_profile(engine: sa.Engine, export_id: int, profile: Mapping[str, Any]) -> None:
    """Keep an export's value profile in its report (under PROFILE_KEY): the next baseline."""
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        export.report = {**(export.report or {}), PROFILE_KEY: dict(profile)}


def previous_profile(engine: sa.Engine, before_id: int) -> dict[str, Any] | None:
    """The value profile of the last export before this one the gate let through (the volume
    check's baseline too), if it kept one."""
    with Session(engine) as session:
        report = session.scalars(
            sa.select(Export.report)
            .where(Export.id < before_id, Export.status.in_([PASSED, *COMMITTED]))
            .order_by(Export.id.desc())
        ).first()
    return (report or {}).get(PROFILE_KEY)


def _no_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[0:0][_public_columns(frame)]


def _id_codes(ids: pa.Array) -> np.ndarray:
    """A code per row, equal exactly where the ids are equal; -1 where the id is empty.

    A core-banking dump is usually in customer-id order, and strictly increasing ids are
    unique: one comparison of neighbours proves it, and the row number serves as the code.
    Any other file pays for one hash encoding of its ids (cheaper than sorting them).
    """
    present = ids.drop_null()
    if len(present) < 2 or pc.all(pc.greater(present[1:], present[:-1])).as_py():
        codes = np.arange(len(ids), dtype=np.int64)
        if ids.null_count:
            codes[ids.is_null().to_numpy(zero_copy_only=False)] = -1
        return codes
    encoded = pc.dictionary_encode(ids).indices
    return encoded.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _distinct(series: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """A repeating text column as (code per row, -1 where missing; its distinct values)."""
    encoded = pc.dictionary_encode(_arrow_text(series))
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return codes.astype(np.int32, copy=False), encoded.dictionary


def _spread(verdicts: pa.Array, codes: np.ndarray) -> np.ndarray:
    """Each row's distinct value's verdict; False where the row has no value (code -1)."""
    # The appended False sits at index -1, exactly where missing rows point.
    per_value = np.append(_to_numpy_bool(verdicts), False)
    return per_value[codes]


def _mobile_shapes(mobiles: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Each mobile's shape (see the suite) as (code per row, -1 where missing; the shapes).

    A mobile of eleven ASCII digits has the shape of its first two digits: those are read
    straight from the bytes. Only the rare other mobiles are sliced as text.
    """
    n = len(mobiles)
    elevens = pc.and_(pc.equal(pc.binary_length(mobiles), 11), pc.ascii_is_decimal(mobiles))
    eleven = _to_numpy_bool(pc.fill_null(elevens, False))
    codes = np.full(n, -1, dtype=np.int32)
    shapes = [f"{i:02d}{MOBILE_SHAPE_DIGITS}" for i in range(100)]
    rows = np.flatnonzero(eleven)
    if len(rows):
        offsets = np.frombuffer(mobiles.buffers()[1], dtype=np.int32)[mobiles.offset :]
        data = np.frombuffer(mobiles.buffers()[2], dtype=np.uint8)
        starts = offsets[rows]
        codes[rows] = (data[starts].astype(np.int32) - 48) * 10 + data[starts + 1] - 48
    others = np.flatnonzero(~eleven)
    if len(others):
        rest = mobiles.take(pa.array(others))
        tail = pc.utf8_slice_codeunits(rest, 2)
        tail_is_digits = pc.and_(
            pc.equal(pc.utf8_length(tail), len(MOBILE_SHAPE_DIGITS)), pc.ascii_is_decimal(tail)
        )
        shape = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(rest, 0, 2),
            pc.if_else(tail_is_digits, MOBILE_SHAPE_DIGITS, MOBILE_SHAPE_BAD),
            "",
        )
        encoded = pc.dictionary_encode(shape)
        local = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        codes[others] = np.where(local < 0, -1, local + len(shapes))
        shapes.extend(encoded.dictionary.to_pylist())
    return codes, pa.array(shapes, pa.string())


def _categorical(codes: np.ndarray, words: pa.Array) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=pd.Index(words.to_pylist(), dtype=object))


def _validate(
    frame: pd.DataFrame, suite: Any, docs_dir: Path | None
) -> tuple[dict[str, tuple[bool, int]], Path | None]:
    """Run the suite once; (success, count) per check, and the Data Docs index if asked for."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # late: importing GX costs seconds

    with _GX_LOCK:
        if docs_dir is None:
            context, batch_definition = _ephemeral_context()
            suite = context.suites.add_or_update(suite)
            validation = context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=SUITE_NAME, data=batch_definition, suite=suite)
            )
            result = validation.run(
                batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT
            )
            index = None
        else:
            result, index = _validate_with_docs(frame, suite, Path(docs_dir))
    return _outcomes(result), index


def _ephemeral_context() -> tuple[Any, Any]:
    """The process's in-memory GX context and its dataframe batch definition, made once."""
    if "ephemeral" not in _GX_CACHE:
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        _quiet(context)
        _GX_CACHE["ephemeral"] = (context, _batch_definition(context))
    return _GX_CACHE["ephemeral"]


def _validate_with_docs(
    frame: pd.DataFrame, suite: Any, docs_dir: Path
) -> tuple[ExpectationSuiteValidationResult, Path]:
    """Validate in a file-backed context rooted at docs_dir and build its Data Docs there."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    docs_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    _quiet(context)
    batch_definition = _batch_definition(context)
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data_docs")],
            result_format=RESULT_FORMAT,
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    result = next(iter(run.run_results.values()))
    index = _docs_index(context, docs_dir)
    return result, index


def _docs_index(context: Any, docs_dir: Path) -> Path:
    """The local Data Docs site's index.html."""
    for site in context.get_docs_sites_urls():
        url = site.get("site_url") or ""
        if url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return next(docs_dir.rglob("index.html"))


def _batch_definition(context: Any) -> Any:
    """A pandas data source with one whole-dataframe batch definition."""
    source = context.data_sources.add_or_update_pandas(name="siyu")
    asset = next((a for a in source.assets if a.name == SUITE_NAME), None)
    if asset is None:
        asset = source.add_dataframe_asset(name=SUITE_NAME)
    existing = next((b for b in asset.batch_definitions if b.name == "whole"), None)
    return existing or asset.add_batch_definition_whole_dataframe("whole")


def _quiet(context: Any) -> None:
    """No progress bars on the console of a scheduled job."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)


def _outcomes(result: Any) -> dict[str, tuple[bool, int]]:
    """(success, unexpected count) per check from GX's result; 1 for a failed table property."""
    outcomes: dict[str, tuple[bool, int]] = {}
    for item in result.results:
        check = item.expectation_config.meta[CHECK_META_KEY]
        details = item.result or {}
        if item.exception_info and item.exception_info.get("raised_exception"):
            outcomes[check] = (False, 1)
        elif "unexpected_count" in details:
            outcomes[check] = (bool(item.success), int(details["unexpected_count"] or 0))
        else:
            outcomes[check] = (bool(item.success), 0 if item.success else 1)
    return outcomes


class _Sampler:
    """Masked customer ids of the first offending rows (a line number where the id is empty)."""

    def __init__(self, frame: pd.DataFrame, is_csv: bool) -> None:
        self._ids = frame["customer_id"]
        self._offset = 2 if is_csv else 1
        self._where = "line" if is_csv else "row"

    def __call__(self, mask: np.ndarray) -> list[str]:
        sample: list[str] = []
        for row in np.flatnonzero(mask)[: SAMPLE_SIZE * 10]:
            value = self._ids.iloc[row]
            if pd.isna(value) or not str(value).strip():
                shown = f"{self._where} {row + self._offset}"
            else:
                shown = mask_customer_id(value)
            if shown not in sample:  # duplicated ids would otherwise fill the sample twice
                sample.append(shown)
            if len(sample) == SAMPLE_SIZE:
                break
        return sample


def _quarantine(frame: pd.DataFrame, masks: dict[str, Any], row_any: np.ndarray) -> pd.DataFrame:
    """Rows failing row checks: position, customer id and the check names (no other values)."""
    rows = np.flatnonzero(row_any)
    if len(rows) == 0:
        return _empty_quarantine()
    # Each row's failures as a bit pattern: few distinct patterns, each joined into text once.
    bits = np.zeros(len(rows), dtype=np.int64)
    for i, name in enumerate(ROW_CHECKS):
        bits |= masks[name][rows].astype(np.int64) << i
    patterns, inverse = np.unique(bits, return_inverse=True)
    texts = np.array(
        [",".join(n for i, n in enumerate(ROW_CHECKS) if p >> i & 1) for p in patterns],
        dtype=object,
    )
    return pd.DataFrame(
        {
            "row_number": rows.astype(np.int64),
            "customer_id": frame["customer_id"].iloc[rows].to_numpy(dtype=object, na_value=""),
            "reasons": texts[inverse.ravel()],
        }
    )


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_number": pd.Series(dtype=np.int64),
            "customer_id": pd.Series(dtype=object),
            "reasons": pd.Series(dtype=object),
        }
    )


def _accepted(frame: pd.DataFrame, row_any: np.ndarray) -> pd.DataFrame:
    """The typed rows that passed every row check, without the loader's helper columns."""
    public = frame[_public_columns(frame)]
    return public if not row_any.any() else public.loc[~row_any]


def _public_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not str(c).startswith("_")]


def _arrow_text(series: pd.Series) -> pa.Array:
    """A text column as Arrow strings (zero-copy when pandas already holds it in Arrow)."""
    arrow = pa.array(series, from_pandas=True)
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if not pa.types.is_string(arrow.type):
        arrow = pc.cast(arrow, pa.string())
    return arrow


def _to_numpy_bool(values: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def _percent(share: float) -> str:
    """A share as a short percentage: 0.000012 -> "0.0012"."""
    return f"{share * 100:.4g}"
