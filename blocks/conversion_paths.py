"""The ConversionPaths block: the four-touch paths and the product catalogue as editable playbooks."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, field_validator, model_validator

# Export fields a rule may read (schemas/export.py), plus what siyu knows of the contact itself.
NUMBER_FIELDS: frozenset[str] = frozenset({"aum", "aum_peak", "days_since_added"})
FLAG_FIELDS: frozenset[str] = frozenset(
    {
        "payroll",
        "holds_wealth",
        "holds_fund",
        "holds_insurance",
        "holds_loan",
        "holds_credit_card",
    }
)
TEXT_FIELDS: frozenset[str] = frozenset({"customer_class", "branch_code"})
RULE_FIELDS: frozenset[str] = NUMBER_FIELDS | FLAG_FIELDS | TEXT_FIELDS

TOUCHES = 4
# Variant names of the touches (tasks/journeys.py picks one per customer).
INTRO = "intro"  # touch 1
REPEAT = "repeat"  # touch 2 when touch 1 never reached the customer: touch 1 once more
DETAILED_PLAN = "detailed_plan"  # touch 2 when the manager tagged the contact as interested
FOLLOW_UP = "follow_up"  # touch 2 without a signal: a short question
GENERAL = "general"  # touches 3 and 4 when no catalogue product fits the customer
PRODUCT_PREFIX = "product:"  # touches 3 and 4: product:<code> from the catalogue

Delivery = Literal["mass_template", "employee_reminder"]
Comparison = Literal["eq", "ne", "gt", "ge", "lt", "le", "is_true", "is_false"]


class EntryCondition(BaseModel):
    """One test on a customer: an export field compared with a value, or a tag present/absent."""

    field: str | None = Field(
        default=None,
        description="Export field (aum, aum_peak, payroll, holds_wealth, ..., days_since_added); "
        "empty when this condition is about a tag",
    )
    op: Comparison = Field(default="is_true", description="How the field is compared")
    value: float | str | None = Field(default=None, description="The value compared against")
    tag: str | None = Field(default=None, description="A tag name the contact carries (or not)")
    has_tag: bool = Field(default=True, description="With a tag: true = must carry it")

    @model_validator(mode="after")
    def _one_subject(self) -> EntryCondition:
        if (self.field is None) == (self.tag is None):
            raise ValueError("a condition tests either an export field or a tag: set exactly one")
        if self.field is not None:
            _check_field(self.field, self.op, self.value)
        return self


def _check_field(field: str, op: str, value: Any) -> None:
    if field not in RULE_FIELDS:
        raise ValueError(f"unknown field {field!r}: use one of {', '.join(sorted(RULE_FIELDS))}")
    if op in ("is_true", "is_false"):
        if field not in FLAG_FIELDS:
            raise ValueError(f"{op} tests a yes/no field, and {field} is not one")
    elif field in FLAG_FIELDS:
        raise ValueError(f"{field} is a yes/no field: test it with is_true or is_false")
    elif value is None:
        raise ValueError(f"{field} {op} needs a value")
    elif field in NUMBER_FIELDS and not isinstance(value, int | float):
        raise ValueError(f"{field} is a number: compare it with a number, not {value!r}")


class EntryRule(BaseModel):
    """Who enters a path: every condition must hold."""

    all_of: list[EntryCondition] = Field(min_length=1, description="All of these must hold")


class GoalCondition(BaseModel):
    """One condition of a conversion, read in an export after the customer entered."""

    kind: Literal["turns_true", "rises_by_amount", "rises_by_share", "compare"] = Field(
        description="turns_true: a yes/no field was no at entry and is yes now; rises_by_amount "
        "/ rises_by_share: the field grew by at least `value` yuan / share (0.1 = 10 %) since "
        "entry; compare: the field now compared with `value`"
    )
    field: str = Field(description="The export field, e.g. holds_wealth or aum")
    op: Comparison = Field(default="ge", description="With compare: how the field is compared")
    value: float | None = Field(default=None, description="The amount, share or value")

    @model_validator(mode="after")
    def _consistent(self) -> GoalCondition:
        if self.kind == "turns_true":
            if self.field not in FLAG_FIELDS:
                raise ValueError(f"turns_true needs a yes/no field, and {self.field} is not one")
        elif self.kind == "compare":
            _check_field(self.field, self.op, self.value)
        else:
            if self.field not in NUMBER_FIELDS:
                raise ValueError(f"{self.kind} needs an amount field, and {self.field} is not one")
            if self.value is None or self.value <= 0:
                raise ValueError(f"{self.kind} needs a positive value")
        return self


class Goal(BaseModel):
    """The conversion that ends the path: ALL conditions hold in one export within the window."""

    conditions: list[GoalCondition] = Field(
        min_length=1, description="The path ends only when all of these hold together"
    )
    window_days: int = Field(
        default=35,
        ge=1,
        le=120,
        description="Days after entry in which a conversion counts (the month plus a few days)",
    )


class TouchContent(BaseModel):
    """What a touch variant says: text (placeholders the manager may adjust) and attachments."""

    text: str = Field(min_length=1, description="The text; {manager} style placeholders allowed")
    attachments: list[dict[str, Any]] = Field(
        default_factory=list,
        description="WeCom attachments: poster image, link, mini-program (as WeCom writes them)",
    )


class Touch(BaseModel):
    """One touch of a path: its day offset, how it travels, its content per variant."""

    day_offset: int = Field(ge=0, le=60, description="Days after entry (0 = the entry day)")
    delivery: Delivery = Field(
        default="mass_template",
        description="mass_template (the manager confirms it) or employee_reminder (1:1: the "
        "manager gets the content and sends it in their own words)",
    )
    contents: dict[str, TouchContent] = Field(
        description="Content per variant: touch 1 intro; touch 2 repeat (empty: touch 1's), "
        "detailed_plan, follow_up; touches 3 and 4 general (products come from the catalogue)"
    )


class SendWindow(BaseModel):
    """When a touch is due: a daily window on working days, in the send rules' time zone."""

    start: dt.time = Field(default=dt.time(10, 0), description="Earliest local time of a touch")
    end: dt.time = Field(default=dt.time(11, 30), description="Latest local time of a touch")
    working_days_only: bool = Field(default=True, description="Only on working days")

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError("the send window must end after it starts")
        return self


