"""Find the export inside the landing directory, wait until it is whole, load it into a typed frame."""

from __future__ import annotations

import codecs
import csv
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from siyu.schemas.export import (
    DATE_FORMATS,
    EXPORT_COLUMNS,
    FLAG_FALSE,
    FLAG_TRUE,
    MARKER_SUFFIXES,
    Completeness,
    ExportColumn,
    ExportLayout,
)
from siyu.schemas.export_suite import check_named

EXPORT_GLOBS: tuple[str, ...] = ("core_export_*.csv", "core_export_*.parquet")

# The name column is personal and no rule needs it: it is never read, so never required either.
LOADED_COLUMNS: tuple[ExportColumn, ...] = tuple(c for c in EXPORT_COLUMNS if c.kind != "pii")
LOADED_FIELDS: tuple[str, ...] = tuple(c.field for c in LOADED_COLUMNS)
# Columns that may fail to parse; each gets a `_bad_<field>` helper column.
PARSED_FIELDS: tuple[str, ...] = tuple(
    c.field for c in LOADED_COLUMNS if c.kind in ("decimal", "flag", "date")
)

# A plain decimal, optionally signed, with optional exponent: what the fallback parse accepts.
_DECIMAL_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_FLAG_TRUE = pa.array(sorted(FLAG_TRUE))
_FLAG_FALSE = pa.array(sorted(FLAG_FALSE))
_CHUNK = 1 << 16
# Encodings whose multibyte characters never contain a CSV quote, CR, LF or low delimiter.
_BYTE_SPLIT_ENCODINGS = frozenset({"gbk", "gb2312", "gb18030"})
_BYTE_DICTIONARY = pa.dictionary(pa.int32(), pa.binary())
# What the CSV reader can parse itself, in its threads, when every value is written cleanly.
_TYPED_KINDS: dict[str, pa.DataType] = {
    "decimal": pa.float64(),
    "flag": pa.bool_(),
    "date": pa.timestamp("s"),
}
# Low-cardinality columns are read dictionary-encoded: each distinct text is then parsed once.
_REPEATING_KINDS = frozenset({"branch", "class", "flag", "date"})
_CSV_TYPES: dict[str, pa.DataType] = {
    c.field: pa.dictionary(pa.int32(), pa.string()) if c.kind in _REPEATING_KINDS else pa.string()
    for c in LOADED_COLUMNS
}


@dataclass
class LoadProblem:
    """A table-level problem found while reading: the gate turns it into a failed check."""

    check: str
    message: str

    def __post_init__(self) -> None:
        check_named(self.check)  # a misspelt check name fails here, not silently in the report


class ExportRefused(ValueError):
    """A named export siyu will not read: outside the landing directory, missing, not a file."""


@dataclass
class LoadedExport:
    """An export file read into a typed frame (no name column), with what went wrong reading it."""

    path: Path
    checksum: str
    frame: pd.DataFrame
    row_count: int
    problems: list[LoadProblem] = field(default_factory=list)

    @property
    def is_csv(self) -> bool:
        """True for delimited text, where row i sits on file line i + 2."""
        return self.path.suffix.lower() != ".parquet"


