"""Tests for the sample generator: the export's contract, realistic shares, the seed's format."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from siyu.sandbox.sample import (
    CHANNEL_STATES,
    INTENT_GROUP_NAME,
    INTENT_TAG_NAMES,
    SEED_DIR_NAME,
    SampleResult,
    SampleSpec,
    customer_frame,
    generate,
)
from siyu.schemas.export import (
    DEFAULT_BRANCHES,
    EXPORT_COLUMNS,
    FIELDS,
    FLAG_FIELDS,
    MOBILE_PATTERN,
)

EXPORT_DATE = date(2026, 11, 24)
HEADERS = [c.header for c in EXPORT_COLUMNS]
FIELD_OF_HEADER = {c.header: c.field for c in EXPORT_COLUMNS}
SEED_FILES = {
    "employees.parquet",
    "follows.parquet",
    "tag_groups.parquet",
    "groups.parquet",
    "group_members.parquet",
}
STR = pa.string()
INT = pa.int64()
STR_LIST = pa.list_(pa.string())
SEED_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "employees.parquet": [("userid", STR), ("name", STR)],
    "follows.parquet": [
        ("external_userid", STR),
        ("name", STR),
        ("type", INT),
        ("gender", INT),
        ("unionid", STR),
        ("userid", STR),
        ("remark", STR),
        ("description", STR),
        ("createtime", INT),
        ("remark_mobiles", STR_LIST),
        ("add_way", INT),
        ("state", STR),
        ("tag_ids", STR_LIST),
    ],
    "tag_groups.parquet": [
        ("group_id", STR),
        ("group_name", STR),
        ("group_order", INT),
        ("tag_id", STR),
        ("tag_name", STR),
        ("tag_order", INT),
    ],
    "groups.parquet": [
        ("chat_id", STR),
        ("name", STR),
        ("owner", STR),
        ("create_time", INT),
        ("notice", STR),
    ],
    "group_members.parquet": [
        ("chat_id", STR),
        ("userid", STR),
        ("type", INT),
        ("join_time", INT),
        ("join_scene", INT),
        ("invitor", STR),
    ],
}

# Big enough for shares to settle (and for a few millionaires), small enough to stay quick.
BIG = SampleSpec(customers=20_000, export_date=EXPORT_DATE)


def read_export(path: Path, encoding: str = "gbk") -> pd.DataFrame:
    """Read a CSV export back as the bank wrote it: every value text, headers renamed to fields."""
    frame = pd.read_csv(path, encoding=encoding, dtype=str, keep_default_na=False)
    assert list(frame.columns) == HEADERS
    return frame.rename(columns=FIELD_OF_HEADER)


def read_seed(seed_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pq.read_table(seed_dir / name).to_pandas() for name in SEED_FILES}


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[SampleResult, pd.DataFrame, dict[str, pd.DataFrame]]:
    """One 20,000-customer sample (GBK CSV), read back, shared by the module's tests."""
    result = generate(BIG, tmp_path_factory.mktemp("sample-big"))
    return result, read_export(result.export_path), read_seed(result.seed_dir)


def test_export_is_gbk_with_the_contracts_headers_and_name(big):
    result, export, _ = big
    assert result.export_path.name == "core_export_20261124.csv"
    assert result.export_path.parent == result.seed_dir.parent
    assert result.seed_dir.name == SEED_DIR_NAME
    assert {p.name for p in result.seed_dir.iterdir()} == SEED_FILES
    first_line = result.export_path.read_bytes().split(b"\n", 1)[0]
    assert first_line.decode("gbk") == ",".join(HEADERS)
    with pytest.raises(UnicodeDecodeError):
        first_line.decode("utf-8")
    assert len(export) == result.customers == BIG.customers


def test_export_round_trips_to_customer_frame(big):
    _, export, _ = big
    frame = customer_frame(BIG)
    assert list(frame.columns) == list(FIELDS)
    pd.testing.assert_frame_equal(
        export.astype(object), frame.astype(object), check_dtype=False, check_column_type=False
    )


def test_ids_and_mobiles_are_well_formed_and_unique(big):
    _, export, _ = big
    assert export["customer_id"].str.fullmatch(r"C\d{10}").all()
    assert export["customer_id"].is_unique
    assert export["mobile"].str.fullmatch(MOBILE_PATTERN).all()
    assert export["mobile"].is_unique
    assert export["name"].str.fullmatch(r"[\u4e00-\u9fff]{2,4}").all()
    assert export["name"].nunique() > len(export) // 4  # not a handful of names repeated


