"""Generate a realistic, deterministic sample bank: a core-banking export and a WeCom seed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from siyu.sandbox.export_files import ExportFormat, write_export
from siyu.schemas.export import DEFAULT_BRANCHES, FIELDS

SHANGHAI = ZoneInfo("Asia/Shanghai")
SEED_DIR_NAME = "sandbox_seed"

# Figures from the field reports (DOMAIN.md), used as the sample bank's shape.
DIRECT_SHARE = 0.70
ZERO_ASSET_SHARE = 0.17
PAYROLL_SHARE = 0.30
HOLDING_SHARES: dict[str, float] = {
    "holds_wealth": 0.25,
    "holds_fund": 0.15,
    "holds_insurance": 0.10,
    "holds_loan": 0.12,
    "holds_credit_card": 0.40,
}
# Wealth, funds and insurance are assets: a zero-asset customer cannot hold them.
ASSET_HOLDINGS: frozenset[str] = frozenset({"holds_wealth", "holds_fund", "holds_insurance"})
CONTACT_SHARE_OF_CUSTOMERS = 0.60
CONTACTS_PER_MANAGER = 10_000
NON_CUSTOMER_SHARE = 0.05
NO_REMARK_MOBILE_SHARE = 0.03
TWO_MANAGER_SHARE = 0.03
INTENT_TAGGED_SHARE = 0.10
GROUP_MEMBERS_MIN, GROUP_MEMBERS_MAX = 200, 500
OPENED_WITHIN_DAYS = 20 * 365

# The one tag group that exists before siyu arrives: ops' own, siyu must leave it alone.
INTENT_GROUP_NAME = "客户意向"
INTENT_TAG_NAMES: tuple[str, ...] = ("高意向", "低意向")

CHANNEL_STATES: tuple[str, ...] = ("ch_call", "ch_menu", "ch_app", "ch_notice")
CHANNEL_WEIGHTS: tuple[float, ...] = (0.35, 0.25, 0.25, 0.15)

# Independent random streams per part, so that (say) more contacts never changes the customers.
_STREAMS: dict[str, int] = {
    "customers": 1,
    "mobiles": 2,
    "contacts": 3,
    "non_customer_mobiles": 4,
    "employees": 5,
    "tags": 6,
    "groups": 7,
}

_URL_SAFE = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
)

# Common surnames with rough population weights (percent), a few compound ones for realism.
_SURNAMES: dict[str, float] = {
    "王": 7.1, "李": 7.0, "张": 6.8, "刘": 5.4, "陈": 4.5, "杨": 3.1, "黄": 2.2, "赵": 2.0,
    "吴": 1.8, "周": 1.7, "徐": 1.4, "孙": 1.3, "马": 1.2, "朱": 1.1, "胡": 1.0, "郭": 0.97,
    "何": 0.9, "高": 0.87, "林": 0.86, "罗": 0.85, "郑": 0.78, "梁": 0.75, "谢": 0.6, "宋": 0.57,
    "唐": 0.55, "许": 0.54, "韩": 0.5, "冯": 0.49, "邓": 0.47, "曹": 0.46, "彭": 0.45, "曾": 0.44,
    "肖": 0.43, "田": 0.42, "董": 0.41, "袁": 0.4, "潘": 0.39, "于": 0.38, "蒋": 0.37, "蔡": 0.36,
    "余": 0.35, "杜": 0.34, "叶": 0.33, "程": 0.32, "苏": 0.31, "魏": 0.3, "吕": 0.29, "丁": 0.28,
    "任": 0.27, "沈": 0.26, "姚": 0.25, "卢": 0.24, "姜": 0.23, "崔": 0.22, "钟": 0.21, "谭": 0.2,
    "陆": 0.2, "汪": 0.19, "范": 0.19, "金": 0.18, "石": 0.18, "廖": 0.17, "贾": 0.17, "夏": 0.16,
    "韦": 0.16, "付": 0.15, "方": 0.15, "白": 0.14, "邹": 0.14, "孟": 0.13, "熊": 0.13, "秦": 0.12,
    "邱": 0.12, "江": 0.12, "尹": 0.11, "薛": 0.11, "闫": 0.1, "段": 0.1, "雷": 0.1, "侯": 0.1,
    "龙": 0.1, "史": 0.1, "陶": 0.1, "黎": 0.1, "贺": 0.1, "顾": 0.09, "毛": 0.09, "郝": 0.09,
    "龚": 0.09, "邵": 0.09, "万": 0.08, "钱": 0.08, "严": 0.08, "武": 0.08, "戴": 0.08, "孔": 0.07,
    "欧阳": 0.02, "司马": 0.005, "上官": 0.005, "诸葛": 0.005,
}  # fmt: skip
_GIVEN_CHARS = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂华玉萍红玲芬燕彬辉鹏宇浩凯俊帆晨阳欣怡"
    "梓涵子轩雨萱思博文佳琪诺嘉乐天昊然宏志建国海波亮林斌峰婷倩雪琳颖慧晶洁璐瑶岚鑫程"
    "东南兰春梅荣晓飞云新利清飞德永成胜凤金富贵安康泽瀚睿哲铭宁远"
)
_NICK_HEADS: tuple[str, ...] = ("", "", "", "小", "阿", "老", "大", "Mr.", "")
_NICK_BODIES: tuple[str, ...] = (
    "阳光", "晴天", "向日葵", "小鱼", "木子", "一帆风顺", "静待花开", "平安是福", "追梦人",
    "海阔天空", "清风", "明月", "花开富贵", "知足常乐", "Lucky", "Amy", "Leo", "Tony", "Coco",
    "橙子", "糖果", "山水", "岁月静好", "天道酬勤", "心想事成", "微笑", "蓝天", "老树", "麦兜",
)  # fmt: skip
_NICK_TAILS: tuple[str, ...] = ("", "", "", "", "88", "666", "2020", "_", "~", "。")
_DESCRIPTIONS: tuple[str, ...] = ("电话邀约添加", "网点到店客户", "手机银行添加", "代发工资客户")
_GROUP_THEMES: tuple[str, ...] = (
    "财富增值", "代发工资福利", "信用卡权益", "理财早知道", "周末好礼", "网点邻里",
)  # fmt: skip
_GROUP_NOTICES: tuple[str, ...] = (
    "每周一三五理财资讯，周二周四小游戏，周五大活动，欢迎参与！",
    "本群为专属福利群，每周固定活动，中奖请联系客户经理领取。",
    "",
)
# WeCom add_way codes: 0 unknown, 1 QR code, 2 mobile search, 3 card shared, 4 group chat,
# 5 phone book, 202 assigned by an admin.
_ADD_WAYS = np.array([1, 2, 3, 4, 5, 0, 202], dtype=np.int64)
_ADD_WAY_WEIGHTS = np.array([0.55, 0.15, 0.08, 0.07, 0.05, 0.05, 0.05])
_ADD_WAY_QR = 1

FOLLOWS_SCHEMA = pa.schema(
    [
        ("external_userid", pa.string()),
        ("name", pa.string()),
        ("type", pa.int64()),
        ("gender", pa.int64()),
        ("unionid", pa.string()),
        ("userid", pa.string()),
        ("remark", pa.string()),
        ("description", pa.string()),
        ("createtime", pa.int64()),
        ("remark_mobiles", pa.list_(pa.string())),
        ("add_way", pa.int64()),
        ("state", pa.string()),
        ("tag_ids", pa.list_(pa.string())),
    ]
)
EMPLOYEES_SCHEMA = pa.schema([("userid", pa.string()), ("name", pa.string())])
TAG_GROUPS_SCHEMA = pa.schema(
    [
        ("group_id", pa.string()),
        ("group_name", pa.string()),
        ("group_order", pa.int64()),
        ("tag_id", pa.string()),
        ("tag_name", pa.string()),
        ("tag_order", pa.int64()),
    ]
)
GROUPS_SCHEMA = pa.schema(
    [
        ("chat_id", pa.string()),
        ("name", pa.string()),
        ("owner", pa.string()),
        ("create_time", pa.int64()),
        ("notice", pa.string()),
    ]
)
GROUP_MEMBERS_SCHEMA = pa.schema(
    [
        ("chat_id", pa.string()),
        ("userid", pa.string()),
        ("type", pa.int64()),
        ("join_time", pa.int64()),
        ("join_scene", pa.int64()),
        ("invitor", pa.string()),
    ]
)
SEED_SCHEMAS: dict[str, pa.Schema] = {
    "employees.parquet": EMPLOYEES_SCHEMA,
    "follows.parquet": FOLLOWS_SCHEMA,
    "tag_groups.parquet": TAG_GROUPS_SCHEMA,
    "groups.parquet": GROUPS_SCHEMA,
    "group_members.parquet": GROUP_MEMBERS_SCHEMA,
}


@dataclass(frozen=True)
class SampleSpec:
    """What sample bank to generate: its size, its randomness and the export's date and format.

    `contacts` counts the distinct WeCom external contacts of all managers: about 92 % of them are
    bound to a customer by remark mobile, 5 % are not bank customers, 3 % carry no mobile.
    """

    customers: int = 1_000
    groups: int = 6
    managers: int = 5
    seed: int = 7
    export_date: date | None = None
    fmt: ExportFormat = "csv-gbk"
    contacts: int | None = None

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be at least 1, got {self.customers}")
        if self.managers < 1:
            raise ValueError(f"managers must be at least 1, got {self.managers}")
        if self.groups < 0:
            raise ValueError(f"groups must not be negative, got {self.groups}")
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.fmt not in get_args(ExportFormat):
            raise ValueError(f"fmt must be one of {get_args(ExportFormat)}, got {self.fmt!r}")
        if self.contacts is not None and not 0 <= self.contacts <= self.customers:
            raise ValueError(
                f"contacts must be between 0 and customers ({self.customers}), got {self.contacts}"
            )

    def resolved_export_date(self) -> date:
        """The export's date: as given, else today in Shanghai (the bank's time zone)."""
        return self.export_date or datetime.now(SHANGHAI).date()

    def resolved_contacts(self) -> int:
        """Distinct contacts: as given, else 60 % of customers, at most 10,000 per manager."""
        if self.contacts is not None:
            return self.contacts
        return min(
            int(self.customers * CONTACT_SHARE_OF_CUSTOMERS), CONTACTS_PER_MANAGER * self.managers
        )


@dataclass(frozen=True)
class SampleResult:
    """Where the sample landed and how big it is."""

    export_path: Path
    seed_dir: Path
    customers: int
    follows: int
    groups: int
    members: int


@dataclass(frozen=True)
class _Customers:
    """The export as an Arrow table, plus what the contacts need and the export does not show."""

    table: pa.Table
    surname_index: np.ndarray  # per customer, into _SURNAMES: the remark says 王先生, not the name


def export_file_name(export_date: date, fmt: ExportFormat) -> str:
    """The export's file name as the bank delivers it: core_export_YYYYMMDD.csv or .parquet."""
    suffix = "parquet" if fmt == "parquet" else "csv"
    return f"core_export_{export_date:%Y%m%d}.{suffix}"


