"""The export's quality gate: GX decides each check, masks quarantine rows, ops get one message."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from siyu.schemas.export import CUSTOMER_CLASSES, MOBILE_PATTERN
from siyu.schemas.export_suite import (
    CHECK_META_KEY,
    CHECKS_BY_NAME,
    LOAD_CHECKS,
    MOBILE_SHAPE_BAD,
    MOBILE_SHAPE_DIGITS,
    QUALITY_CHECKS,
    QUARANTINE_CHECK,
    RESULT_FORMAT,
    ROW_CHECKS,
    SUITE_NAME,
    build_export_suite,
    row_count_bounds,
)
from siyu.tasks.export import LOADED_FIELDS, PARSED_FIELDS, LoadedExport

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

SAMPLE_SIZE = 5
RERUN_HINT = "fix the export and rerun tag-sync"

# What a failing row means to ops, per row-level check and the row-ish table checks.
_ROW_PHRASES: dict[str, str] = {
    "customer_id_not_null": "rows without a customer id",
    "customer_id_unique": "rows sharing a customer id",
    "mobile_format": "rows with a malformed mobile",
    "aum_non_negative": "rows with negative AUM",
    "aum_peak_non_negative": "rows with negative peak AUM",
    "branch_known": "rows with an unknown branch",
    "class_known": "rows with an unknown customer class",
}

# One GX context per process: building one costs far more than a validation of a small file.
_GX_LOCK = threading.Lock()
_GX_CACHE: dict[str, Any] = {}


@dataclass
class CheckResult:
    """One check's outcome: counts and masked sample ids, never values."""

    name: str
    description: str
    level: Literal["table", "row"]
    passed: bool
    failed_count: int
    sample: list[str]


@dataclass
class GateResult:
    """The gate's verdict: blocked or not, every check, the rows to sync and the rows held back."""

    passed: bool
    checks: list[CheckResult]
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    message: str
    data_docs: Path | None


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
) -> GateResult:
    """Check an export against the suite; block it, or pass it with its bad rows quarantined.

    GX decides pass/fail and counts; the per-row masks (same predicates, vectorised) pick
    the quarantine rows and the masked samples.
    """
    label = expected_date.isoformat()
    problems = {p.check: p.message for p in export.problems}
    frame = export.frame
    readable = not ({"encoding", "columns_present"} & problems.keys()) and all(
        f in frame.columns for f in LOADED_FIELDS
    )
    if not readable or (len(frame) == 0 and "not_empty" not in problems and problems):
        return _unreadable(export, problems, label)

    masks = _masks(frame, expected_date, branches)
    suite = build_export_suite(
        expected_date=expected_date,
        branches=branches,
        previous_row_count=previous_row_count,
        volume_tolerance=volume_tolerance,
    )
    outcomes, data_docs = _validate(_validation_frame(frame, masks), suite, docs_dir)

    sample_of = _Sampler(frame, export.is_csv)
    checks: list[CheckResult] = []
    details: dict[str, str] = {}
    for check in QUALITY_CHECKS:
        if check.name in LOAD_CHECKS:
            passed, count = check.name not in problems, int(check.name in problems)
            sample: list[str] = []
            detail = problems.get(check.name, "")
        else:
            success, count = outcomes[check.name]
            passed = success and check.name not in problems
            mask = masks.get(check.name)
            sample = sample_of(mask) if mask is not None and not passed else []
            if check.name in problems and success:
                count = 1  # the file failed to parse as a whole; GX saw what could be read
            detail = _detail(
                check.name,
                count,
                sample,
                frame=frame,
                masks=masks,
                problem=problems.get(check.name),
                expected=label,
                previous_row_count=previous_row_count,
                volume_tolerance=volume_tolerance,
            )
        if not passed:
            details[check.name] = detail
        checks.append(
            CheckResult(check.name, check.description, check.level, passed, int(count), sample)
        )

    row_any = np.zeros(len(frame), dtype=bool)
    for name in ROW_CHECKS:
        row_any |= masks[name]
    quarantined_count = int(row_any.sum())
    share = quarantined_count / len(frame) if len(frame) else 0.0
    share_ok = share <= row_failure_threshold
    checks.append(
        CheckResult(
            QUARANTINE_CHECK.name,
            f"{QUARANTINE_CHECK.description} ({_percent(row_failure_threshold)} %)",
            "table",
            share_ok,
            0 if share_ok else quarantined_count,
            [] if share_ok else sample_of(row_any),
        )
    )
    if not share_ok:
        details[QUARANTINE_CHECK.name] = (
            f"{quarantined_count:,} of {len(frame):,} rows ({_percent(share)} %) failed row "
            f"checks, above the {_percent(row_failure_threshold)} % threshold"
        )

    table_ok = all(c.passed for c in checks if c.level == "table")
    quarantined = _quarantine(frame, masks, row_any)
    failed = [c for c in checks if not c.passed]
    if table_ok:
        accepted = _accepted(frame, row_any)
        message = (
            f"export {label} passed the quality gate ({len(checks) - len(failed)} of "
            f"{len(checks)} checks clean); {quarantined_count:,} rows quarantined "
            f"({_percent(share)} %)"
        )
        if failed:
            message += ": " + "; ".join(details[c.name] for c in failed)
    else:
        accepted = frame.iloc[0:0][_public_columns(frame)]
        ordered = [c for c in failed if c.level == "table"] + [
            c for c in failed if c.level == "row"
        ]
        message = (
            f"export {label} failed {len(failed)} of {len(checks)} checks: "
            + "; ".join(details[c.name] for c in ordered)
            + f" - {RERUN_HINT}"
        )
    return GateResult(table_ok, checks, accepted, quarantined, message, data_docs)


