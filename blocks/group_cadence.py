"""The weekly group cadence playbooks as blocks: template, product calendar, activity library, entries, payouts."""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
from typing import TYPE_CHECKING, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

SlotKind = Literal["product_post", "game", "big_activity", "meal_deals", "benefits_reminder"]
Delivery = Literal["employee_reminder", "mass_template"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WinnerRule = Literal["first_correct", "lottery", "all_players"]

if TYPE_CHECKING:
    from siyu.blocks.wecom_pay import PayClient

DEFAULT_PAY_BASE_URL = "https://api.mch.weixin.qq.com/"


class Slot(BaseModel):
    """One weekly slot: a weekday, a local time and what happens then."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", description="e.g. mon-post, tue-game")
    weekday: Weekday = Field(description="Day of the week")
    time: dt.time = Field(description="Local time (Asia/Shanghai)")
    kind: SlotKind = Field(description="product_post, game, big_activity, meal_deals, ...")
    delivery: Delivery = Field(
        default="employee_reminder",
        description="employee_reminder (no quota) or mass_template (4 a group a month)",
    )
    activity: str | None = Field(
        default=None, description="The activity library script a game or big activity runs"
    )
    place_product: bool = Field(
        default=False, description="Also place a product (right after a game: most active moment)"
    )
    text: str = Field(default="", description="Prepared text; a product post adds the product")

    @property
    def weekday_index(self) -> int:
        return WEEKDAYS.index(self.weekday)

    @model_validator(mode="after")
    def _game_has_script(self) -> Slot:
        if self.kind in ("game", "big_activity") and not self.activity:
            raise ValueError(f"slot {self.name}: a {self.kind} needs an activity script name")
        return self


class GroupOverride(BaseModel):
    """One group's exception to the template: skip slots, move one to another time, or pause it."""

    chat_id: str
    skip: list[str] = Field(default_factory=list, description="Slot names this group skips")
    times: dict[str, dt.time] = Field(
        default_factory=dict, description="Slot name -> another local time for this group"
    )
    paused: bool = Field(
        default=False,
        description=(
            "Paused by ops: every slot of this group is recorded skipped with reason "
            "'group paused by ops'"
        ),
    )


def default_slots() -> list[Slot]:
    """The default SOP: Mon/Wed/Fri posts, Tue/Thu games, the Friday big activity."""
    post = "今日理财资讯与优惠"
    return [
        Slot(name="mon-post", weekday="mon", time=dt.time(10), kind="product_post", text=post),
        Slot(name="tue-game", weekday="tue", time=dt.time(20), kind="game", activity="quiz",
             place_product=True, text="今晚小游戏：答题赢红包"),
        Slot(name="wed-post", weekday="wed", time=dt.time(10), kind="product_post", text=post),
        Slot(name="thu-game", weekday="thu", time=dt.time(20), kind="game", activity="dice",
             place_product=True, text="今晚小游戏：猜骰子赢红包"),
        Slot(name="fri-post", weekday="fri", time=dt.time(10), kind="product_post", text=post),
        Slot(name="fri-big", weekday="fri", time=dt.time(14), kind="big_activity",
             activity="friday-qa", place_product=True, text="周五大活动：抢答赢大奖"),
    ]  # fmt: skip


class HealthThresholds(BaseModel):
    """When a group counts as dying: participation low two weeks running, or a week's heavy loss."""

    min_participation: float = Field(default=0.10, ge=0, le=1, description="Players / members")
    weeks_low: int = Field(default=2, ge=1, description="Weeks running under min_participation")
    max_weekly_loss: float = Field(default=0.20, ge=0, le=1, description="Leaves / members a week")


class CadenceTemplate(Block):
    """The weekly slots, which groups follow them, and per-group overrides.

    Load with `CadenceTemplate.load("siyu")`.
    """

    _block_type_name = "siyu Cadence Template"
    _block_type_slug = "siyu-cadence-template"
    _description = "Weekly group slots (day, time, kind), who follows them, per-group overrides."

    name: str = Field(default="weekly", pattern=r"^[a-z0-9-]{1,32}$", description="Cadence name")
    version: str = Field(default="1", description="Bump when the slots change")
    slots: list[Slot] = Field(
        default_factory=default_slots,
        description="The weekly slots: weekday, local time, kind (post, game, big activity, ...)",
    )
    owners: list[str] = Field(
        default_factory=list, description="Groups of these owners (empty: all)"
    )
    name_patterns: list[str] = Field(
        default_factory=list, description="Group name patterns, e.g. *信用卡* (empty: all)"
    )
    group_tags: list[str] = Field(
        default_factory=list, description="Groups carrying one of these tags (empty: all)"
    )
    tagged_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "The groups' tags, kept here because WeCom's API lists no tags of a group: tag -> "
            'chat_ids or chat_id patterns, e.g. {"北区": ["wrN*"]}'
        ),
    )
    overrides: list[GroupOverride] = Field(
        default_factory=list, description="Per-group exceptions: skip a slot or move it"
    )
    announce_days_before: int = Field(default=1, ge=0, description="Games announced this early")
    health: HealthThresholds = Field(
        default_factory=HealthThresholds, description="When a group counts as dying"
    )

    @model_validator(mode="after")
    def _unique(self) -> CadenceTemplate:
        names = [s.name for s in self.slots]
        if len(names) != len(set(names)):
            raise ValueError("two slots share a name: each slot needs its own")
        known = set(names)
        for override in self.overrides:
            unknown = (set(override.skip) | set(override.times)) - known
            if unknown:
                raise ValueError(
                    f"override of {override.chat_id} names unknown slots {sorted(unknown)}"
                )
        return self

    def slot(self, name: str) -> Slot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(
            f"no slot {name!r} in cadence {self.name}: one of {[s.name for s in self.slots]}"
        )

    def tags_of(self, chat_id: str) -> set[str]:
        """The tags a group carries (`tagged_groups`), by its chat_id or a pattern of them."""
        return {
            tag
            for tag, chats in self.tagged_groups.items()
            if any(chat_id == c or fnmatch.fnmatchcase(chat_id, c) for c in chats)
        }

    def paused(self) -> set[str]:
        """The chat_ids ops paused: their slots are recorded skipped, nothing is sent."""
        return {o.chat_id for o in self.overrides if o.paused}

    def follows(self, owner: str, name: str, tags: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether a group (its owner, name and tags) follows this template."""
        if self.owners and owner not in self.owners:
            return False
        if self.name_patterns and not any(fnmatch.fnmatch(name, p) for p in self.name_patterns):
            return False
        return not self.group_tags or bool(set(self.group_tags) & set(tags))


class Promotion(BaseModel):
    """One product promotion: its date window, its groups, its priority and content."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    title: str
    content: str
    start: dt.date
    end: dt.date
    priority: int = 0
    groups: list[str] = Field(default_factory=list, description="chat_ids or patterns (empty: all)")

    @model_validator(mode="after")
    def _window(self) -> Promotion:
        if self.end < self.start:
            raise ValueError(f"promotion {self.id} ends before it starts")
        return self

    def targets(self, chat_id: str) -> bool:
        return not self.groups or any(fnmatch.fnmatch(chat_id, g) for g in self.groups)


class ProductCalendar(Block):
    """Promotions by date window; a post picks the best in-window one the group has not seen lately.

    Load with `ProductCalendar.load("siyu")`.
    """

    _block_type_name = "siyu Product Calendar"
    _block_type_slug = "siyu-product-calendar"
    _description = "Promotions with date windows, target groups, priority; rotation by days unseen."

    promotions: list[Promotion] = Field(
        default_factory=list,
        description="Promotions: date window, target groups, priority, content",
    )
    rotation_days: int = Field(
        default=7, ge=0, description="Not shown again to a group within N days"
    )


class Question(BaseModel):
    """One round's question and its answer key."""

    text: str
    options: list[str] = Field(default_factory=lambda: ["a", "b", "c"])
    answer: str

    @model_validator(mode="after")
    def _answer_is_option(self) -> Question:
        if self.options and self.answer not in self.options:
            raise ValueError(f"answer {self.answer!r} is not one of the options {self.options}")
        return self


class ActivityScript(BaseModel):
    """An activity: theme, rules, rounds, who wins, what they get and how it is paid."""

    name: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    kind: Literal["dice", "quiz", "lyrics", "riddle", "pinyin", "first_correct_qa", "join_hook"]
    theme: str = ""
    rules: str = ""
    questions: list[Question] = Field(default_factory=list)
    winner_rule: WinnerRule = "first_correct"
    winners_per_round: int = Field(default=5, ge=1)
    reward_fen: int = Field(default=500, ge=100, le=20_000, description="Per winner, 1-200 yuan")
    announce_delay_minutes: int = Field(default=5, ge=0)
    window_minutes: int = Field(default=60, gt=0, description="How long answers are taken")
    pay_after_working_days: int = Field(default=0, ge=0)
    paid_as: Literal["red_packet", "claim_with_manager"] = "red_packet"
    joined_within_days: int | None = Field(
        default=None, ge=1, description="Only members who joined this many days before it (hook)"
    )
    once_per_member: bool = Field(
        default=False,
        description="A member wins this script once ever, whichever day or group (the join hook)",
    )
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _a_hook_is_won_once(cls, data: object) -> object:
        # A join hook saved before `once_per_member` existed is still won once per member.
        if isinstance(data, dict) and data.get("kind") == "join_hook":
            data = {"once_per_member": True, **data}
        return data


def default_scripts() -> list[ActivityScript]:
    """A quiz, a dice guess, the Friday Q&A and the join hook."""
    return [
        ActivityScript(name="quiz", kind="quiz", theme="理财知识", window_minutes=45, questions=[
            Question(text="哪种产品保本？", options=["a", "b", "c"], answer="b")]),
        ActivityScript(name="dice", kind="dice", theme="猜骰子", winner_rule="lottery", window_minutes=45,
                       questions=[Question(text="猜点数大小", options=["big", "small"], answer="big")]),
        ActivityScript(name="friday-qa", kind="first_correct_qa", theme="周五抢答",
                       winners_per_round=3, reward_fen=1000, questions=[
            Question(text="第一题", answer="a"), Question(text="第二题", answer="c"),
            Question(text="第三题", answer="b")]),
        # One activity a day (asked at midnight, answers all day); each newcomer wins it once.
        ActivityScript(name="join-hook", kind="join_hook", theme="入群抽奖",
                       winner_rule="all_players", winners_per_round=10_000, reward_fen=500,
                       pay_after_working_days=5, joined_within_days=14, window_minutes=24 * 60,
                       once_per_member=True, questions=[
            Question(text="入群小游戏", options=[], answer="*")]),
    ]  # fmt: skip


class ActivityLibrary(Block):
    """The activity scripts managers pick from, and the reward budgets.

    Load with `ActivityLibrary.load("siyu")`.
    """

    _block_type_name = "siyu Activity Library"
    _block_type_slug = "siyu-activity-library"
    _description = "Activity scripts (rounds, answer keys, winners, rewards) and reward budgets."

    scripts: list[ActivityScript] = Field(
        default_factory=default_scripts,
        description="Activity scripts: rounds, answer keys, winners per round, rewards",
    )
    group_week_budget_fen: int = Field(default=20_000, ge=0, description="Per group per week")
    programme_month_budget_fen: int = Field(default=5_000_000, ge=0, description="Per month")
    budget_alert_share: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Ops are alerted once when a group's week or the month passes this share",
    )

    @field_validator("scripts")
    @classmethod
    def _unique(cls, scripts: list[ActivityScript]) -> list[ActivityScript]:
        names = [s.name for s in scripts]
        if len(names) != len(set(names)):
            raise ValueError("two activity scripts share a name")
        return scripts

    def script(self, name: str) -> ActivityScript:
        for script in self.scripts:
            if script.name == name:
                return script
        raise KeyError(f"no activity script {name!r}: add it to the Activity Library block")


