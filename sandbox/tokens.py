"""The sandbox's access tokens: issued for the demo corp's secret, expiring on the sandbox clock."""

from __future__ import annotations

import secrets
from typing import Any

from siyu.sandbox.backend import Backend
from siyu.sandbox.platform import (
    INVALID_CORPID,
    INVALID_CREDENTIAL,
    INVALID_TOKEN,
    MISSING_CORPID,
    MISSING_SECRET,
    MISSING_TOKEN,
    TOKEN_EXPIRED,
    WeComError,
)
from siyu.schemas.settings import SANDBOX_CORP_ID, SANDBOX_SECRET


class TokenBackend(Backend):
    """Issued tokens and when they expire. A corp reset keeps them: they are credentials."""

    kinds = ("token",)

    def clear(self) -> None:
        self.tokens: dict[str, float] = {}

    def load(self, kind: str, body: Any) -> None:
        self.tokens[body["token"]] = body["expires_at"]

    def issue(self, corpid: str | None, secret: str | None) -> dict[str, Any]:
        if not corpid:
            raise WeComError(MISSING_CORPID, "missing corpid")
        if not secret:
            raise WeComError(MISSING_SECRET, "missing corpsecret")
        if corpid != SANDBOX_CORP_ID:
            raise WeComError(INVALID_CORPID, "invalid corpid")
        if not secrets.compare_digest(secret, SANDBOX_SECRET):
            raise WeComError(INVALID_CREDENTIAL, "invalid credential: check the corp secret")
        now = self.now()
        # Forget tokens long dead so the table does not grow without end.
        stale = [t for t, exp in self.tokens.items() if exp < now - 3600]
        for token in stale:
            del self.tokens[token]
            self.store.delete("token", token)
        ttl = self.config.token_ttl_seconds
        token = secrets.token_urlsafe(48)
        self.tokens[token] = now + ttl
        self.store.put("token", token, {"token": token, "expires_at": now + ttl})
        return {"access_token": token, "expires_in": ttl}

    def check(self, token: str | None) -> None:
        if not token:
            raise WeComError(MISSING_TOKEN, "access_token missing")
        expires_at = self.tokens.get(token)
        if expires_at is None:
            raise WeComError(INVALID_TOKEN, "invalid access_token")
        if expires_at <= self.now():
            raise WeComError(TOKEN_EXPIRED, "access_token expired")

    def expire_all(self) -> int:
        now = self.now()
        for token in self.tokens:
            self.tokens[token] = now
        self.store.put_many("token", ((t, {"token": t, "expires_at": now}) for t in self.tokens))
        return len(self.tokens)