_REQUIRED_VARIANTS: dict[int, tuple[str, ...]] = {
    1: (INTRO,),
    2: (DETAILED_PLAN, FOLLOW_UP),
    3: (GENERAL,),
    4: (GENERAL,),
}


class ConversionPath(BaseModel):
    """One customer type's SOP: who enters, what converts them, the four touches."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
        description="Stable code of the path (ledger programme path:<name>), e.g. payroll-wealth",
    )
    title: str = Field(min_length=1, max_length=40, description="What ops read, e.g. 代发稳健理财")
    priority: int = Field(description="A customer matching several paths enters the highest")
    active: bool = Field(default=True, description="Inactive paths enrol nobody new")
    paused: bool = Field(
        default=False,
        description="Paused by ops: its touch runs send nothing and record each planned send "
        "skipped with reason 'path paused by ops'; enrolment continues unless active is false",
    )
    entry: EntryRule = Field(description="Who enters: conditions over export fields and tags")
    goal: Goal = Field(description="The conversion that ends the path, and its window")
    touches: list[Touch] = Field(
        min_length=TOUCHES, max_length=TOUCHES, description="The four touches, in order"
    )
    send_window: SendWindow = Field(
        default_factory=SendWindow, description="When in the day touches are due"
    )
    holdout_share: float = Field(
        default=0.10, ge=0, le=0.5, description="Share enrolled but never touched (uplift)"
    )
    intent_tags: list[str] = Field(
        default_factory=lambda: ["高意向"],
        description="Tags a manager puts on an interested contact (touch 2: the detailed plan)",
    )

    @field_validator("touches")
    @classmethod
    def _touches(cls, touches: list[Touch]) -> list[Touch]:
        offsets = [t.day_offset for t in touches]
        if offsets != sorted(set(offsets)):
            raise ValueError("touch day offsets must rise strictly (default 0, 2, 9, 20)")
        for number, touch in enumerate(touches, start=1):
            missing = [v for v in _REQUIRED_VARIANTS[number] if v not in touch.contents]
            if missing:
                raise ValueError(f"touch {number} needs content for {', '.join(missing)}")
        return touches

    def version(self) -> str:
        """A short hash of the path as saved: which edit of the playbook a send came from."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def programme(self) -> str:
        return f"path:{self.name}"


