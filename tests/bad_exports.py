"""Build valid and deliberately broken core-banking export files for the quality-gate tests."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from siyu.sandbox.export_files import write_export
from siyu.schemas.export import DEFAULT_BRANCHES, EXPORT_COLUMNS, FIELDS, FLAG_FIELDS

DEFAULT_EXPORT_DATE = date(2026, 11, 24)

_SURNAMES = np.array(list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"))
_GIVEN = np.array(
    ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰"]
)
# The bank writes flags in several styles; a valid file may mix them column by column.
_FLAG_STYLES = (("是", "否"), ("Y", "N"), ("1", "0"))


# The checks each corpus case must fail, and nothing else.
CORPUS_EXPECTED_FAILURES: dict[str, set[str]] = {
    "wrong_encoding": {"encoding"},
    "missing_column": {"columns_present"},
    "duplicate_ids": {"customer_id_unique"},
    "stale_date": {"export_date_expected"},
    "volume_drop": {"row_count_stable"},
    "truncated": {"not_truncated"},
    "header_only": {"not_empty"},
    "negative_aum_2pct": {"aum_non_negative", "quarantine_share"},
    "type_garbage": {"types_parse"},
    "quarantine_small": {"mobile_format"},
    # Exports that look whole but are not (each judged against the base export's profile).
    "duplicate_header": {"header_unique"},
    "empty_aum": {"required_values"},
    "empty_flags": {"required_values"},
    "flags_all_no": {"distribution_stable"},
    "aum_all_zero": {"distribution_stable"},
    "aum_implausible": {"distribution_stable"},
    # Misleading reasons, now named for what they are.
    "mixed_encoding": {"encoding"},
    "empty_file": {"not_empty"},
}
CORPUS_ROWS = 1000
# previous_row_count each corpus case assumes: the last accepted export's size.
CORPUS_PREVIOUS_ROW_COUNT: dict[str, int | None] = {
    name: CORPUS_ROWS for name in CORPUS_EXPECTED_FAILURES
} | {"volume_drop": 2 * CORPUS_ROWS, "header_only": None, "empty_file": None}
# Rows each row-level case breaks (0-based positions).
NEGATIVE_AUM_ROWS = list(range(0, CORPUS_ROWS, 50))  # 20 rows: 2 %
BAD_MOBILE_ROWS = [3, 250, 500, 750, 999]  # 5 rows: 0.5 %
BAD_MOBILES = ["1380013800", "23800138000", "", "138-0013-800", "1380013800x"]
DUPLICATED_ROWS = [(0, 1), (10, 11), (20, 21)]  # (original, copy)
GARBAGE_AUM_ROWS = [7, 70, 700]


def good_frame(
    n: int = 200, export_date: date = DEFAULT_EXPORT_DATE, seed: int = 1
) -> pd.DataFrame:
    """A valid export as text, columns named by field, values written the way the bank writes them.

    Vectorised so that it also builds the million-row files the benchmarks need.
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    ids = pd.Series(idx + 1 + seed * 10_000_000).astype(str).str.zfill(10)
    # Distinct mobiles: a fixed prefix block per seed plus the row number, so tests can grep them.
    mobiles = pd.Series(13_800_000_000 + seed * 1_000_000 + idx).astype(str)
    names = pd.Series(_SURNAMES[rng.integers(0, len(_SURNAMES), n)]) + pd.Series(
        _GIVEN[rng.integers(0, len(_GIVEN), n)]
    )
    aum = rng.gamma(1.2, 60_000.0, n).round(2)
    peak = (aum * rng.uniform(1.0, 2.0, n)).round(2)
    opened = pd.Timestamp("2005-01-01") + pd.to_timedelta(rng.integers(0, 7000, n), unit="D")
    frame = pd.DataFrame(
        {
            "customer_id": "C" + ids,
            "name": names,
            "mobile": mobiles,
            "branch_code": np.array(DEFAULT_BRANCHES)[rng.integers(0, len(DEFAULT_BRANCHES), n)],
            "customer_class": np.where(rng.random(n) < 0.7, "直营", "代工"),
            "aum": pd.Series(aum).map("{:.2f}".format),
            "aum_peak": pd.Series(peak).map("{:.2f}".format),
        }
    )
    for i, flag in enumerate(FLAG_FIELDS):
        yes, no = _FLAG_STYLES[i % len(_FLAG_STYLES)]
        frame[flag] = np.where(rng.random(n) < 0.3, yes, no)
    frame["opened_on"] = opened.strftime("%Y%m%d")
    frame["export_date"] = export_date.strftime("%Y-%m-%d" if seed % 2 == 0 else "%Y%m%d")
    return frame[list(FIELDS)]