class EntriesSource(Block):
    """Where game entries land: CSV files the answer form or chat archive exports.

    Load with `EntriesSource.load("siyu")`.
    """

    _block_type_name = "siyu Entries Source"
    _block_type_slug = "siyu-entries-source"
    _description = "The landing directory of game entries (external_userid,chat_id,answer,time)."

    landing_dir: str = Field(description="Directory the entries CSVs land in")
    pattern: str = Field(
        default="entries-{activity}-r{round}.csv", description="File name per activity and round"
    )

    def path_for(self, activity_key: str, round_: int = 0) -> str:
        """Where the entries of one round of an activity land."""
        safe = activity_key.replace(":", "_").replace("/", "_")
        return os.path.join(self.landing_dir, self.pattern.format(activity=safe, round=round_))


class PayoutAccount(Block):
    """The merchant account red packets are paid from (WeChat Pay, or the sandbox).

    Load with `PayoutAccount.load("siyu")`.
    """

    _block_type_name = "siyu Payout Account"
    _block_type_slug = "siyu-payout-account"
    _description = "WeChat Pay merchant for enterprise red packets; base URL configurable."

    pay_base_url: str = Field(default=DEFAULT_PAY_BASE_URL, description="SIYU_PAY_BASE_URL")
    mch_id: str = Field(default="1900000109", description="The WeChat Pay merchant id")
    wxappid: str = Field(description="The corp id")
    api_key: SecretStr = Field(default=SecretStr(""), description="Merchant API key (MD5 sign)")
    payment_secret: SecretStr = Field(default=SecretStr(""), description="WeCom payment secret")
    sender_name: str = Field(
        default="银行福利官", description="Sender name shown on the red packet"
    )
    per_minute: int = Field(default=1_800, ge=1, description="Red packets a minute (WeChat Pay)")
    shared_pacing: bool = Field(
        default=True,
        description=(
            "Pace payouts through a Prefect rate limit shared by every worker (the settlement "
            "creates it) instead of per process"
        ),
    )

    def get_client(self) -> PayClient:
        """A payout client for this merchant: the only place the merchant's keys are used."""
        from siyu.blocks.wecom.pacing import PrefectPacer, RateLimits
        from siyu.blocks.wecom_pay import PayClient, pacing_scope

        pacer = None
        if self.shared_pacing:
            pacer = PrefectPacer(pacing_scope(self), RateLimits(self.per_minute))
        return PayClient(self, pacer=pacer)

    @classmethod
    def from_env(cls, corp_id: str) -> PayoutAccount:
        """The account the SIYU_PAY_* variables describe (embedded runs and tests)."""
        return cls(
            pay_base_url=os.environ.get("SIYU_PAY_BASE_URL", DEFAULT_PAY_BASE_URL),
            mch_id=os.environ.get("SIYU_PAY_MCH_ID", "1900000109"),
            wxappid=corp_id,
            api_key=SecretStr(os.environ.get("SIYU_PAY_API_KEY", "")),
        )