def file_checksum(path: Path) -> str:
    """sha256 hex digest of the file's bytes: the export's identity for "already synced"."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def newest_export(landing_dir: Path) -> Path | None:
    """The newest core_export_*.csv|.parquet in `landing_dir`, or None when nothing has landed.

    Names carry the business date (core_export_YYYYMMDD), so the name decides; the
    modification time breaks ties between a date's re-deliveries.
    """
    if not landing_dir.is_dir():
        return None
    found = {p for pattern in EXPORT_GLOBS for p in landing_dir.glob(pattern) if p.is_file()}
    if not found:
        return None
    return max(found, key=lambda p: (p.stem, p.stat().st_mtime, p.name))


def resolve_export_path(landing_dir: Path, export_file: str) -> Path:
    """The named export as a regular file inside the landing directory, or ExportRefused.

    A relative name is taken inside the landing directory; links are resolved before the
    check, so nothing outside it (/etc/shadow, ../.., /proc/self/environ) is ever opened.
    """
    landing = Path(landing_dir).resolve()
    given = Path(export_file)
    resolved = (given if given.is_absolute() else landing / given).resolve()
    if not resolved.is_relative_to(landing):
        raise ExportRefused(
            f"export file {export_file} is outside the landing directory {landing} - siyu "
            "reads exports only from there: copy the file into it and rerun"
        )
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise ExportRefused(
            f"export file {export_file} does not exist in the landing directory - check the "
            "name and rerun"
        ) from None
    except OSError as error:
        raise ExportRefused(
            f"export file {export_file} cannot be examined ({error.strerror}) - check its "
            "permissions and rerun"
        ) from None
    if stat.S_ISDIR(mode):
        raise ExportRefused(
            f"export file {export_file} is a directory, not an export file - name a file in it"
        )
    if not stat.S_ISREG(mode):
        raise ExportRefused(
            f"export file {export_file} is not a regular file (a pipe, socket or device) - "
            "siyu reads only complete files that have landed"
        )
    return resolved


def marker_of(path: Path) -> Path | None:
    """The done-marker beside an export (<file>.done/.ok or <stem>.done/.ok), if one is there."""
    for suffix in MARKER_SUFFIXES:
        for candidate in (path.with_name(path.name + suffix), path.with_suffix(suffix)):
            if candidate.is_file():
                return candidate
    return None


def control_total(marker: Path) -> int | None:
    """The row count a control-total marker states (its first whole number), if any."""
    found = re.search(rb"\d+", marker.read_bytes()[:4096])
    return int(found.group()) if found else None


def completeness_problem(
    path: Path,
    completeness: Completeness,
    stable_seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> LoadProblem | None:
    """Whether the export is completely written, decided before it is read.

    With a marker, its presence; without, the size and mtime must hold still for
    `stable_seconds` (a file untouched for that long already has, and costs no wait).
    """
    if completeness in ("marker", "control_total"):
        if marker_of(path) is None:
            return LoadProblem(
                "file_complete",
                f"no done-marker beside {path.name} ({path.name}.done or .ok): the export is "
                "not completely delivered yet (wait for the marker)",
            )
        return None
    before = os.stat(path)
    age = clock() - before.st_mtime
    if stable_seconds <= 0 or age >= stable_seconds:
        return None
    sleep(stable_seconds - age)
    after = os.stat(path)
    if _fingerprint(before) != _fingerprint(after):
        return LoadProblem(
            "file_complete",
            f"the file is still being written (its size went from {before.st_size:,} to "
            f"{after.st_size:,} bytes in {stable_seconds:g} s): wait until it has landed",
        )
    return None


def _fingerprint(status: os.stat_result) -> tuple[int, int]:
    return status.st_size, status.st_mtime_ns


def load_export(
    path: Path,
    layout: ExportLayout = ExportLayout(),
    *,
    completeness: Completeness = "stable_size",
    stable_seconds: float = 0.0,
    timezone: str = "Asia/Shanghai",
) -> LoadedExport:
    """Read an export into a typed frame; problems are reported, never raised.

    Completeness is decided first (nothing is read from a file still being written), and a
    file whose size or mtime changed while it was read is refused. CSV is read as text in
    the layout's encoding, falling back to UTF-8 (with or without BOM) when the headers do
    not match. Parquet uses the English field names; its dates are read in `timezone`.
    """
    path = Path(path)
    incomplete = completeness_problem(path, completeness, stable_seconds)
    if incomplete is not None:
        return LoadedExport(path, "", _empty_frame(), 0, [incomplete])
    before = os.stat(path)
    if before.st_size == 0:
        problem = LoadProblem("not_empty", "the file is empty (0 bytes)")
        return LoadedExport(path, file_checksum(path), _empty_frame(), 0, [problem])
    # hashlib lets go of the GIL while hashing: the checksum runs beside the read for free.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-checksum") as pool:
        digest = pool.submit(file_checksum, path)
        if layout.format == "parquet" or path.suffix.lower() == ".parquet":
            table, problems = _read_parquet(path)
        else:
            table, problems = _read_csv(path, layout)
        checksum = digest.result()
    after = os.stat(path)
    if _fingerprint(before) != _fingerprint(after):
        changed = LoadProblem(
            "file_complete",
            f"the file changed while it was read ({before.st_size:,} -> {after.st_size:,} "
            "bytes): it is still being written, wait until it has landed",
        )
        return LoadedExport(path, checksum, _empty_frame(), 0, [changed])
    if table is None:
        return LoadedExport(path, checksum, _empty_frame(), 0, problems)
    frame = _typed_frame(table, timezone)
    if len(frame) == 0:
        problems.append(LoadProblem("not_empty", "the file has a header but no data rows"))
    if completeness == "control_total":
        marker = marker_of(path)
        total = control_total(marker) if marker else None
        if total is None or total != len(frame):
            stated = "no row count" if total is None else f"{total:,} rows"
            problems.append(
                LoadProblem(
                    "file_complete",
                    f"the file has {len(frame):,} rows but its control total "
                    f"({marker.name if marker else 'no marker'}) states {stated}: the export "
                    "is incomplete",
                )
            )
    return LoadedExport(path, checksum, frame, len(frame), problems)


def _read_csv(path: Path, layout: ExportLayout) -> tuple[pa.Table | None, list[LoadProblem]]:
    """Decode the header, check the columns and the last line, then read with pyarrow."""
    with path.open("rb") as f:
        header_line = f.readline()
    found = _match_header(header_line, layout)
    if found is None:
        return None, [
            LoadProblem(
                "encoding",
                f"the file is neither {layout.encoding} nor UTF-8 text",
            )
        ]
    encoding, headers, missing = found
    twice = _named_twice(headers, layout)
    if twice:
        return None, [LoadProblem("header_unique", twice)]
    if missing:
        return None, [LoadProblem("columns_present", _missing_message(missing, layout))]

    problems: list[LoadProblem] = []
    to_field = layout.header_to_field()
    names: list[str] = []
    for i, header in enumerate(headers):
        name = to_field.get(header, f"_unused_{i}")
        names.append(name if name not in names else f"_unused_{i}")
    source: str | pa.Buffer = str(path)
    cut_at = _truncation_point(path, encoding, len(headers), layout.delimiter)
    if cut_at is not None:
        source = pa.memory_map(str(path)).read_buffer(cut_at)

    def read(block_size: int | None) -> pa.Table:
        if _splits_on_bytes(encoding, layout.delimiter):
            return _read_gbk_family(source, names, layout.delimiter, encoding, block_size)
        return _read_text(source, names, layout.delimiter, encoding, block_size)

    try:
        try:
            table = read(None)
        except pa.ArrowInvalid as error:
            if "straddl" not in str(error):
                raise
            # One field is longer than a read block: read the file as one block, in every
            # encoding alike (a long field is judged by the checks, not by the block size).
            table = read(path.stat().st_size + 1)
    except (UnicodeDecodeError, UnicodeError):
        return None, [LoadProblem("encoding", _not_text(encoding, layout))]
    except (pa.ArrowInvalid, ValueError):
        if not _decodes(path, encoding):
            return None, [LoadProblem("encoding", _not_text(encoding, layout))]
        # pyarrow's message quotes the offending row (mobiles): never pass it on.
        return None, [
            LoadProblem(
                "types_parse",
                "a row has the wrong number of fields or broken quoting",
            )
        ]
    if cut_at is not None:
        line = table.num_rows + 2
        problems.append(
            LoadProblem(
                "not_truncated",
                f"the last line (line {line}) is cut off: the file was not completely written",
            )
        )
    return table, problems


def _not_text(encoding: str, layout: ExportLayout) -> str:
    """Rows that do not decode: say so, and when the header decoded differently, say that too."""
    if codecs.lookup(encoding).name != codecs.lookup(layout.encoding).name:
        return (
            f"the header is {_spoken(encoding)} text but the rows are not: the file mixes "
            f"encodings (the layout expects {_spoken(layout.encoding)})"
        )
    return f"the file's rows are not valid {encoding} text"


def _spoken(encoding: str) -> str:
    """An encoding as ops name it: utf-8-sig is UTF-8, gbk is GBK."""
    name = codecs.lookup(encoding).name
    return "UTF-8" if name.startswith("utf-8") else name.upper()


def _decodes(path: Path, encoding: str) -> bool:
    """True when the whole file decodes in `encoding` (read in pieces, kept nowhere)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _named_twice(headers: list[str], layout: ExportLayout) -> str | None:
    """Which header names a column twice (an ambiguous header), in words; None when none does."""
    to_field = layout.header_to_field()
    seen: dict[str, int] = {}
    for position, header in enumerate(headers, start=1):
        if header in seen:
            field_name = to_field.get(header)
            named = f"{header} ({field_name})" if field_name else header
            return (
                f"column {named} is named twice in the header (columns {seen[header]} and "
                f"{position}): siyu cannot tell which copy is meant"
            )
        seen[header] = position
    return None


