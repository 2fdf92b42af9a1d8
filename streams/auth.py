"""Bearer tokens for offers: HS256 JWTs naming a subject, a session, grants and a short expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import jwt

Grant = Literal["watch", "talk", "control"]
GRANTS: frozenset[str] = frozenset({"watch", "talk", "control"})
MAX_TTL_S = 600


class AuthError(ValueError):
    """A missing, malformed, expired or insufficient token (maps to HTTP 401/403)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Claims:
    subject: str
    session: str
    grants: frozenset[Grant]
    expires_at: float


class TokenAuthority:
    def __init__(self, secret: bytes, *, leeway_s: float = 5.0) -> None:
        self._secret = secret
        self.leeway_s = leeway_s

    def issue(self, subject: str, session: str, grants: set[Grant], *, ttl_s: int = MAX_TTL_S) -> str:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"token lifetime must be 1..{MAX_TTL_S} s, got {ttl_s}")
        unknown = set(grants) - GRANTS
        if unknown or not grants:
            raise ValueError(f"grants must be a non-empty subset of {sorted(GRANTS)}, got {sorted(grants)}")
        now = int(time.time())
        payload = {
            "sub": subject,
            "session": session,
            "grants": sorted(grants),
            "iat": now,
            "exp": now + ttl_s,
        }
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def verify(self, authorization: str | None, *, session: str, need: Grant) -> Claims:
        """The claims of an ``Authorization: Bearer`` header, or ``AuthError`` saying what is wrong."""
        if not authorization:
            raise AuthError("missing Authorization: Bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <token>'")
        try:
            data = jwt.decode(
                token.strip(),
                self._secret,
                algorithms=["HS256"],
                leeway=self.leeway_s,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if data["exp"] - data["iat"] > MAX_TTL_S:
            raise AuthError(f"token lifetime exceeds {MAX_TTL_S} s")
        grants = data.get("grants")
        if not isinstance(grants, list) or not set(grants) <= GRANTS:
            raise AuthError(f"token grants must be a list within {sorted(GRANTS)}")
        if data.get("session") != session:
            raise AuthError(f"token is for session {data.get('session')!r}, not {session!r}", status=403)
        if need not in grants:
            raise AuthError(f"token does not grant {need!r}", status=403)
        return Claims(str(data["sub"]), session, frozenset(cast(list[Grant], grants)), float(data["exp"]))