def customer_frame(spec: SampleSpec) -> pd.DataFrame:
    """The export's rows for `spec`, columns named by field, values as text as the bank writes."""
    return _customers(spec, spec.resolved_export_date()).table.to_pandas()


def generate(spec: SampleSpec, out_dir: Path) -> SampleResult:
    """Write the export and the sandbox seed (`out_dir/sandbox_seed/`) for `spec` into `out_dir`."""
    export_date = spec.resolved_export_date()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_dir = out_dir / SEED_DIR_NAME
    seed_dir.mkdir(exist_ok=True)

    customers = _customers(spec, export_date)
    export_path = write_export(
        customers.table.to_pandas(), out_dir / export_file_name(export_date, spec.fmt), spec.fmt
    )

    # Contacts are added and groups created before the export's day: the export is yesterday's.
    day_start = int(datetime.combine(export_date, time.min, tzinfo=SHANGHAI).timestamp())
    employees = _employees(spec)
    tag_groups = _tag_groups(spec)
    follows = _follows(spec, customers, employees, tag_groups, day_start)
    groups, members = _groups(spec, employees, follows, day_start)

    tables = {
        "employees.parquet": employees,
        "follows.parquet": follows,
        "tag_groups.parquet": tag_groups,
        "groups.parquet": groups,
        "group_members.parquet": members,
    }
    for file_name, table in tables.items():
        pq.write_table(table, seed_dir / file_name)
    return SampleResult(
        export_path=export_path,
        seed_dir=seed_dir,
        customers=customers.table.num_rows,
        follows=follows.num_rows,
        groups=groups.num_rows,
        members=members.num_rows,
    )


