"""The WeCom connection: the WeComApp block, its client, pacing, and the client's error tree."""

from siyu.blocks.wecom.app import WeComApp
from siyu.blocks.wecom.calls import ApiCall, declared_calls
from siyu.blocks.wecom.client import WeComClient
from siyu.blocks.wecom.errors import (
    BUSY_CODES,
    CONFIG_CODES,
    RATE_LIMITED,
    TOKEN_CODES,
    ContactUnreachable,
    InvalidExternalUser,
    InvalidTag,
    WeComConfigError,
    WeComError,
    WeComOutcomeUnknown,
    WeComRowError,
    WeComUnavailable,
)
from siyu.blocks.wecom.messages import carries_key, mark_text
from siyu.blocks.wecom.pacing import (
    ApiRateLimit,
    LocalPacer,
    Pacer,
    PrefectPacer,
    RateLimits,
    ensure_rate_limits,
    limit_name,
)
from siyu.blocks.wecom.transport import DEFAULT_BASE_URL

__all__ = [
    "ApiCall",
    "ApiRateLimit",
    "BUSY_CODES",
    "CONFIG_CODES",
    "ContactUnreachable",
    "DEFAULT_BASE_URL",
    "InvalidExternalUser",
    "InvalidTag",
    "LocalPacer",
    "Pacer",
    "PrefectPacer",
    "RATE_LIMITED",
    "RateLimits",
    "TOKEN_CODES",
    "WeComApp",
    "WeComClient",
    "WeComConfigError",
    "WeComError",
    "WeComOutcomeUnknown",
    "WeComRowError",
    "WeComUnavailable",
    "carries_key",
    "declared_calls",
    "ensure_rate_limits",
    "limit_name",
    "mark_text",
]