class Product(BaseModel):
    """A product for touches 3 and 4: whom it fits, what it says, when it is on offer."""

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$", description="Stable code")
    title: str = Field(min_length=1, description="Product name as ops read it")
    target_tags: list[str] = Field(
        default_factory=list, description="It fits a customer carrying any of these (empty: all)"
    )
    exclude_if: list[str] = Field(
        default_factory=list,
        description="Export yes/no fields that rule it out (e.g. holds_fund for a fund)",
    )
    content: TouchContent = Field(description="What touches 3 and 4 say about it")
    promotion_start: dt.date | None = Field(
        default=None, description="On offer from (empty: always)"
    )
    promotion_end: dt.date | None = Field(default=None, description="On offer until (inclusive)")

    @field_validator("exclude_if")
    @classmethod
    def _flags(cls, fields: list[str]) -> list[str]:
        unknown = sorted(set(fields) - FLAG_FIELDS)
        if unknown:
            raise ValueError(f"exclude_if takes yes/no fields, not {', '.join(unknown)}")
        return fields

    def on_offer(self, day: dt.date) -> bool:
        return (self.promotion_start is None or self.promotion_start <= day) and (
            self.promotion_end is None or day <= self.promotion_end
        )


def _touches(intro: str, plan: str, poster: str) -> list[Touch]:
    image = [{"msgtype": "image", "image": {"pic_url": poster}}]
    return [
        Touch(day_offset=0, contents={INTRO: TouchContent(text=intro, attachments=image)}),
        Touch(
            day_offset=2,
            contents={
                DETAILED_PLAN: TouchContent(text=plan),
                FOLLOW_UP: TouchContent(
                    text="上次给您介绍的内容，您看了吗？有任何问题都可以问我。"
                ),
            },
        ),
        Touch(
            day_offset=9,
            contents={
                GENERAL: TouchContent(text="结合您的情况，为您整理了几款合适的产品，欢迎咨询。")
            },
        ),
        Touch(
            day_offset=20,
            delivery="employee_reminder",
            contents={GENERAL: TouchContent(text="本月的优惠活动即将结束，需要的话我帮您安排。")},
        ),
    ]


def _flag(field: str, yes: bool = True) -> EntryCondition:
    return EntryCondition(field=field, op="is_true" if yes else "is_false")


WAN = 10_000
DEFAULT_PATHS: list[ConversionPath] = [
    ConversionPath(
        name="asset-recovery",
        title="资产唤回",
        priority=50,
        entry=EntryRule(
            all_of=[
                EntryCondition(field="aum_peak", op="ge", value=10 * WAN),
                EntryCondition(field="aum", op="lt", value=5 * WAN),
            ]
        ),
        goal=Goal(conditions=[GoalCondition(kind="rises_by_amount", field="aum", value=2 * WAN)]),
        touches=_touches(
            "您好，我是您的专属客户经理。近期为老客户准备了专属回馈礼遇，详情见海报。",
            "根据您的情况，建议把闲置资金分两部分：一部分活期备用，一部分配置稳健理财。",
            "https://example.invalid/posters/recovery.png",
        ),
    ),
    ConversionPath(
        name="payroll-wealth",
        title="代发稳健理财",
        priority=40,
        entry=EntryRule(all_of=[_flag("payroll"), _flag("holds_wealth", yes=False)]),
        goal=Goal(conditions=[GoalCondition(kind="turns_true", field="holds_wealth")]),
        touches=_touches(
            "您好，我是您的工资卡专属客户经理。为代发客户准备了稳健理财新客专享，详情见海报。",
            "为您推荐的方案：每月工资到账后自动转入稳健理财，起点低、可随时查看收益。",
            "https://example.invalid/posters/payroll.png",
        ),
    ),
    ConversionPath(
        name="high-asset-invest",
        title="高净值投资",
        priority=30,
        entry=EntryRule(
            all_of=[
                EntryCondition(field="aum", op="ge", value=20 * WAN),
                _flag("holds_fund", False),
            ]
        ),
        goal=Goal(conditions=[GoalCondition(kind="turns_true", field="holds_fund")]),
        touches=_touches(
            "您好，本周的市场观点和精选基金组合已整理好，供您参考。",
            "按您的风险偏好，建议的资产配置方案如下，可以约时间详细沟通。",
            "https://example.invalid/posters/invest.png",
        ),
    ),
    ConversionPath(
        name="wealth-news",
        title="理财持有资讯",
        priority=20,
        entry=EntryRule(all_of=[_flag("holds_wealth")]),
        goal=Goal(conditions=[GoalCondition(kind="rises_by_share", field="aum", value=0.10)]),
        touches=_touches(
            "您持有的理财产品本月有新动态，整理成一张图供您查看。",
            "到期资金的续投方案已为您准备好，需要时可以直接办理。",
            "https://example.invalid/posters/wealth-news.png",
        ),
    ),
    ConversionPath(
        name="new-customer",
        title="新客礼遇",
        priority=10,
        entry=EntryRule(
            all_of=[
                EntryCondition(field="days_since_added", op="le", value=7),
                _flag("holds_wealth", False),
                _flag("holds_fund", False),
                _flag("holds_insurance", False),
            ]
        ),
        goal=Goal(
            conditions=[
                GoalCondition(kind="turns_true", field="holds_wealth"),
                GoalCondition(kind="compare", field="aum", op="ge", value=1 * WAN),
            ]
        ),
        touches=_touches(
            "您好，很高兴认识您！我是您的客户经理，新客礼遇已为您备好，详情见海报。",
            "新客专享理财的办理步骤如下，三分钟即可完成。",
            "https://example.invalid/posters/new-customer.png",
        ),
    ),
]