def _rng(spec: SampleSpec, stream: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _STREAMS[stream]])


def _pick(pool: tuple[str, ...] | list[str], index: np.ndarray) -> pa.Array:
    """Strings from `pool` by index, vectorised (Arrow take), never a Python loop per row."""
    return pc.take(pa.array(pool, pa.string()), pa.array(index))


def _tokens(rng: np.random.Generator, n: int, prefix: str, length: int) -> pa.Array:
    """`n` ids of `prefix` + `length` url-safe characters, like WeCom's (wm..., wr..., et...)."""
    chars = _URL_SAFE[rng.integers(0, len(_URL_SAFE), size=(n, length))]
    head = np.broadcast_to(np.frombuffer(prefix.encode(), dtype=np.uint8), (n, len(prefix)))
    raw = np.ascontiguousarray(np.hstack([head, chars]))
    width = len(prefix) + length
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw.tobytes()))


def _chinese_names(rng: np.random.Generator, n: int) -> tuple[pa.Array, np.ndarray]:
    """Synthetic Chinese names (surname + one or two given characters) and the surname index."""
    surnames = list(_SURNAMES)
    weights = np.array(list(_SURNAMES.values()))
    surname_index = rng.choice(len(surnames), size=n, p=weights / weights.sum())
    given = [*_GIVEN_CHARS]
    first = rng.integers(0, len(given), n)
    # About a quarter of names have one given character: index len(given) means "none".
    second = np.where(rng.random(n) < 0.25, len(given), rng.integers(0, len(given), n))
    names = pc.binary_join_element_wise(
        _pick(surnames, surname_index), _pick(given, first), _pick([*given, ""], second), ""
    )
    return names, surname_index


