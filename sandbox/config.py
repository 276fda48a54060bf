"""The sandbox's knobs (token life, how employees confirm, the platform's caps, payout limits)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from siyu.sandbox.faults import DEFAULT_PER_MINUTE
from siyu.sandbox.platform import REMIND_LIMIT_REACHED

ConfirmHabit = Literal["on_time", "late", "never"]


class SandboxConfig(BaseModel):
    """Every knob of the sandbox, flat, as `/sandbox/config` shows and changes them."""

    # tokens
    token_ttl_seconds: int = Field(7200, ge=1, description="expires_in of new tokens")
    # mass messages: how employees confirm, and the platform's caps when they do
    confirm_delay_seconds: float = Field(
        2.0, ge=0, description="Sandbox seconds until an on-time employee confirms"
    )
    late_share: float = Field(0.0, ge=0, le=1, description="Share of employees who confirm late")
    late_factor: float = Field(10.0, ge=1, description="A late employee waits this many delays")
    never_share: float = Field(0.0, ge=0, le=1, description="Share who never confirm")
    confirm_seed: int = Field(0, description="Seed of who is late or never confirms")
    employee_confirm: dict[str, ConfirmHabit] = Field(
        default_factory=dict, description="Per-employee habit, over the seeded draw"
    )
    monthly_cap: int = Field(4, ge=0, description="Mass messages per customer/group a month")
    daily_per_employee_cap: int = Field(1, ge=0, description="Per customer per employee a day")
    reminders_per_day: int = Field(3, ge=0, description="remind_groupmsg_send per message in 24 h")
    remind_limit_errcode: int = Field(
        REMIND_LIMIT_REACHED, description="Errcode past the reminder limit (unconfirmed)"
    )
    # customer groups
    group_max_members: int = Field(500, ge=1, description="Members a customer group holds")
    # payouts (WeChat Pay enterprise red packets); amounts in fen
    redpack_min_fen: int = Field(100, ge=1, description="Smallest red packet without scene_id")
    redpack_max_fen: int = Field(20_000, ge=1, description="Largest red packet without scene_id")
    redpack_max_with_scene_fen: int = Field(
        499_900, ge=1, description="Largest red packet with a scene_id (unconfirmed)"
    )
    redpack_daily_count: int = Field(10, ge=0, description="Red packets per customer a day")
    redpack_daily_fen: int = Field(100_000, ge=0, description="Fen per customer a day")
    merchant_daily_fen: int = Field(100_000_000, ge=0, description="Fen per merchant a day")
    merchant_balance_fen: int | None = Field(
        None, ge=0, description="Merchant balance; None is unlimited, 0 answers NOTENOUGH"
    )
    redpack_per_minute: int = Field(1800, ge=1, description="Payout calls a minute (real time)")
    redpack_receive_delay_seconds: float = Field(
        60.0, ge=0, description="Sandbox seconds until a customer opens a packet"
    )
    pay_api_key: str | None = Field(
        None, description="When set, payout calls must carry a valid MD5 `sign` with this key"
    )
    # call limits
    rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"*": DEFAULT_PER_MINUTE},
        description="Calls a minute per API path; * is the default for every API",
    )

    def updated(self, update: BaseModel) -> SandboxConfig:
        """This config with `update`'s set fields laid over; the dicts are merged key by key."""
        data = self.model_dump()
        for name, value in update.model_dump(exclude_unset=True).items():
            if value is None and name not in NULLABLE:
                continue
            if name in MERGED:
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return SandboxConfig(**data)


NULLABLE = {"merchant_balance_fen", "pay_api_key"}
MERGED = {"rate_limits", "employee_confirm"}


def _optional(name: str) -> tuple[Any, Any]:
    field = SandboxConfig.model_fields[name]
    # The bounds (ge, le) travel with the field, so a bad value is a 422, not a broken config.
    bounded = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return bounded | None, Field(None, description=field.description)


# A partial change of the config: every field optional, unknown names refused.
ConfigUpdate: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ConfigUpdate",
    __config__=ConfigDict(extra="forbid"),
    **{name: _optional(name) for name in SandboxConfig.model_fields},
)
