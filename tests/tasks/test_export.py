"""Tests for finding and loading the core-banking export into a typed frame."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from siyu.sandbox.export_files import write_export
from siyu.schemas.export import EXPORT_COLUMNS, FLAG_FIELDS, ExportLayout
from siyu.tasks import export as export_module
from siyu.tasks.export import (
    ExportRefused,
    completeness_problem,
    file_checksum,
    load_export,
    newest_export,
    resolve_export_path,
)
from tests.bad_exports import bad_export_corpus, good_frame

EXPORT_DATE = date(2026, 11, 24)


def _public(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not c.startswith("_")]]


@pytest.fixture
def text_frame() -> pd.DataFrame:
    frame = good_frame(60, export_date=EXPORT_DATE)
    # Every way the bank writes flags and dates, and ids padded with spaces.
    frame.loc[0:9, "payroll"] = ["是", "否", "Y", "N", "1", "0", "y", "n", "true", "FALSE"]
    frame.loc[0:1, "opened_on"] = ["2019-03-05", "20190305"]
    frame.loc[2, "customer_id"] = "  C0000000042 "
    return frame


@pytest.mark.parametrize("fmt", ["csv-gbk", "csv-utf8", "csv-utf8-bom", "parquet"])
def test_every_format_loads_the_same_typed_frame(tmp_path, text_frame, fmt):
    reference = load_export(write_export(text_frame, tmp_path / "ref" / "core_export_1.csv"))
    suffix = "parquet" if fmt == "parquet" else "csv"
    loaded = load_export(write_export(text_frame, tmp_path / f"core_export_1.{suffix}", fmt))

    assert loaded.problems == []
    assert loaded.row_count == 60
    pd.testing.assert_frame_equal(loaded.frame, reference.frame)


def test_values_are_typed(tmp_path, text_frame):
    loaded = load_export(write_export(text_frame, tmp_path / "core_export_20261124.csv"))
    frame = loaded.frame

    assert "name" not in frame.columns
    assert frame.loc[2, "customer_id"] == "C0000000042"
    assert frame["payroll"].dtype == "boolean"
    assert frame.loc[0:9, "payroll"].tolist() == [True, False] * 5
    assert frame.loc[0, "opened_on"] == pd.Timestamp("2019-03-05")
    assert frame.loc[1, "opened_on"] == pd.Timestamp("2019-03-05")
    assert (frame["export_date"] == pd.Timestamp(EXPORT_DATE)).all()
    assert frame["aum"].dtype == np.float64
    assert frame.loc[0, "aum"] == float(text_frame.loc[0, "aum"])
    assert frame["mobile"].tolist() == text_frame["mobile"].tolist()
    for flag in FLAG_FIELDS:
        assert frame[flag].notna().all()


def test_name_never_reaches_the_frame(tmp_path):
    text = good_frame(20)
    loaded = load_export(write_export(text, tmp_path / "core_export_1.csv"))
    cells = set(loaded.frame.astype(str).to_numpy().ravel())
    assert not cells & set(text["name"])


def test_unparsable_values_become_missing_and_are_flagged(tmp_path):
    text = good_frame(10)
    text.loc[1, "aum"] = "abc"
    text.loc[2, "aum"] = ""
    text.loc[3, "holds_fund"] = "maybe"
    text.loc[4, "opened_on"] = "2019/03/05"
    text.loc[5, "aum_peak"] = "nan"
    frame = load_export(write_export(text, tmp_path / "core_export_1.csv")).frame

    assert np.isnan(frame.loc[1, "aum"]) and bool(frame.loc[1, "_bad_aum"])
    assert np.isnan(frame.loc[2, "aum"]) and not frame.loc[2, "_bad_aum"]  # empty is not bad
    assert pd.isna(frame.loc[3, "holds_fund"]) and frame.loc[3, "_bad_holds_fund"]
    assert pd.isna(frame.loc[4, "opened_on"]) and frame.loc[4, "_bad_opened_on"]
    assert np.isnan(frame.loc[5, "aum_peak"]) and frame.loc[5, "_bad_aum_peak"]
    assert frame["_bad_aum"].sum() == 1


def test_corpus_problems_are_reported_not_raised(tmp_path):
    files = bad_export_corpus(tmp_path, export_date=EXPORT_DATE)

    assert [p.check for p in load_export(files["wrong_encoding"]).problems] == ["encoding"]
    missing = load_export(files["missing_column"]).problems
    assert [p.check for p in missing] == ["columns_present"]
    assert "手机号 (mobile)" in missing[0].message
    truncated = load_export(files["truncated"])
    assert [p.check for p in truncated.problems] == ["not_truncated"]
    assert truncated.row_count == 999  # the complete rows are still read
    header_only = load_export(files["header_only"])
    assert [p.check for p in header_only.problems] == ["not_empty"]
    assert header_only.row_count == 0


def test_complete_file_without_trailing_newline_is_not_truncated(tmp_path):
    path = write_export(good_frame(5), tmp_path / "core_export_1.csv")
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))
    loaded = load_export(path)
    assert loaded.problems == []
    assert loaded.row_count == 5


def test_malformed_row_does_not_leak_its_values(tmp_path):
    text = good_frame(5)
    path = write_export(text, tmp_path / "core_export_1.csv")
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2] + b",extra,fields"
    path.write_bytes(b"\n".join(lines))
    loaded = load_export(path)
    assert [p.check for p in loaded.problems] == ["types_parse"]
    assert text.loc[1, "mobile"] not in loaded.problems[0].message


def test_checksum_and_newest_export(tmp_path):
    assert newest_export(tmp_path / "absent") is None
    assert newest_export(tmp_path) is None
    old = write_export(good_frame(3), tmp_path / "core_export_20261123.csv")
    new = write_export(good_frame(3), tmp_path / "core_export_20261124.parquet", "parquet")
    (tmp_path / "other_20261130.csv").write_text("x")
    os.utime(old, (2_000_000_000, 2_000_000_000))  # a later touch does not make it newer

    assert newest_export(tmp_path) == new
    assert file_checksum(old) == file_checksum(Path(old))
    assert len(file_checksum(old)) == 64
    assert file_checksum(old) != file_checksum(new)


def _messy(frame: pd.DataFrame) -> pd.DataFrame:
    """Values the fast typed read cannot take as written: each must still load the same."""
    frame = frame.copy()
    frame.loc[3, "payroll"] = " 是"
    frame.loc[4, "aum"] = "abc"
    frame.loc[5, "opened_on"] = "2019/03/05"
    frame.loc[6, "mobile"] = "１３８００１３８０００"
    frame.loc[7, "customer_class"] = "其他"
    return frame


@pytest.mark.parametrize("messy", [False, True])
def test_gbk_read_on_bytes_equals_decoding_first(tmp_path, text_frame, messy):
    """GBK split on raw bytes loads what a decode-then-parse read ("|" forces one) loads."""
    text = _messy(text_frame) if messy else text_frame
    fast = load_export(write_export(text, tmp_path / "fast" / "core_export_1.csv"))
    piped = tmp_path / "piped" / "core_export_1.csv"
    piped.parent.mkdir()
    headers = {c.field: c.header for c in EXPORT_COLUMNS}
    text.rename(columns=headers).to_csv(piped, index=False, sep="|", encoding="gbk")
    decoded = load_export(piped, ExportLayout(delimiter="|"))
    utf8 = load_export(write_export(text, tmp_path / "utf8" / "core_export_1.csv", "csv-utf8"))

    assert fast.problems == decoded.problems == []
    pd.testing.assert_frame_equal(fast.frame, decoded.frame)
    pd.testing.assert_frame_equal(fast.frame, utf8.frame)
    assert fast.frame.loc[6, "mobile"] == text.loc[6, "mobile"]
    assert bool(fast.frame["_bad_aum"].any()) == messy


@pytest.mark.parametrize(
    "column, bad",
    [
        ("name", b"\x81\x7f"),  # a column siyu never reads still has to be GBK text
        ("customer_class", b"\x81\x7f"),
        ("mobile", b"\xff"),
        ("name", None),  # a name ending inside a character (its lead byte before the comma)
    ],
)
def test_invalid_gbk_anywhere_is_an_encoding_problem(tmp_path, column, bad):
    text = good_frame(30)
    path = write_export(text, tmp_path / "core_export_1.csv")
    original = str(text.loc[5, column]).encode("gbk")
    data = path.read_bytes()
    replacement = original + b"\x81" if bad is None else bad
    at = data.index(b"\n" + text.loc[5, "customer_id"].encode())
    path.write_bytes(data[:at] + data[at:].replace(original, replacement, 1))

    loaded = load_export(path)
    assert [p.check for p in loaded.problems] == ["encoding"]
    assert loaded.row_count == 0


# Only files inside the landing directory are read (issue 11.10).


@pytest.fixture
def landing(tmp_path) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    return landing


@pytest.mark.parametrize(
    "name", ["/etc/shadow", "../../../../etc/shadow", "/proc/self/environ", "link", "../x.csv"]
)
def test_files_outside_the_landing_directory_are_refused_unread(landing, monkeypatch, name):
    (landing / "link").symlink_to("/etc/passwd")
    (landing.parent / "x.csv").write_text("outside")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k)
    )
    with pytest.raises(ExportRefused, match="outside the landing directory"):
        resolve_export_path(landing, name)
    assert opened == []


def test_a_relative_name_resolves_inside_the_landing_directory(landing, tmp_path, monkeypatch):
    path = write_export(good_frame(3), landing / "core_export_20261124.csv")
    monkeypatch.chdir(tmp_path)  # not the worker's directory
    assert resolve_export_path(landing, "core_export_20261124.csv") == path.resolve()
    assert resolve_export_path(landing, str(path)) == path.resolve()


def test_a_directory_a_fifo_and_a_missing_file_each_get_their_own_reason(landing):
    (landing / "folder").mkdir()
    os.mkfifo(landing / "pipe.csv")
    with pytest.raises(ExportRefused, match="is a directory"):
        resolve_export_path(landing, "folder")
    with pytest.raises(ExportRefused, match="not a regular file"):
        resolve_export_path(landing, "pipe.csv")  # never opened: opening a FIFO would block
    with pytest.raises(ExportRefused, match="does not exist"):
        resolve_export_path(landing, "absent.csv")


# A file still being written is never accepted (issue 11.2).


def test_a_file_that_grows_during_the_stable_wait_is_not_complete(tmp_path):
    path = write_export(good_frame(20), tmp_path / "core_export_1.csv")
    waited: list[float] = []

    def sleep_while_the_writer_appends(seconds: float) -> None:
        waited.append(seconds)
        with path.open("ab") as f:
            f.write(b"C0000009999,more rows")

    problem = completeness_problem(
        path,
        "stable_size",
        2.0,
        sleep=sleep_while_the_writer_appends,
        clock=lambda: path.stat().st_mtime,  # written just now
    )
    assert waited == [2.0]
    assert problem is not None and problem.check == "file_complete"
    assert "still being written" in problem.message


def test_a_file_untouched_for_the_wait_is_complete_without_waiting(tmp_path):
    path = write_export(good_frame(20), tmp_path / "core_export_1.csv")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert completeness_problem(path, "stable_size", 5.0, sleep=pytest.fail) is None


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    path = write_export(good_frame(50), tmp_path / "core_export_1.csv")
    real = export_module._read_csv

    def read_while_appending(p, layout):
        result = real(p, layout)
        with path.open("ab") as f:
            f.write(b"C0000009999,late row\n")
        return result

    monkeypatch.setattr(export_module, "_read_csv", read_while_appending)
    loaded = load_export(path)
    assert [p.check for p in loaded.problems] == ["file_complete"]
    assert "changed while it was read" in loaded.problems[0].message
    assert loaded.row_count == 0


@pytest.mark.parametrize("suffix", [".csv.done", ".ok"])
def test_marker_mode_reads_only_a_marked_file(tmp_path, suffix):
    path = write_export(good_frame(5), tmp_path / "core_export_1.csv")
    unmarked = load_export(path, completeness="marker")
    assert [p.check for p in unmarked.problems] == ["file_complete"]
    assert unmarked.checksum == ""  # not even hashed
    (tmp_path / f"core_export_1{suffix}").write_text("")
    assert load_export(path, completeness="marker").problems == []


def test_a_control_total_must_match_the_rows_read(tmp_path):
    path = write_export(good_frame(30), tmp_path / "core_export_1.csv")
    marker = tmp_path / "core_export_1.csv.done"
    marker.write_text("rows=40\n")
    short = load_export(path, completeness="control_total")
    assert [p.check for p in short.problems] == ["file_complete"]
    assert "30 rows" in short.problems[0].message and "40 rows" in short.problems[0].message
    marker.write_text("30")
    assert load_export(path, completeness="control_total").problems == []


# Exports that look whole but are not, and reasons that say what is wrong (11.1, 11.16).


def test_a_column_named_twice_is_an_ambiguous_header(tmp_path):
    files = bad_export_corpus(tmp_path, export_date=EXPORT_DATE)
    problems = load_export(files["duplicate_header"]).problems
    assert [p.check for p in problems] == ["header_unique"]
    assert "当前资产 (aum) is named twice" in problems[0].message


def test_a_parquet_column_named_twice_is_an_ambiguous_header(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(good_frame(5), preserve_index=False)
    table = table.append_column("aum", pa.array(["0"] * 5))
    pq.write_table(table, tmp_path / "core_export_1.parquet")
    problems = load_export(tmp_path / "core_export_1.parquet").problems
    assert [p.check for p in problems] == ["header_unique"]


def test_a_utf8_header_over_a_gbk_body_is_an_encoding_problem(tmp_path):
    files = bad_export_corpus(tmp_path, export_date=EXPORT_DATE)
    problems = load_export(files["mixed_encoding"]).problems
    assert [p.check for p in problems] == ["encoding"]
    assert "mixes encodings" in problems[0].message
    assert "quoting" not in problems[0].message


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "core_export_1.csv"
    path.write_bytes(b"")
    problems = load_export(path).problems
    assert [(p.check, p.message) for p in problems] == [
        ("not_empty", "the file is empty (0 bytes)")
    ]


@pytest.mark.parametrize("fmt", ["csv-gbk", "csv-utf8"])
def test_a_10_mb_field_is_read_alike_in_gbk_and_utf8(tmp_path, fmt):
    text = good_frame(20)
    text.loc[7, "name"] = "王" * 5_000_000  # 10 MB in GBK, 15 MB in UTF-8
    loaded = load_export(write_export(text, tmp_path / "core_export_1.csv", fmt))
    assert loaded.problems == []
    assert loaded.row_count == 20


def test_a_time_zone_aware_parquet_date_is_the_business_day(tmp_path):
    text = good_frame(4)
    frame = text.copy()
    midnight = pd.Timestamp("2026-11-24", tz="Asia/Shanghai")
    frame["export_date"] = pd.Series([midnight] * 4).dt.tz_convert("UTC")
    frame["opened_on"] = pd.Series([pd.Timestamp("2019-03-05 08:30", tz="Asia/Shanghai")] * 4)
    loaded = load_export(write_export(frame, tmp_path / "core_export_1.parquet", "parquet"))
    assert loaded.problems == []
    assert (loaded.frame["export_date"] == pd.Timestamp(EXPORT_DATE)).all()
    assert (loaded.frame["opened_on"] == pd.Timestamp("2019-03-05")).all()