def _unique_mobiles(
    rng: np.random.Generator, n: int, taken: np.ndarray | None = None
) -> np.ndarray:
    """`n` distinct 11-digit mobiles 1[3-9]xxxxxxxxx as int64, in draw order, none in `taken`."""
    # Prefix digit weights: 13x, 15x, 18x are the old big blocks; 14x, 16x are rare.
    second_digit = np.arange(3, 10)
    weights = np.array([0.28, 0.03, 0.22, 0.02, 0.12, 0.25, 0.08])
    found = np.empty(0, dtype=np.int64)
    while len(found) < n:
        want = (n - len(found)) * 101 // 100 + 16
        draw = (10 + rng.choice(second_digit, size=want, p=weights)).astype(np.int64) * 10**9
        draw += rng.integers(0, 10**9, size=want)
        draw = pd.unique(np.concatenate([found, draw]))
        if taken is not None:
            draw = draw[~np.isin(draw, taken)]
        found = draw[:n]
    return found


def _money_text(cents: np.ndarray) -> pa.Array:
    """Amounts in cents as the bank writes them: yuan with two decimals, 1234.50."""
    whole = pc.cast(pa.array(cents // 100), pa.string())
    fraction = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), 2, "0")
    return pc.binary_join_element_wise(whole, fraction, ".")


def _flag_text(values: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(values), "是", "否")