def _unreadable(export: LoadedExport, problems: dict[str, str], label: str) -> GateResult:
    """A file too broken for GX: report what reading found; the other checks cannot run."""
    checks = [
        CheckResult(name, CHECKS_BY_NAME[name].description, "table", False, 1, [])
        for name in CHECKS_BY_NAME
        if name in problems
    ]
    message = (
        f"export {label} failed {len(checks)} check(s) before the others could run: "
        + "; ".join(problems[c.name] for c in checks)
        + f" - {RERUN_HINT}"
    )
    return GateResult(
        False,
        checks,
        export.frame.iloc[0:0][_public_columns(export.frame)],
        _empty_quarantine(),
        message,
        None,
    )


def _masks(frame: pd.DataFrame, expected_date: date, branches: Sequence[str]) -> dict[str, Any]:
    """Per-row failure masks (numpy bool), the same predicates as the suite, plus GX inputs.

    Repeating columns are judged once per distinct value and the verdict spread to the rows.
    """
    ids = _arrow_text(frame["customer_id"])
    codes = _id_codes(ids)
    has_id = codes >= 0
    counts = np.bincount(codes[has_id], minlength=1)
    duplicated = has_id & (counts[np.where(has_id, codes, 0)] > 1)

    export_dates = frame["export_date"].to_numpy()
    on_date = export_dates == np.datetime64(expected_date)

    unparsable = np.zeros(len(frame), dtype=bool)
    for name in PARSED_FIELDS:
        column = f"_bad_{name}"
        if column in frame.columns:
            unparsable |= frame[column].to_numpy(dtype=bool, na_value=False)

    shape_codes, shapes = _mobile_shapes(_arrow_text(frame["mobile"]))
    shape_ok = pc.fill_null(pc.match_substring_regex(shapes, MOBILE_PATTERN), False)
    branch_codes, branch_words = _distinct(frame["branch_code"])
    class_codes, class_words = _distinct(frame["customer_class"])
    with np.errstate(invalid="ignore"):
        aum_negative = frame["aum"].to_numpy(dtype="float64", na_value=np.nan) < 0
        peak_negative = frame["aum_peak"].to_numpy(dtype="float64", na_value=np.nan) < 0
    return {
        "customer_id_not_null": ~has_id,
        "customer_id_unique": duplicated,
        "export_date_expected": ~on_date,
        "types_parse": unparsable,
        "mobile_format": ~_spread(shape_ok, shape_codes),
        "aum_non_negative": aum_negative,
        "aum_peak_non_negative": peak_negative,
        "branch_known": ~_spread(_is_in(branch_words, branches), branch_codes),
        "class_known": ~_spread(_is_in(class_words, list(CUSTOMER_CLASSES)), class_codes),
        "_id_codes": codes,
        "_mobile_shapes": pc.take(shapes, pa.array(shape_codes, mask=shape_codes < 0)),
        "_branch_codes": (branch_codes, branch_words),
        "_class_codes": (class_codes, class_words),
    }


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