def test_codes_flags_and_dates_use_the_contracts_spellings(big):
    _, export, _ = big
    assert set(export["branch_code"]) == set(DEFAULT_BRANCHES)
    assert set(export["customer_class"]) == {"直营", "代工"}
    for field in FLAG_FIELDS:
        assert set(export[field]) == {"是", "否"}, field
    assert (export["export_date"] == "20261124").all()
    opened = pd.to_datetime(export["opened_on"], format="%Y%m%d")
    assert opened.max() < pd.Timestamp(EXPORT_DATE)
    assert opened.min() >= pd.Timestamp(EXPORT_DATE - timedelta(days=20 * 366))
    assert opened.min() < pd.Timestamp(EXPORT_DATE - timedelta(days=18 * 365))


def test_shares_look_like_the_reported_bank(big):
    _, export, _ = big

    def share(field: str, value: str = "是") -> float:
        return float((export[field] == value).mean())

    assert 0.65 <= share("customer_class", "直营") <= 0.75
    assert 0.25 <= share("payroll") <= 0.35
    assert 0.21 <= share("holds_wealth") <= 0.29
    assert 0.12 <= share("holds_fund") <= 0.18
    assert 0.08 <= share("holds_insurance") <= 0.12
    assert 0.10 <= share("holds_loan") <= 0.14
    assert 0.36 <= share("holds_credit_card") <= 0.44
    branch_counts = export["branch_code"].value_counts()
    assert branch_counts.min() > len(export) / len(DEFAULT_BRANCHES) / 5


def test_aum_is_heavy_tailed_with_two_decimals_and_peak_at_least_aum(big):
    _, export, _ = big
    for field in ("aum", "aum_peak"):
        assert export[field].str.fullmatch(r"\d+\.\d{2}").all(), field
    aum = export["aum"].astype(float)
    peak = export["aum_peak"].astype(float)
    assert (peak >= aum).all()
    assert 0.15 <= (aum == 0).mean() <= 0.20
    assert 0 < (aum > 1_000_000).sum() < 0.03 * len(aum)
    holders = aum[aum > 0]
    assert holders.mean() > 2 * holders.median()  # a long right tail
    # Nobody with zero assets holds an asset product.
    zero = aum == 0
    for field in ("holds_wealth", "holds_fund", "holds_insurance"):
        assert (export.loc[zero, field] == "否").all(), field


def test_default_contacts_and_kinds_of_contact(big):
    result, export, seed = big
    follows = seed["follows.parquet"]
    contacts = follows.drop_duplicates("external_userid")
    # Default: 60 % of 20,000 customers is below 10,000 per manager.
    assert len(contacts) == 12_000
    assert result.follows == len(follows)

    mobiles = contacts["remark_mobiles"].map(list)
    assert mobiles.map(len).isin([0, 1]).all()
    no_mobile = mobiles.map(len) == 0
    assert 0.02 <= no_mobile.mean() <= 0.04
    customer_mobiles = set(export["mobile"])
    first_mobile = mobiles[~no_mobile].map(lambda m: m[0])
    is_customer = first_mobile.isin(customer_mobiles)
    assert 0.04 <= (~is_customer).mean() <= 0.06
    assert first_mobile[~is_customer].str.fullmatch(MOBILE_PATTERN).all()
    # A bound customer is one contact: no two contacts carry the same customer's mobile.
    assert first_mobile.is_unique