def _customers(spec: SampleSpec, export_date: date) -> _Customers:
    rng = _rng(spec, "customers")
    n = spec.customers

    # Ids ascend with small random gaps, as a core system's sequence does after closures.
    ids = 1_000_000_000 + rng.integers(0, 10**8) + np.cumsum(rng.integers(1, 9, n))
    customer_id = pc.binary_join_element_wise("C", pc.cast(pa.array(ids), pa.string()), "")
    names, surname_index = _chinese_names(rng, n)
    mobile = pc.cast(pa.array(_unique_mobiles(_rng(spec, "mobiles"), n)), pa.string())

    branch_weights = rng.uniform(0.5, 2.0, len(DEFAULT_BRANCHES))
    branch = _pick(
        DEFAULT_BRANCHES,
        rng.choice(len(DEFAULT_BRANCHES), size=n, p=branch_weights / branch_weights.sum()),
    )
    customer_class = pc.if_else(pa.array(rng.random(n) < DIRECT_SHARE), "直营", "代工")

    # AUM is heavy-tailed: median ~20k yuan, about 1 % of holders above a million.
    zero = rng.random(n) < ZERO_ASSET_SHARE
    aum_cents = np.where(zero, 0, np.round(rng.lognormal(np.log(20_000), 1.7, n) * 100))
    aum_cents = np.minimum(aum_cents, 5 * 10**10).astype(np.int64)
    # The peak is at least today's; some zero-asset customers had money once.
    grown = aum_cents * (1.0 + rng.exponential(0.35, n))
    had_some = np.where(rng.random(n) < 0.4, rng.lognormal(np.log(5_000), 1.2, n) * 100, 0.0)
    aum_peak_cents = np.maximum(aum_cents, np.round(np.where(zero, had_some, grown))).astype(
        np.int64
    )

    holdings: dict[str, pa.Array] = {}
    for field_name, share in HOLDING_SHARES.items():
        if field_name in ASSET_HOLDINGS:
            held = ~zero & (rng.random(n) < share / (1.0 - ZERO_ASSET_SHARE))
        else:
            held = rng.random(n) < share
        holdings[field_name] = _flag_text(held)

    export_day = np.datetime64(export_date, "D")
    opened = export_day - rng.integers(1, OPENED_WITHIN_DAYS + 1, n).astype("timedelta64[D]")
    opened_on = pc.strftime(pa.array(opened), format="%Y%m%d")

    columns: dict[str, pa.Array] = {
        "customer_id": customer_id,
        "name": names,
        "mobile": mobile,
        "branch_code": branch,
        "customer_class": customer_class,
        "aum": _money_text(aum_cents),
        "aum_peak": _money_text(aum_peak_cents),
        "payroll": _flag_text(rng.random(n) < PAYROLL_SHARE),
        **holdings,
        "opened_on": opened_on,
        "export_date": pa.array(np.full(n, f"{export_date:%Y%m%d}"), pa.string()),
    }
    table = pa.table({field_name: columns[field_name] for field_name in FIELDS})
    return _Customers(table=table, surname_index=surname_index)


def _employees(spec: SampleSpec) -> pa.Table:
    names, _ = _chinese_names(_rng(spec, "employees"), spec.managers)
    userids = [f"mgr{i:03d}" for i in range(1, spec.managers + 1)]
    return pa.table({"userid": userids, "name": names}, schema=EMPLOYEES_SCHEMA)


def _tag_groups(spec: SampleSpec) -> pa.Table:
    ids = _tokens(_rng(spec, "tags"), 1 + len(INTENT_TAG_NAMES), "et", 20).to_pylist()
    count = len(INTENT_TAG_NAMES)
    return pa.table(
        {
            "group_id": [ids[0]] * count,
            "group_name": [INTENT_GROUP_NAME] * count,
            "group_order": [1] * count,
            "tag_id": ids[1:],
            "tag_name": list(INTENT_TAG_NAMES),
            "tag_order": list(range(count, 0, -1)),  # WeCom shows a larger order first
        },
        schema=TAG_GROUPS_SCHEMA,
    )