DEFAULT_PRODUCTS: list[Product] = [
    Product(
        code="stable-wealth",
        title="稳健理财",
        target_tags=["代发工资客户", "资产5万-20万"],
        exclude_if=["holds_wealth"],
        content=TouchContent(text="稳健理财：波动小、起点低，适合工资结余的打理。"),
    ),
    Product(
        code="fund-portfolio",
        title="精选基金组合",
        target_tags=["资产20万-100万", "资产100万以上"],
        exclude_if=["holds_fund"],
        content=TouchContent(text="精选基金组合：分散配置，定投起步门槛低。"),
    ),
    Product(
        code="insurance-care",
        title="家庭保障险",
        target_tags=["历史资产10万以上", "代发工资客户"],
        exclude_if=["holds_insurance"],
        content=TouchContent(text="家庭保障：一份保单，守护全家。"),
    ),
    Product(
        code="credit-card",
        title="信用卡新客礼",
        exclude_if=["holds_credit_card"],
        content=TouchContent(text="信用卡新客礼：首刷有礼，免年费。"),
    ),
]


class ConversionPaths(Block):
    """The conversion paths and product catalogue. Load with `ConversionPaths.load("siyu")`.

    Edit a path's entry rule, goal, touches and contents, or the catalogue, in the Blocks page;
    the next enrolment and touch runs read them (running cohorts keep their path by name).
    """

    _block_type_name = "siyu Conversion Paths"
    _block_type_slug = "siyu-conversion-paths"
    _description = "The four-touch monthly conversion paths per customer type, and the products."

    paths: list[ConversionPath] = Field(
        default_factory=lambda: [p.model_copy(deep=True) for p in DEFAULT_PATHS],
        description="One path per customer type",
    )
    products: list[Product] = Field(
        default_factory=lambda: [p.model_copy(deep=True) for p in DEFAULT_PRODUCTS],
        description="Products touches 3 and 4 offer, first fitting one first",
    )

    @model_validator(mode="after")
    def _unique(self) -> ConversionPaths:
        names = [p.name for p in self.paths]
        if len(names) != len(set(names)):
            raise ValueError("two paths share a name: each path needs its own")
        priorities = [p.priority for p in self.paths if p.active]
        if len(priorities) != len(set(priorities)):
            raise ValueError(
                "two active paths share a priority: give each its own, so a customer "
                "matching both enters one of them predictably"
            )
        codes = [p.code for p in self.products]
        if len(codes) != len(set(codes)):
            raise ValueError("two products share a code: each product needs its own")
        return self

    def path(self, name: str) -> ConversionPath:
        """The path called `name`; a KeyError that says where to look otherwise."""
        for path in self.paths:
            if path.name == name:
                return path
        raise KeyError(
            f"no conversion path {name!r} in the siyu Conversion Paths block: it was renamed or "
            "deleted - restore it in the Blocks page to run its cohorts"
        )