def _is_in(words: pa.Array, allowed: Sequence[str]) -> pa.Array:
    return pc.is_in(words, value_set=pa.array(list(allowed), pa.string()))


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


def _validation_frame(frame: pd.DataFrame, masks: dict[str, Any]) -> pd.DataFrame:
    """Only the columns the suite checks, in forms that are cheap to fingerprint (see suite).

    Repeating columns go to GX as categoricals: it hashes, filters and tests set membership
    on their small integer codes. The mobile shape stays text: GX turns a categorical into
    text before matching a pattern.
    """
    codes = masks["_id_codes"]
    ids = pd.Categorical.from_codes(
        codes, categories=pd.RangeIndex(int(codes.max(initial=-1)) + 1), validate=False
    )
    day_codes, days = pd.factorize(frame["export_date"], use_na_sentinel=True)
    day_labels = [d.strftime("%Y-%m-%d") for d in pd.DatetimeIndex(days)] + [""]
    day_codes = np.where(day_codes < 0, len(day_labels) - 1, day_codes)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "mobile": masks["_mobile_shapes"].to_pandas(),
            "branch_code": _categorical(*masks["_branch_codes"]),
            "customer_class": _categorical(*masks["_class_codes"]),
            "aum": frame["aum"].to_numpy(dtype="float64", na_value=np.nan),
            "aum_peak": frame["aum_peak"].to_numpy(dtype="float64", na_value=np.nan),
            "export_date": pd.Categorical.from_codes(day_codes, categories=day_labels),
            "unparsable_value": masks["types_parse"],
        },
        copy=False,
    )


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


def _detail(
    check: str,
    count: int,
    sample: list[str],
    *,
    frame: pd.DataFrame,
    masks: dict[str, Any],
    problem: str | None,
    expected: str,
    previous_row_count: int | None,
    volume_tolerance: float,
) -> str:
    """One ops-readable phrase for a failed check, with counts and masked samples."""
    samples = f" (sample: {', '.join(sample)})" if sample else ""
    if check in _ROW_PHRASES:
        return f"{count:,} {_ROW_PHRASES[check]}{samples}"
    if check == "types_parse":
        if problem:
            return problem
        by_column = [
            f"{name} {int(frame[f'_bad_{name}'].sum()):,}"
            for name in PARSED_FIELDS
            if f"_bad_{name}" in frame.columns and frame[f"_bad_{name}"].any()
        ]
        return f"{count:,} rows with unparsable values ({', '.join(by_column)}){samples}"
    if check == "export_date_expected":
        found = pd.unique(frame.loc[masks[check], "export_date"])[:3]
        dates = ", ".join(
            "empty" if pd.isna(d) else pd.Timestamp(d).date().isoformat() for d in found
        )
        return f"{count:,} rows not dated {expected} (found {dates}){samples}"
    if check == "row_count_stable":
        low, high = row_count_bounds(previous_row_count, volume_tolerance)
        change = len(frame) / previous_row_count - 1 if previous_row_count else 0.0
        return (
            f"{len(frame):,} rows against {previous_row_count or 0:,} in the last accepted export "
            f"({change:+.1%}; allowed {low:,}-{high or 0:,}, ±{volume_tolerance:.0%})"
        )
    if check == "not_empty":
        return problem or "the file has a header but no data rows"
    return problem or f"{check} failed"


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