def test_relations_two_managers_and_remark_mobiles(big):
    _, export, seed = big
    follows = seed["follows.parquet"]
    employees = seed["employees.parquet"]
    assert list(employees["userid"]) == ["mgr001", "mgr002", "mgr003", "mgr004", "mgr005"]
    assert employees["name"].str.fullmatch(r"[\u4e00-\u9fff]{2,4}").all()
    assert set(follows["userid"]) == set(employees["userid"])
    assert not follows.duplicated(["userid", "external_userid"]).any()
    assert follows["external_userid"].str.fullmatch(r"wm[A-Za-z0-9_-]{30}").all()
    assert follows["unionid"].str.fullmatch(r"o[A-Za-z0-9_-]{27}").all()

    relations = follows.groupby("external_userid")["userid"].nunique()
    assert set(relations.unique()) == {1, 2}
    two = relations[relations == 2].index
    bound = follows["remark_mobiles"].map(len) > 0
    n_bound_contacts = follows.loc[bound, "external_userid"].nunique()
    assert 0.02 <= len(two) / n_bound_contacts <= 0.04
    # Both of a two-manager contact's relations carry the customer's mobile.
    two_rows = follows[follows["external_userid"].isin(two)]
    two_mobiles = two_rows["remark_mobiles"].map(lambda m: m[0] if len(m) else None)
    assert two_mobiles.notna().all()
    assert two_mobiles.isin(set(export["mobile"])).all()
    assert (two_rows.groupby("external_userid")["remark_mobiles"].agg(lambda s: len(s)) == 2).all()
    # Every relation's fields are plausible.
    assert set(follows["type"]) == {1}
    assert set(follows["gender"]) <= {0, 1, 2}
    assert set(follows["state"]) - {""} == set(CHANNEL_STATES)
    assert (follows.loc[follows["state"] != "", "add_way"] == 1).all()
    day_start = int(datetime(2026, 11, 24, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    assert (follows["createtime"] < day_start).all()
    assert (follows["createtime"] > day_start - 3 * 365 * 86_400).all()
    # No customer's full name is used as a remark or a nickname.
    names = set(export["name"])
    assert not follows["remark"].isin(names).any()
    assert not follows["name"].isin(names).any()


def test_existing_intent_tags_are_on_about_a_tenth_of_relations(big):
    _, _, seed = big
    tag_groups = seed["tag_groups.parquet"]
    follows = seed["follows.parquet"]
    assert set(tag_groups["group_name"]) == {INTENT_GROUP_NAME}
    assert sorted(tag_groups["tag_name"]) == sorted(INTENT_TAG_NAMES)
    assert tag_groups["group_id"].nunique() == 1
    assert tag_groups["tag_id"].is_unique
    assert tag_groups["tag_id"].str.fullmatch(r"et[A-Za-z0-9_-]+").all()
    assert tag_groups["group_id"].str.fullmatch(r"et[A-Za-z0-9_-]+").all()
    tag_ids = follows["tag_ids"].map(list)
    assert tag_ids.map(len).isin([0, 1]).all()
    assert 0.08 <= (tag_ids.map(len) == 1).mean() <= 0.12
    used = {t for ids in tag_ids for t in ids}
    assert used == set(tag_groups["tag_id"])


def test_groups_are_owned_by_managers_and_filled_from_their_contacts(big):
    result, _, seed = big
    groups = seed["groups.parquet"]
    members = seed["group_members.parquet"]
    follows = seed["follows.parquet"]
    assert result.groups == len(groups) == BIG.groups
    assert result.members == len(members)
    assert groups["chat_id"].str.fullmatch(r"wr[A-Za-z0-9_-]{28}").all()
    assert groups["chat_id"].is_unique
    assert set(groups["owner"]) == {"mgr001", "mgr002", "mgr003", "mgr004", "mgr005"}
    assert set(members["chat_id"]) == set(groups["chat_id"])
    assert not members.duplicated(["chat_id", "userid"]).any()
    for group in groups.itertuples():
        rows = members[members["chat_id"] == group.chat_id]
        employees = rows[rows["type"] == 1]
        customers = rows[rows["type"] == 2]
        assert list(employees["userid"]) == [group.owner]
        assert 200 <= len(customers) <= 500
        owners_contacts = set(follows.loc[follows["userid"] == group.owner, "external_userid"])
        assert set(customers["userid"]) <= owners_contacts
        assert (rows["join_time"] >= group.create_time).all()
        assert set(customers["join_scene"]) <= {1, 2, 3}
        invited = customers[customers["join_scene"] != 3]
        assert (invited["invitor"] == group.owner).all()


def test_group_size_is_capped_by_the_owners_contacts(tmp_path):
    spec = SampleSpec(customers=500, groups=3, managers=2, export_date=EXPORT_DATE)
    result = generate(spec, tmp_path)
    seed = read_seed(result.seed_dir)
    follows = seed["follows.parquet"]
    for group in seed["groups.parquet"].itertuples():
        rows = seed["group_members.parquet"].query("chat_id == @group.chat_id")
        available = (follows["userid"] == group.owner).sum()
        assert len(rows) - 1 == available < 200


def test_seed_files_have_exactly_the_agreed_columns_and_types(big):
    result, _, _ = big
    for name, columns in SEED_COLUMNS.items():
        schema = pq.read_schema(result.seed_dir / name)
        assert [(f.name, f.type) for f in schema] == columns, name


def test_same_seed_gives_the_same_files_byte_for_byte(tmp_path):
    spec = SampleSpec(customers=3_000, export_date=EXPORT_DATE)
    first = generate(spec, tmp_path / "a")
    second = generate(spec, tmp_path / "b")
    files = [first.export_path, *sorted(first.seed_dir.iterdir())]
    assert len(files) == 1 + len(SEED_FILES)
    for path in files:
        twin = second.export_path if path == first.export_path else second.seed_dir / path.name
        assert path.read_bytes() == twin.read_bytes(), path.name
    other = generate(SampleSpec(customers=3_000, export_date=EXPORT_DATE, seed=8), tmp_path / "c")
    assert other.export_path.read_bytes() != first.export_path.read_bytes()
    other_follows = pq.read_table(other.seed_dir / "follows.parquet")
    assert other_follows != pq.read_table(first.seed_dir / "follows.parquet")


def test_customers_do_not_depend_on_contacts_or_managers():
    base = customer_frame(SampleSpec(customers=2_000, export_date=EXPORT_DATE))
    other = customer_frame(
        SampleSpec(customers=2_000, export_date=EXPORT_DATE, managers=3, contacts=100, groups=0)
    )
    pd.testing.assert_frame_equal(base, other)


@pytest.mark.parametrize(
    ("fmt", "encoding"), [("csv-utf8", "utf-8"), ("csv-utf8-bom", "utf-8-sig")]
)
def test_utf8_exports_load_back(tmp_path, fmt, encoding):
    spec = SampleSpec(customers=1_500, export_date=EXPORT_DATE, fmt=fmt)
    result = generate(spec, tmp_path)
    raw = result.export_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == (fmt == "csv-utf8-bom")
    export = read_export(result.export_path, encoding)
    pd.testing.assert_frame_equal(
        export.astype(object), customer_frame(spec).astype(object), check_column_type=False
    )


def test_parquet_export_keeps_field_names_and_text_values(tmp_path):
    spec = SampleSpec(customers=1_500, export_date=EXPORT_DATE, fmt="parquet")
    result = generate(spec, tmp_path)
    assert result.export_path.name == "core_export_20261124.parquet"
    table = pq.read_table(result.export_path)
    assert table.column_names == list(FIELDS)
    assert all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in table.schema.types)
    pd.testing.assert_frame_equal(
        table.to_pandas().astype(object), customer_frame(spec).astype(object)
    )


def test_explicit_contacts_and_a_single_manager(tmp_path):
    spec = SampleSpec(customers=1_000, managers=1, groups=2, contacts=300, export_date=EXPORT_DATE)
    result = generate(spec, tmp_path)
    follows = pq.read_table(result.seed_dir / "follows.parquet").to_pandas()
    assert follows["external_userid"].nunique() == 300
    # One manager: nobody can follow two, so one relation per contact.
    assert result.follows == len(follows) == 300
    assert set(follows["userid"]) == {"mgr001"}
    assert result.groups == 2
    assert result.members == 2 * (1 + 300)  # each group: its owner and every contact (cap)


def test_default_contacts_cap_at_ten_thousand_a_manager():
    assert SampleSpec(customers=1_000).resolved_contacts() == 600
    assert SampleSpec(customers=1_000_000).resolved_contacts() == 50_000
    assert SampleSpec(customers=1_000_000, managers=2).resolved_contacts() == 20_000
    assert SampleSpec(customers=1_000, contacts=10).resolved_contacts() == 10


def test_no_groups_and_a_tiny_bank(tmp_path):
    result = generate(SampleSpec(customers=1, groups=0, export_date=EXPORT_DATE), tmp_path)
    assert (result.customers, result.follows, result.groups, result.members) == (1, 0, 0, 0)
    for name, columns in SEED_COLUMNS.items():
        schema = pq.read_schema(result.seed_dir / name)
        assert [(f.name, f.type) for f in schema] == columns, name
    assert len(read_export(result.export_path)) == 1


def test_export_date_defaults_to_today_in_shanghai(tmp_path):
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    spec = SampleSpec(customers=50)
    frame = customer_frame(spec)
    # Around midnight the day may turn between the two reads: accept either side of it.
    assert frame["export_date"].iloc[0] in {
        f"{today:%Y%m%d}",
        f"{spec.resolved_export_date():%Y%m%d}",
    }
    result = generate(spec, tmp_path)
    assert re.fullmatch(r"core_export_\d{8}\.csv", result.export_path.name)
    assert result.export_path.name[12:20] == read_export(result.export_path)["export_date"].iloc[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customers": 0},
        {"managers": 0},
        {"groups": -1},
        {"seed": -1},
        {"customers": 10, "contacts": 11},
        {"contacts": -1},
        {"fmt": "xlsx"},
    ],
)
def test_impossible_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        SampleSpec(**kwargs)


def test_zero_asset_share_is_stable_across_seeds():
    shares = [
        float((customer_frame(SampleSpec(customers=5_000, seed=s))["aum"] == "0.00").mean())
        for s in range(3)
    ]
    assert all(0.14 <= s <= 0.20 for s in shares)
    assert len(set(np.round(shares, 6))) == 3  # the seed does change the data
