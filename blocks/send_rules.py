"""The SendRules block: WeCom's caps, quiet hours, the bank's calendar and priorities, as data."""

from __future__ import annotations

import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, field_validator, model_validator

TargetKind = Literal["customer", "group"]
Channel = Literal["mass_template", "employee_reminder"]


class SendCap(BaseModel):
    """How many sends of one channel a target may receive; an absent limit is no limit."""

    target_kind: TargetKind = Field(description="Who receives: a customer or a customer group")
    channel: Channel = Field(description="How it travels: mass_template or employee_reminder")
    per_month: int | None = Field(
        default=None, ge=0, description="At most this many in a calendar month (empty: no cap)"
    )
    per_sender_per_day: int | None = Field(
        default=None,
        ge=0,
        description="At most this many a calendar day from the same employee (empty: no cap)",
    )


class ChannelTiming(BaseModel):
    """When a channel may send: outside quiet hours, on working days only, or both."""

    channel: Channel = Field(description="The channel these timings apply to")
    quiet_hours: bool = Field(default=True, description="Hold sends during the quiet hours")
    working_days_only: bool = Field(
        default=True, description="Hold sends on weekends and holidays of the working-day calendar"
    )


class SendPriority(BaseModel):
    """The priority of a programme's steps; the higher one wins a target's last slot."""

    programme: str = Field(description="Programme name or pattern, e.g. path:* or cadence:weekly")
    step: str = Field(default="*", description="Step name or pattern, e.g. touch-2 or *")
    priority: int = Field(description="Higher wins the last slot of a month")


# WeCom's published caps (WECOM_API.md): 4 mass messages a calendar month to a customer or a
# group, and (operators' reports) 1 a day to a customer from the same employee. The employee
# reminder is an app message to our own employee, which WeCom does not cap.
DEFAULT_CAPS: list[SendCap] = [
    SendCap(target_kind="customer", channel="mass_template", per_month=4, per_sender_per_day=1),
    SendCap(target_kind="group", channel="mass_template", per_month=4),
]
DEFAULT_TIMINGS: list[ChannelTiming] = [
    ChannelTiming(channel="mass_template"),
    ChannelTiming(channel="employee_reminder"),
]
# A conversion-path touch before a cadence post, both before a holiday greeting.
DEFAULT_PRIORITIES: list[SendPriority] = [
    SendPriority(programme="path:*", priority=100),
    SendPriority(programme="cadence:*", priority=50),
    SendPriority(programme="greeting:*", priority=10),
]


class SendRules(Block):
    """The rules every send obeys. Load with `SendRules.load("siyu")`.

    Caps per target kind and channel, quiet hours and days, the bank's own working-day
    calendar (it overrides and extends the `chinesecalendar` package) and the priorities that
    decide who gets a target's last slot. Edit them in the UI's Blocks page; the next plan uses
    them.
    """

    _block_type_name = "siyu Send Rules"
    _block_type_slug = "siyu-send-rules"
    _description = "WeCom's caps, quiet hours, the bank's working-day calendar, send priorities."

    time_zone: str = Field(
        default="Asia/Shanghai",
        description="Time zone of calendar days, months and quiet hours (WeCom counts in China time)",
    )
    caps: list[SendCap] = Field(
        default_factory=lambda: [c.model_copy() for c in DEFAULT_CAPS],
        description="Caps per target kind and channel; a pair not listed is uncapped",
    )
    quiet_start: dt.time = Field(
        default=dt.time(21, 0), description="Quiet hours begin at this local time"
    )
    quiet_end: dt.time = Field(
        default=dt.time(8, 0),
        description="Quiet hours end at this local time (before quiet_start: they span midnight)",
    )
    timings: list[ChannelTiming] = Field(
        default_factory=lambda: [t.model_copy() for t in DEFAULT_TIMINGS],
        description="Per channel: whether quiet hours and non-working days hold its sends",
    )
    holidays: list[dt.date] = Field(
        default_factory=list,
        description="The bank's days off that the package does not know or gets wrong",
    )
    workdays: list[dt.date] = Field(
        default_factory=list,
        description="The bank's worked days (adjusted weekends) the package does not know",
    )
    known_until: dt.date | None = Field(
        default=None,
        description=(
            "The bank's calendar above is complete through this date: past the package's years, "
            "a day not listed is a plain weekday or weekend"
        ),
    )
    priorities: list[SendPriority] = Field(
        default_factory=lambda: [p.model_copy() for p in DEFAULT_PRIORITIES],
        description="Priorities per programme and step, first match wins",
    )
    default_priority: int = Field(
        default=0, description="Priority of a send no rule matches and that brings none"
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name like Asia/Shanghai"
            ) from error
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SendRules:
        pairs = [(c.target_kind, c.channel) for c in self.caps]
        if len(pairs) != len(set(pairs)):
            raise ValueError(
                "caps list a (target_kind, channel) pair twice: keep one line per pair"
            )
        channels = [t.channel for t in self.timings]
        if len(channels) != len(set(channels)):
            raise ValueError("timings list a channel twice: keep one line per channel")
        both = sorted(set(self.holidays) & set(self.workdays))
        if both:
            raise ValueError(
                f"{both[0].isoformat()} is both a holiday and a workday in the bank's calendar: keep one"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The time zone of days, months and quiet hours."""
        return ZoneInfo(self.time_zone)

    def cap(self, target_kind: str, channel: str) -> SendCap:
        """The cap of a (target kind, channel) pair; an unlisted pair is uncapped."""
        for cap in self.caps:
            if cap.target_kind == target_kind and cap.channel == channel:
                return cap
        return SendCap.model_construct(target_kind=target_kind, channel=channel)

    def timing(self, channel: str) -> ChannelTiming:
        """When `channel` may send; an unlisted channel obeys both quiet hours and days."""
        for timing in self.timings:
            if timing.channel == channel:
                return timing
        return ChannelTiming.model_construct(
            channel=channel, quiet_hours=True, working_days_only=True
        )