def bad_export_corpus(
    out_dir: Path, *, export_date: date, base: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write one broken export per failure the gate must catch; name -> file.

    Each case has CORPUS_ROWS rows (before breaking) and assumes the previous_row_count in
    CORPUS_PREVIOUS_ROW_COUNT; CORPUS_EXPECTED_FAILURES names the checks it must fail.
    With `base` (a valid export frame, e.g. one whose customers are WeCom contacts), every case
    breaks a copy of it instead, and assumes the previous accepted export had len(base) rows
    (volume_drop then keeps half the rows).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = export_date.strftime("%Y%m%d")

    def good() -> pd.DataFrame:
        if base is not None:
            return base.copy().reset_index(drop=True)
        return good_frame(CORPUS_ROWS, export_date=export_date, seed=3)

    n = len(good())

    def path(name: str) -> Path:
        return out_dir / name / f"core_export_{stamp}.csv"

    files: dict[str, Path] = {}
    target = path("wrong_encoding")
    target.parent.mkdir(parents=True, exist_ok=True)
    headers = {c.field: c.header for c in EXPORT_COLUMNS}
    good().rename(columns=headers).to_csv(target, index=False, encoding="utf-16")
    files["wrong_encoding"] = target

    files["missing_column"] = write_export(good().drop(columns=["mobile"]), path("missing_column"))

    frame = good()
    for original, copy in DUPLICATED_ROWS:
        frame.loc[copy, "customer_id"] = frame.loc[original, "customer_id"]
    files["duplicate_ids"] = write_export(frame, path("duplicate_ids"))

    stale = good()
    stale["export_date"] = (export_date - timedelta(days=1)).strftime("%Y%m%d")
    files["stale_date"] = write_export(stale, path("stale_date"))

    dropped = good() if base is None else good().iloc[: n // 2]
    files["volume_drop"] = write_export(dropped, path("volume_drop"))

    target = write_export(good(), path("truncated"))
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 40])  # cut mid-row, as a copy interrupted would
    files["truncated"] = target

    files["header_only"] = write_export(good().iloc[0:0], path("header_only"))

    frame = good()
    frame.loc[list(range(0, n, 50)), "aum"] = "-100.00"  # 2 % of rows
    files["negative_aum_2pct"] = write_export(frame, path("negative_aum_2pct"))

    frame = good()
    frame.loc[[r % n for r in GARBAGE_AUM_ROWS], "aum"] = ["abc", "12,3x", "N/A"]
    files["type_garbage"] = write_export(frame, path("type_garbage"))

    frame = good()
    frame.loc[[r % n for r in BAD_MOBILE_ROWS], "mobile"] = BAD_MOBILES
    files["quarantine_small"] = write_export(frame, path("quarantine_small"))

    # The first 当前资产 is a wrong copy (all zero), the second the real one.
    frame = good()
    frame.insert(frame.columns.get_loc("aum"), "aum_copy", "0.00")
    target = path("duplicate_header")
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.rename(columns=headers | {"aum_copy": headers["aum"]}).to_csv(
        target, index=False, encoding="gbk"
    )
    files["duplicate_header"] = target

    frame = good()
    frame["aum"] = ""
    files["empty_aum"] = write_export(frame, path("empty_aum"))

    frame = good()
    frame[list(FLAG_FIELDS)] = ""
    files["empty_flags"] = write_export(frame, path("empty_flags"))

    frame = good()
    frame[list(FLAG_FIELDS)] = "否"
    files["flags_all_no"] = write_export(frame, path("flags_all_no"))

    frame = good()
    frame["aum"] = "0.00"
    files["aum_all_zero"] = write_export(frame, path("aum_all_zero"))

    frame = good()
    frame.loc[[0, n // 2], "aum"] = "98765432109876.00"  # fen read as yuan, or worse
    files["aum_implausible"] = write_export(frame, path("aum_implausible"))

    # A UTF-8 header over a GBK body: a file glued together from two tools.
    target = write_export(good(), path("mixed_encoding"))
    header, _, body = target.read_bytes().partition(b"\n")
    target.write_bytes(header.decode("gbk").encode("utf-8") + b"\n" + body)
    files["mixed_encoding"] = target

    target = path("empty_file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"")
    files["empty_file"] = target
    return files
