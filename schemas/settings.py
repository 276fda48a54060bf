"""siyu's settings for headless runs, read from SIYU_* environment variables in one place."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from siyu.schemas.export import DEFAULT_BRANCHES

SANDBOX_CORP_ID = "ww-sandbox-corp"
SANDBOX_SECRET = "sandbox-secret"  # noqa: S105 - the sandbox's published demo secret, not a real one
SANDBOX_AGENT_ID = 1000002


class Settings(BaseModel):
    """Where siyu keeps its state and how it reaches WeCom, when no block is configured."""

    home: Path = Field(description="Data directory (SIYU_HOME): database, landing, reports")
    database_url: str = Field(description="SQLAlchemy URL of siyu's database (SIYU_DATABASE_URL)")
    wecom_base_url: str = Field(description="WeCom API base (SIYU_WECOM_BASE_URL)")
    wecom_corp_id: str = Field(description="WeCom corp id (SIYU_WECOM_CORP_ID)")
    wecom_secret: SecretStr = Field(description="WeCom app secret (SIYU_WECOM_SECRET)")
    wecom_agent_id: int = Field(description="WeCom app agent id (SIYU_WECOM_AGENT_ID)")
    branches: tuple[str, ...] = Field(
        description="Known branch codes (SIYU_BRANCHES, comma-separated)"
    )

    @property
    def landing_dir(self) -> Path:
        """Where daily exports land."""
        return self.home / "landing"

    @property
    def reports_dir(self) -> Path:
        """Where Data Docs and other run reports are kept."""
        return self.home / "reports"

    def mobile_salt(self) -> bytes:
        """The secret salt for hashing mobiles: SIYU_MOBILE_SALT, else a file made once, 0600."""
        env = os.environ.get("SIYU_MOBILE_SALT")
        if env:
            return env.encode()
        path = self.home / "secrets" / "mobile_salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    @classmethod
    def from_env(cls) -> Settings:
        """Read SIYU_* variables, with embedded defaults (SQLite under ./.siyu, the sandbox)."""
        env = os.environ
        home = Path(env.get("SIYU_HOME", ".siyu")).resolve()
        branches = env.get("SIYU_BRANCHES")
        return cls(
            home=home,
            database_url=env.get("SIYU_DATABASE_URL") or f"sqlite:///{home / 'siyu.db'}",
            wecom_base_url=env.get("SIYU_WECOM_BASE_URL", "http://127.0.0.1:8055/cgi-bin/"),
            wecom_corp_id=env.get("SIYU_WECOM_CORP_ID", SANDBOX_CORP_ID),
            wecom_secret=SecretStr(env.get("SIYU_WECOM_SECRET", SANDBOX_SECRET)),
            wecom_agent_id=int(env.get("SIYU_WECOM_AGENT_ID", str(SANDBOX_AGENT_ID))),
            branches=tuple(b.strip() for b in branches.split(",") if b.strip())
            if branches
            else DEFAULT_BRANCHES,
        )