def _read_text(
    source: str | pa.Buffer,
    names: list[str],
    delimiter: str,
    encoding: str,
    block_size: int | None = None,
) -> pa.Table:
    """Read the loaded columns, letting pyarrow decode the text (natively for UTF-8)."""
    # pyarrow skips a UTF-8 BOM itself and reads UTF-8 natively (much faster than transcoding).
    arrow_encoding = "utf8" if codecs.lookup(encoding).name.startswith("utf-8") else encoding
    return pcsv.read_csv(
        _readable(source),
        read_options=pcsv.ReadOptions(
            encoding=arrow_encoding,
            column_names=names,
            skip_rows=1,
            block_size=block_size or 1 << 24,
        ),
        parse_options=pcsv.ParseOptions(delimiter=delimiter),
        convert_options=pcsv.ConvertOptions(
            column_types=_CSV_TYPES,
            include_columns=list(LOADED_FIELDS),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
        ),
    )


def _splits_on_bytes(encoding: str, delimiter: str) -> bool:
    """True when the CSV structure can be parsed on the raw bytes, before decoding.

    In the GBK family every byte below 0x80 is ASCII, and the bytes inside a two- or
    four-byte character are 0x30-0x39 or 0x40 and above: never a quote, CR, LF or a
    delimiter such as "," or tab. A delimiter like "|" (0x7C) can sit inside a character.
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    code = ord(delimiter)
    return (
        name in _BYTE_SPLIT_ENCODINGS and code < 0x40 and not 0x30 <= code <= 0x39 and code != 0x22
    )


def _read_gbk_family(
    source: str | pa.Buffer,
    names: list[str],
    delimiter: str,
    encoding: str,
    block_size: int | None = None,
) -> pa.Table:
    """Split and convert the file on raw bytes, on all cores; decode only what is not ASCII.

    pyarrow's own transcoding decodes the whole file on one thread before parsing. Here the
    CSV reader splits the bytes and, in its worker threads, parses amounts, flags and dates
    straight into their types; the ASCII columns (ids, mobiles) are checked with one byte
    scan and used as they are, the class decodes its few distinct values, and the unused
    columns (the name) are decoded in one piece only to prove the file is valid text.
    Raises UnicodeDecodeError where any field is not valid `encoding`, as transcoding would.
    """
    try:
        raw = _read_bytes(source, names, delimiter, encoding, typed=True, block_size=block_size)
    except pa.ArrowInvalid as error:
        if "straddl" in str(error):
            raise
        # Some amount, flag or date is not written cleanly (or a row is malformed): read those
        # columns as text and let _typed_frame find and flag the values that do not parse.
        raw = _read_bytes(source, names, delimiter, encoding, typed=False, block_size=block_size)
    kinds = {c.field: c.kind for c in LOADED_COLUMNS}
    columns: dict[str, pa.ChunkedArray] = {}
    for name in raw.column_names:
        values = raw.column(name)
        kind = kinds.get(name)
        if not pa.types.is_binary(values.type) and not pa.types.is_dictionary(values.type):
            columns[name] = values  # parsed by the reader
        elif kind in _REPEATING_KINDS:
            columns[name] = _decode_dictionaries(values, encoding)
        elif _is_ascii(values):
            if kind is not None:
                columns[name] = pa.chunked_array(
                    [c.view(pa.string()) for c in values.chunks], type=pa.string()
                )
        elif kind is None:
            _prove_decodes(values, encoding)
        else:  # a rare file with non-ASCII ids, mobiles or amounts: decode value by value
            columns[name] = pa.chunked_array(
                [[None if v is None else v.decode(encoding) for v in values.to_pylist()]],
                type=pa.string(),
            )
    return pa.table({f: columns[f] for f in LOADED_FIELDS})


def _read_bytes(
    source: str | pa.Buffer,
    names: list[str],
    delimiter: str,
    encoding: str,
    *,
    typed: bool,
    block_size: int | None = None,
) -> pa.Table:
    """Every column as bytes (repeating ones dictionary-encoded), or typed where `typed`.

    The reader runs as "utf8" but only ever sees binary columns, so it never validates or
    decodes text. Typed, it parses amounts, flags (the words in `encoding`) and dates
    itself and raises ArrowInvalid at the first value that does not parse.
    """
    kinds = {c.field: c.kind for c in LOADED_COLUMNS}
    types: dict[str, pa.DataType] = {}
    for name in names:
        kind = kinds.get(name)
        if typed and kind in _TYPED_KINDS:
            types[name] = _TYPED_KINDS[kind]
        elif kind in _REPEATING_KINDS:
            types[name] = _BYTE_DICTIONARY
        else:
            types[name] = pa.binary()
    return pcsv.read_csv(
        _readable(source),
        read_options=pcsv.ReadOptions(
            encoding="utf8", column_names=names, skip_rows=1, block_size=block_size or 1 << 22
        ),
        parse_options=pcsv.ParseOptions(delimiter=delimiter),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
            true_values=[w.encode(encoding) for w in sorted(FLAG_TRUE)],
            false_values=[w.encode(encoding) for w in sorted(FLAG_FALSE)],
            timestamp_parsers=list(DATE_FORMATS),
        ),
    )


def _readable(source: str | pa.Buffer) -> str | pa.NativeFile:
    """A path as it is; a buffer (a truncated file's complete lines) as a fresh reader."""
    return source if isinstance(source, str) else pa.BufferReader(source)


def _is_ascii(values: pa.ChunkedArray) -> bool:
    """True when no value holds a byte of 0x80 or above: one scan of the data buffers."""
    for chunk in values.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        data = chunk.buffers()[2]
        if data is None or len(offsets) < 2 or offsets[-1] == offsets[0]:
            continue
        used = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
        if used.max() >= 0x80:
            return False
    return True


def _prove_decodes(values: pa.ChunkedArray, encoding: str) -> None:
    """Decode a column we do not keep, once per chunk; raises UnicodeDecodeError if invalid.

    The values are joined with newlines, which no multibyte character may contain, so a
    value ending inside a character fails exactly as it does in the file.
    """
    separator = pa.scalar(b"\n", pa.binary())
    for chunk in values.chunks:
        whole = pa.ListArray.from_arrays(
            pa.array([0, len(chunk)], pa.int32()), pc.fill_null(chunk, b"")
        )
        joined = pc.binary_join(whole, separator)[0].as_buffer()
        if joined is not None:
            codecs.decode(memoryview(joined), encoding)


def _decode_dictionaries(values: pa.ChunkedArray, encoding: str) -> pa.ChunkedArray:
    """A dictionary-encoded byte column with each chunk's few distinct values decoded."""
    decoded = []
    for chunk in values.chunks:
        dictionary = chunk.dictionary
        if _is_ascii(pa.chunked_array([dictionary], type=pa.binary())):
            words = dictionary.view(pa.string())  # dates, branch codes, Y/N: nothing to decode
        else:
            words = pa.array([w.decode(encoding) for w in dictionary.to_pylist()], pa.string())
        decoded.append(pa.DictionaryArray.from_arrays(chunk.indices, words))
    return pa.chunked_array(decoded, type=_CSV_TYPES["branch_code"])


def _match_header(
    header_line: bytes, layout: ExportLayout
) -> tuple[str, list[str], list[str]] | None:
    """Try the layout's encoding, then UTF-8; return (encoding, headers, missing fields).

    None when the header decodes in neither. When both decode but columns are missing,
    the decoding that finds more of our headers wins, so the report names real gaps.
    """
    best: tuple[str, list[str], list[str]] | None = None
    for encoding in dict.fromkeys((layout.encoding, "utf-8-sig")):
        try:
            text = header_line.decode(encoding).rstrip("\r\n")
        except (UnicodeDecodeError, LookupError):
            continue
        try:
            headers = [h.strip() for h in next(csv.reader([text], delimiter=layout.delimiter))]
        except (csv.Error, StopIteration):
            continue
        present = set(headers)
        missing = [f for f in LOADED_FIELDS if layout.headers.get(f) not in present]
        if not missing:
            return encoding, headers, []
        if best is None or len(missing) < len(best[2]):
            best = (encoding, headers, missing)
    return best


def _missing_message(missing: list[str], layout: ExportLayout) -> str:
    """Ops-readable list of missing columns, e.g. 'column 手机号 (mobile) is missing'."""
    named = [f"{layout.headers.get(f, f)} ({f})" for f in missing]
    if len(named) == 1:
        return f"column {named[0]} is missing"
    return f"columns {', '.join(named)} are missing"


def _truncation_point(path: Path, encoding: str, n_fields: int, delimiter: str) -> int | None:
    """Byte offset to read up to when the last line was cut off, else None.

    A complete file ends with a newline; one without it is truncated when its last line
    does not decode or has the wrong number of fields.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - _CHUNK))
        tail = f.read()
    if not tail or tail.endswith(b"\n"):
        return None
    newline = tail.rfind(b"\n")
    if newline < 0 and size <= _CHUNK:
        return None  # a single line: the header alone, reported as "not_empty"
    start = size - len(tail) + newline + 1
    last = tail[newline + 1 :]
    try:
        fields = next(csv.reader([last.decode(encoding)], delimiter=delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return start
    return None if len(fields) == n_fields else start


def _read_parquet(path: Path) -> tuple[pa.Table | None, list[LoadProblem]]:
    """Read the loaded fields of a Parquet export (English field names)."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        return None, [LoadProblem("encoding", "the file is not a readable Parquet file")]
    names = parquet.schema_arrow.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return None, [
            LoadProblem(
                "header_unique",
                f"column(s) {', '.join(twice)} are named twice in the Parquet export: siyu "
                "cannot tell which copy is meant",
            )
        ]
    present = set(names)
    missing = [f for f in LOADED_FIELDS if f not in present]
    if missing:
        names = ", ".join(missing)
        return None, [
            LoadProblem(
                "columns_present",
                f"column(s) {names} missing from the Parquet export",
            )
        ]
    try:
        return parquet.read(columns=list(LOADED_FIELDS)), []
    except (pa.ArrowException, OSError):
        return None, [LoadProblem("encoding", "the Parquet file's data cannot be read")]


def _typed_frame(table: pa.Table, timezone: str = "Asia/Shanghai") -> pd.DataFrame:
    """Cast text columns to their kinds with pyarrow.compute, then convert to pandas once."""
    columns: dict[str, pa.ChunkedArray] = {}
    bad: dict[str, pa.ChunkedArray] = {}
    for column in LOADED_COLUMNS:
        values = table.column(column.field)
        if column.field == "customer_id":
            trimmed = pc.utf8_trim_whitespace(_as_text(values))
            columns[column.field] = pc.if_else(pc.equal(trimmed, ""), None, trimmed)
        elif column.kind in ("mobile", "branch", "class"):
            # Missing is "", not null: GX ignores nulls, and an empty mobile must fail its format.
            columns[column.field] = pc.fill_null(_decoded(values), "")
        elif column.kind == "decimal":
            columns[column.field], bad[column.field] = _parse_decimal(values)
        elif column.kind == "flag":
            columns[column.field], bad[column.field] = _parse_flag(values)
        elif column.kind == "date":
            columns[column.field], bad[column.field] = _parse_date(values, timezone)
        else:
            columns[column.field] = _as_text(values)
    typed = pa.table(columns)
    frame = typed.to_pandas(types_mapper=_pandas_type, split_blocks=True, self_destruct=True)
    for name in PARSED_FIELDS:
        frame[f"_bad_{name}"] = bad[name].to_numpy()
    return frame


def _pandas_type(arrow_type: pa.DataType) -> object:
    """Flags become pandas' nullable boolean (NA where unparsable)."""
    if arrow_type == pa.bool_():
        return pd.BooleanDtype()
    return None


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings, whatever type a Parquet writer gave it."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    return pc.cast(values, pa.string())


def _parse_decimal(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """float64 (null where unparsable) and the mask of non-empty values that did not parse."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numbers = pc.cast(values, pa.float64())
    else:
        text = _as_text(values)
        try:
            numbers = pc.cast(text, pa.float64())  # the fast path: every value is clean
        except pa.ArrowInvalid:
            trimmed = pc.utf8_trim_whitespace(text)
            clean = pc.match_substring_regex(trimmed, _DECIMAL_PATTERN)
            numbers = pc.cast(pc.if_else(clean, trimmed, None), pa.float64())
    # "nan" and "inf" cast fine but are not amounts.
    finite = pc.fill_null(pc.is_finite(numbers), False)
    numbers = pc.if_else(finite, numbers, None)
    return numbers, pc.and_(pc.is_valid(values), pc.invert(finite))


def _parse_flag(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Boolean from 是/否, Y/N, 1/0 (null where unparsable), and the unparsable mask."""
    if pa.types.is_boolean(values.type):
        return values, _nothing_bad(values)

    def truth(words: pa.Array) -> pa.Array:
        return pc.if_else(
            pc.is_in(words, value_set=_FLAG_TRUE),
            True,
            pc.if_else(pc.is_in(words, value_set=_FLAG_FALSE), False, None),
        )

    flags = _map_distinct(values, truth, pa.bool_())
    return flags, pc.and_(pc.is_valid(values), pc.is_null(flags))


def _parse_date(
    values: pa.ChunkedArray, timezone: str = "Asia/Shanghai"
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """timestamp[s] from YYYYMMDD or YYYY-MM-DD (null where unparsable), and the mask.

    A typed (Parquet) timestamp is a day: one that carries a time zone is read as the day
    it is in the business time zone (midnight in Shanghai is 16:00 the day before in UTC).
    """
    if pa.types.is_date(values.type):
        return pc.cast(values, pa.timestamp("s")), _nothing_bad(values)
    if pa.types.is_timestamp(values.type):
        if values.type.tz is not None:
            in_business_zone = pc.cast(values, pa.timestamp(values.type.unit, tz=timezone))
            values = pc.local_timestamp(in_business_zone)
        days = pc.floor_temporal(values, unit="day")
        return pc.cast(days, pa.timestamp("s")), _nothing_bad(values)

    def parse(words: pa.Array) -> pa.Array:
        candidates = [
            pc.strptime(words, format=fmt, unit="s", error_is_null=True) for fmt in DATE_FORMATS
        ]
        return pc.coalesce(*candidates)

    dates = _map_distinct(values, parse, pa.timestamp("s"))
    return dates, pc.and_(pc.is_valid(values), pc.is_null(dates))


def _map_distinct(
    values: pa.ChunkedArray, convert: Callable[[pa.Array], pa.Array], to: pa.DataType
) -> pa.ChunkedArray:
    """Apply `convert` to each distinct (trimmed) text once and spread the result to every row.

    Flags and dates repeat (a handful of flag words, one export date, a few thousand
    opening dates), so this parses thousands of texts instead of millions.
    """
    mapped = []
    for chunk in _dictionary(values).chunks:
        converted = convert(pc.utf8_trim_whitespace(chunk.dictionary))
        mapped.append(pc.take(converted, chunk.indices))
    return pa.chunked_array(mapped, type=to)


def _dictionary(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column dictionary-encoded (the CSV reader already delivers it so)."""
    if pa.types.is_dictionary(values.type):
        return values
    return pc.dictionary_encode(_as_text(values))


def _decoded(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Plain strings from a possibly dictionary-encoded column."""
    if pa.types.is_dictionary(values.type):
        return pa.chunked_array(
            [pc.take(c.dictionary, c.indices) for c in values.chunks], type=pa.string()
        )
    return _as_text(values)


def _nothing_bad(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """An all-False parse-failure mask for a column that arrived already typed."""
    return pc.is_null(pc.is_valid(values))


def _empty_frame() -> pd.DataFrame:
    """The typed frame's columns with no rows, for files too broken to read."""
    frame = pd.DataFrame({f: pd.Series(dtype="str") for f in LOADED_FIELDS})
    for column in LOADED_COLUMNS:
        if column.kind == "decimal":
            frame[column.field] = pd.Series(dtype="float64")
        elif column.kind == "flag":
            frame[column.field] = pd.Series(dtype="boolean")
        elif column.kind == "date":
            frame[column.field] = pd.Series(dtype="datetime64[s]")
    for name in PARSED_FIELDS:
        frame[f"_bad_{name}"] = pd.Series(dtype=bool)
    return frame
