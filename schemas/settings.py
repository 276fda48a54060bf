"""siyu's settings for headless runs, read from SIYU_* environment variables in one place."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from siyu.schemas.export import DEFAULT_BRANCHES

SANDBOX_CORP_ID = "ww-sandbox-corp"
SANDBOX_SECRET = "sandbox-secret"  # noqa: S105 - the sandbox's published demo secret, not a real one
SANDBOX_AGENT_ID = 1000002

# Which environment this process runs in, chosen in one place: production (the default) takes
# its connections from saved blocks only; embedded (`siyu up`, the tests) may fall back to the
# SIYU_* variables and their sandbox defaults.
ENVIRONMENT_VARIABLE = "SIYU_ENVIRONMENT"
PRODUCTION = "production"
EMBEDDED = "embedded"
EnvironmentKind = Literal["production", "embedded"]

# Customer data is for siyu's own user only: 0700 directories, 0600 files.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


class MissingSalt(LookupError):
    """Production has no salt for mobile hashes: a random one would bind nothing on other workers."""


def environment_kind() -> EnvironmentKind:
    """The environment SIYU_ENVIRONMENT names: production unless it says embedded."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, PRODUCTION).strip().lower() or PRODUCTION
    if value not in (PRODUCTION, EMBEDDED):
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={value!r} is neither {PRODUCTION!r} nor {EMBEDDED!r}"
        )
    return value  # type: ignore[return-value]


def make_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700: it holds customer data."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def keep_files_private() -> None:
    """Make every file this process creates from now on 0600 (directories 0700).

    `siyu up` and the CLI call it first, so SQLite's database, WAL and journal files, Data Docs
    and quarantine files are private however the library that writes them opens them.
    """
    os.umask(PRIVATE_UMASK)


class Settings(BaseModel):
    """Where siyu keeps its state and how it reaches WeCom, when no block is configured.

    Embedded runs, `siyu up`, the tests and the benchmarks read it. A production run never does:
    a worker starts each run in a fresh temporary directory, where `./.siyu` would be a new
    home (and a new salt) every time, so production takes everything from the saved blocks.
    """

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

    def make_home(self) -> Path:
        """Create the home (0700: it holds siyu's database and customer data) and return it."""
        return make_private_dir(self.home)

    def mobile_salt(self) -> bytes:
        """The secret salt for hashing mobiles: SIYU_MOBILE_SALT; embedded, a home file (0600).

        Production never makes one up: each worker would hash mobiles differently and bind
        nothing, without an error.
        """
        env = os.environ.get("SIYU_MOBILE_SALT")
        if env:
            return env.encode()
        if environment_kind() != EMBEDDED:
            raise MissingSalt(
                "no salt for mobile hashes: set the siyu Export Source block's mobile_salt "
                "(one secret for every worker) or SIYU_MOBILE_SALT"
            )
        path = self.home / "secrets" / "mobile_salt"
        if not path.exists():
            self.make_home()
            make_private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
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
