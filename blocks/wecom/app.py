"""The WeComApp block: a WeCom self-built app's corp id, secret and limits, and its client."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from siyu.blocks.wecom.client import WeComClient
from siyu.blocks.wecom.pacing import PrefectPacer, RateLimits
from siyu.blocks.wecom.transport import DEFAULT_BASE_URL, pacing_scope


class WeComApp(Block):
    """A WeCom self-built app: corp id, secret and limits. Load with WeComApp.load("siyu").

    Example:
        ```python
        from siyu.blocks.wecom import WeComApp

        with WeComApp.load("siyu").get_client() as client:
            employees = client.get_follow_user_list()
        ```
    """

    _block_type_name = "WeCom App"
    _block_type_slug = "siyu-wecom-app"
    _description = "A WeCom self-built app (corp id, secret, agent id) and its API limits."

    corp_id: str = Field(
        description="The enterprise's corp id (ww...), from the WeCom admin console"
    )
    secret: SecretStr = Field(description="The app's secret; only get_client() reads it")
    agent_id: int | None = Field(
        default=None, description="The app's agent id, needed to send app messages to employees"
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="WeCom API root; point it at the sandbox's /cgi-bin/ for tests and demos",
    )
    rate_limit_per_minute: int = Field(
        default=10_000, ge=1, description="Calls a minute per API path the client stays under"
    )
    api_rate_limits: dict[str, int] = Field(
        default_factory=dict,
        description='Per-API calls a minute overriding the default, e.g. {"webhook/send": 20}',
    )
    timeout_seconds: float = Field(
        default=10, gt=0, description="Seconds to wait for a connection and for each answer"
    )
    shared_pacing: bool = Field(
        default=False,
        description=(
            "Pace calls through Prefect rate limits shared by every worker (wecom-<api>, made "
            "by siyu up) instead of per process"
        ),
    )

    def get_client(self) -> WeComClient:
        """A client for this app: the only place the secret is unwrapped."""
        pacer = None
        if self.shared_pacing:
            pacer = PrefectPacer(
                pacing_scope(self.base_url, self.corp_id),
                RateLimits(self.rate_limit_per_minute, dict(self.api_rate_limits)),
            )
        return WeComClient(
            self.base_url,
            self.corp_id,
            self.secret.get_secret_value(),
            agent_id=self.agent_id,
            timeout=self.timeout_seconds,
            rate_limit_per_minute=self.rate_limit_per_minute,
            api_rate_limits=dict(self.api_rate_limits),
            pacer=pacer,
        )