def _list_column(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    """A list<string> column whose row i holds the next `lengths[i]` (0 or more) of `values`."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=pa.list_(pa.string()))


def _follows(
    spec: SampleSpec,
    customers: _Customers,
    employees: pa.Table,
    tag_groups: pa.Table,
    day_start: int,
) -> pa.Table:
    """One row per (manager, contact): bound customers, non-customers, contacts with no mobile."""
    rng = _rng(spec, "contacts")
    n_contacts = spec.resolved_contacts()
    n_non_customers = round(n_contacts * NON_CUSTOMER_SHARE)
    n_no_mobile = round(n_contacts * NO_REMARK_MOBILE_SHARE)
    n_bound = n_contacts - n_non_customers - n_no_mobile

    # Each contact is one kind: 0 bound to a customer, 1 not a customer, 2 no remark mobile.
    kind = rng.permutation(
        np.repeat(np.array([0, 1, 2], dtype=np.int8), [n_bound, n_non_customers, n_no_mobile])
    )
    bound_customer = rng.choice(spec.customers, size=n_bound, replace=False)
    customer_mobiles = customers.table["mobile"]
    non_customer_mobiles = _unique_mobiles(
        _rng(spec, "non_customer_mobiles"),
        n_non_customers,
        taken=pc.cast(customer_mobiles, pa.int64()).to_numpy(),
    )
    # Mobiles in contact order: bound contacts take their customer's, the others a stranger's.
    mobile_of_contact = np.empty(n_contacts, dtype=object)
    mobile_of_contact[kind == 0] = pc.take(customer_mobiles, pa.array(bound_customer)).to_numpy(
        zero_copy_only=False
    )
    mobile_of_contact[kind == 1] = non_customer_mobiles.astype(str)
    surname_of_contact = rng.choice(len(_SURNAMES), size=n_contacts)
    surname_of_contact[kind == 0] = customers.surname_index[bound_customer]

    external_userid = _tokens(rng, n_contacts, "wm", 30)
    unionid = _tokens(rng, n_contacts, "o", 27)
    nick_name = pc.binary_join_element_wise(
        _pick(_NICK_HEADS, rng.integers(0, len(_NICK_HEADS), n_contacts)),
        _pick(_NICK_BODIES, rng.integers(0, len(_NICK_BODIES), n_contacts)),
        _pick(_NICK_TAILS, rng.integers(0, len(_NICK_TAILS), n_contacts)),
        "",
    )
    gender = rng.choice(np.array([0, 1, 2], dtype=np.int64), size=n_contacts, p=[0.1, 0.45, 0.45])

    # Relations: every contact follows one manager; ~3 % of bound customers follow a second one.
    first_manager = rng.integers(0, spec.managers, n_contacts)
    two = np.flatnonzero(kind == 0)
    n_two = round(len(two) * TWO_MANAGER_SHARE) if spec.managers > 1 else 0
    two = np.sort(rng.choice(two, size=n_two, replace=False))
    # The second manager differs from the first: shift by 1..managers-1 around the team.
    shift = rng.integers(1, spec.managers, n_two) if n_two else np.zeros(0, dtype=np.int64)
    second_manager = (first_manager[two] + shift) % spec.managers
    contact = np.concatenate([np.arange(n_contacts), two])
    manager = np.concatenate([first_manager, second_manager])
    order = np.lexsort((contact, manager))  # grouped by manager, then contact: readable files
    contact, manager = contact[order], manager[order]
    n_rel = len(contact)

    # The remark is what a manager types: 王先生 / 李女士, sometimes nothing.
    honorific = np.where(gender[contact] == 2, "女士", "先生")
    has_remark = rng.random(n_rel) < 0.4
    remark = pc.if_else(
        pa.array(has_remark),
        pc.binary_join_element_wise(
            _pick(list(_SURNAMES), surname_of_contact[contact]), pa.array(honorific), ""
        ),
        "",
    )
    description = pc.if_else(
        pa.array(rng.random(n_rel) < 0.3),
        _pick(_DESCRIPTIONS, rng.integers(0, len(_DESCRIPTIONS), n_rel)),
        "",
    )
    add_way = rng.choice(_ADD_WAYS, size=n_rel, p=_ADD_WAY_WEIGHTS)
    state = pc.if_else(
        pa.array(add_way == _ADD_WAY_QR),
        _pick(CHANNEL_STATES, rng.choice(len(CHANNEL_STATES), size=n_rel, p=CHANNEL_WEIGHTS)),
        "",
    )
    createtime = day_start - rng.integers(3_600, 730 * 86_400, n_rel)

    rel_mobiles = mobile_of_contact[contact]
    has_mobile = kind[contact] != 2
    remark_mobiles = _list_column(
        pa.array(rel_mobiles[has_mobile].astype(str), pa.string()), has_mobile.astype(np.int32)
    )
    intent_tag_ids = tag_groups["tag_id"].to_pylist()
    tagged = rng.random(n_rel) < INTENT_TAGGED_SHARE
    tag_ids = _list_column(
        _pick(intent_tag_ids, rng.integers(0, len(intent_tag_ids), int(tagged.sum()))),
        tagged.astype(np.int32),
    )

    return pa.table(
        {
            "external_userid": pc.take(external_userid, pa.array(contact)),
            "name": pc.take(nick_name, pa.array(contact)),
            "type": np.ones(n_rel, dtype=np.int64),  # 1: a WeChat user (wm... ids)
            "gender": gender[contact],
            "unionid": pc.take(unionid, pa.array(contact)),
            "userid": pc.take(employees["userid"], pa.array(manager)),
            "remark": remark,
            "description": description,
            "createtime": createtime,
            "remark_mobiles": remark_mobiles,
            "add_way": add_way,
            "state": state,
            "tag_ids": tag_ids,
        },
        schema=FOLLOWS_SCHEMA,
    )


def _groups(
    spec: SampleSpec, employees: pa.Table, follows: pa.Table, day_start: int
) -> tuple[pa.Table, pa.Table]:
    """Customer groups owned by managers in turn, members drawn from the owner's own contacts."""
    rng = _rng(spec, "groups")
    userids = employees["userid"].to_pylist()
    chat_ids = _tokens(rng, spec.groups, "wr", 28).to_pylist()
    follow_userid = follows["userid"].to_numpy(zero_copy_only=False)
    follow_contact = follows["external_userid"].combine_chunks()

    group_rows: dict[str, list] = {name: [] for name in GROUPS_SCHEMA.names}
    member_parts: list[pa.Table] = []
    for g, chat_id in enumerate(chat_ids):
        owner = userids[g % len(userids)]
        theme = _GROUP_THEMES[g % len(_GROUP_THEMES)]
        create_time = day_start - int(rng.integers(7 * 86_400, 365 * 86_400))
        group_rows["chat_id"].append(chat_id)
        group_rows["name"].append(f"{theme}{g // len(_GROUP_THEMES) + 1}群")
        group_rows["owner"].append(owner)
        group_rows["create_time"].append(create_time)
        group_rows["notice"].append(_GROUP_NOTICES[int(rng.integers(0, len(_GROUP_NOTICES)))])

        owners_contacts = np.flatnonzero(follow_userid == owner)
        size = min(
            int(rng.integers(GROUP_MEMBERS_MIN, GROUP_MEMBERS_MAX + 1)), len(owners_contacts)
        )
        chosen = rng.choice(owners_contacts, size=size, replace=False)
        join_time = np.sort(create_time + rng.integers(60, day_start - create_time, size))
        # Join scenes: 1 invited by a member, 2 by link, 3 by QR code (no invitor then).
        join_scene = rng.choice(np.array([1, 2, 3], dtype=np.int64), size=size, p=[0.3, 0.2, 0.5])
        invitor = pc.if_else(pa.array(join_scene == 3), "", owner)
        member_parts.append(
            pa.table(
                {
                    "chat_id": pa.array([chat_id] * (size + 1), pa.string()),
                    "userid": pa.concat_arrays(
                        [pa.array([owner]), pc.take(follow_contact, pa.array(chosen))]
                    ),
                    "type": np.concatenate([[1], np.full(size, 2)]).astype(np.int64),
                    "join_time": np.concatenate([[create_time], join_time]).astype(np.int64),
                    "join_scene": np.concatenate([[1], join_scene]).astype(np.int64),
                    "invitor": pa.concat_arrays([pa.array([""]), invitor]),
                },
                schema=GROUP_MEMBERS_SCHEMA,
            )
        )
    groups = pa.table(group_rows, schema=GROUPS_SCHEMA)
    members = pa.concat_tables(member_parts) if member_parts else GROUP_MEMBERS_SCHEMA.empty_table()
    return groups, members
