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
from siyu.tasks.export import file_checksum, load_export, newest_export
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
