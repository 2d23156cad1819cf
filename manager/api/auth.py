"""Who is calling: PocketID users, machine API tokens, or the local admin.

Users send `Authorization: Bearer <JWT>` issued by PocketID. The signature,
issuer, audience (the client id), expiry and not-before are checked against
the keys the issuer publishes: its OIDC discovery document names the JWKS.
Keys are cached for `pocket_id.jwks_cache_seconds`; a token signed with a
key id the cache does not know triggers a refresh, at most once every
`pocket_id.jwks_refresh_interval`, so a flood of made-up key ids cannot
hammer the issuer.

Machines send `Authorization: Bearer pfy_...`: an API token scoped to one
tenant, looked up by its hash on every request so that a revoked token is
refused at once.

With no PocketID configured (development only; production refuses to start)
every request without an API token acts as a local admin.

No token or header value is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson

from manager.api.errors import AuthenticationError, ServiceUnavailableError
from manager.config import PocketIdSettings
from manager.store import access
from manager.store.access import TOKEN_PREFIX, ApiToken
from manager.store.common import Queryable

log = logging.getLogger(__name__)

USER = "user"
API_TOKEN = "api_token"
LOCAL = "local"

LOCAL_ADMIN_SUBJECT = "local-admin"

# Asymmetric algorithms only: an HMAC "key" from a JWKS would be public.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
     "ES512", "EdDSA"}
)  # fmt: skip

# Tolerated clock difference between PocketID and this host.
CLOCK_SKEW_SECONDS = 30

# How long one call to the issuer may take.
ISSUER_TIMEOUT_SECONDS = 5.0

UNAVAILABLE_MESSAGE = "identity provider unavailable: cannot verify tokens"

# The most bytes read from a discovery document or JWKS.
MAX_ISSUER_DOCUMENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    kind: str
    subject: str
    groups: tuple[str, ...] = ()
    is_admin: bool = False
    name: str | None = None
    email: str | None = None
    api_token: ApiToken | None = None


LOCAL_ADMIN = Principal(kind=LOCAL, subject=LOCAL_ADMIN_SUBJECT, is_admin=True)


class KeySet:
    """The issuer's signing keys, fetched through its discovery document."""

    def __init__(
        self,
        issuer_url: str,
        cache_seconds: float,
        refresh_interval: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.refresh_interval = refresh_interval
        self.session = session
        self.issuer: str | None = None
        self.jwks_uri: str | None = None
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def key_for(self, key_id: str | None) -> jwt.PyJWK:
        """The key with this id, refreshing the set when that may help."""
        if self._stale():
            await self._refresh(reason="expired")
        key = self._lookup(key_id)
        if key is None and self._may_refresh():
            await self._refresh(reason="unknown key id")
            key = self._lookup(key_id)
        if key is None and not self.keys:
            raise ServiceUnavailableError(UNAVAILABLE_MESSAGE)
        if key is None:
            raise AuthenticationError("token signed with an unknown key")
        return key

    def _lookup(self, key_id: str | None) -> jwt.PyJWK | None:
        if key_id is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(key_id)

    def _stale(self) -> bool:
        # A failed refresh is not retried before the interval: an issuer
        # that is down is not asked on every request.
        if not self._may_refresh():
            return False
        if self.fetched_at is None:
            return True
        return time.monotonic() - self.fetched_at > self.cache_seconds

    def _may_refresh(self) -> bool:
        if self.attempted_at is None:
            return True
        return time.monotonic() - self.attempted_at >= self.refresh_interval

    async def _refresh(self, reason: str) -> None:
        attempted_before = self.attempted_at
        async with self._lock:
            # Whoever waited on the lock finds the refresh already done.
            if self.attempted_at != attempted_before:
                return
            self.attempted_at = time.monotonic()
            try:
                await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning(
                    "identity provider keys not refreshed",
                    extra={
                        "issuer": self.issuer_url,
                        "reason": reason,
                        "error": str(error) or type(error).__name__,
                    },
                )
                if not self.keys:
                    raise ServiceUnavailableError(UNAVAILABLE_MESSAGE) from None
                return
            log.info(
                "identity provider keys refreshed",
                extra={
                    "issuer": self.issuer_url,
                    "reason": reason,
                    "keys": len(self.keys),
                },
            )

    async def _fetch(self) -> None:
        if self.jwks_uri is None or self.issuer is None:
            discovery = await self._get_json(
                f"{self.issuer_url}/.well-known/openid-configuration"
            )
            issuer = discovery.get("issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
                raise ValueError("discovery document lacks issuer or jwks_uri")
            self.issuer, self.jwks_uri = issuer, jwks_uri
        self.fetches += 1
        document = await self._get_json(self.jwks_uri)
        self.keys = _signing_keys(document)
        self.fetched_at = time.monotonic()

    async def _get_json(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=ISSUER_TIMEOUT_SECONDS)
        async with self.session.get(
            url, timeout=timeout, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered HTTP {response.status}")
            body = await response.content.read(MAX_ISSUER_DOCUMENT_BYTES + 1)
        if len(body) > MAX_ISSUER_DOCUMENT_BYTES:
            raise ValueError(f"{url} answered more than 1 MiB")
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document


def _signing_keys(document: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    """The usable signing keys of a JWKS by key id; others are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS has no keys list")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            keys[entry.get("kid")] = key
    return keys


class Authenticator:
    """Turns a request's Authorization header into a Principal."""

    def __init__(self, settings: PocketIdSettings, database: Queryable) -> None:
        self.settings = settings
        self.database = database
        self.keys: KeySet | None = None
        self.session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.host is not None

    async def start(self) -> None:
        if self.settings.host is None:
            log.warning(
                "authentication disabled: every request acts as a local admin",
                extra={"setting": "PFY_POCKET_ID_HOST"},
            )
            return
        self.session = aiohttp.ClientSession()
        self.keys = KeySet(
            self.settings.host,
            self.settings.jwks_cache_seconds,
            self.settings.jwks_refresh_interval,
            self.session,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def authenticate(self, header: str | None) -> Principal:
        """The caller, or AuthenticationError saying what is wrong."""
        token = _bearer_token(header)
        if token is not None and token.startswith(TOKEN_PREFIX):
            return await self._api_token(token)
        if self.keys is None:
            return LOCAL_ADMIN
        if token is None:
            raise AuthenticationError("missing bearer token")
        claims = await self._verify(token)
        return self._user(claims)

    async def _api_token(self, token: str) -> Principal:
        found = await access.authenticate_token(self.database, token)
        if found is None:
            raise AuthenticationError("API token is unknown or revoked")
        return Principal(
            kind=API_TOKEN,
            subject=str(found.id),
            name=found.name,
            api_token=found,
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        assert self.keys is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("bearer token is not a JWT") from None
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise AuthenticationError("token signed with an unsupported algorithm")
        key = await self.keys.key_for(header.get("kid"))
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm_name],
                audience=self.settings.client_id,
                issuer=self.keys.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature does not verify") from None
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"token refused: {_reason(error)}") from None

    def _user(self, claims: dict[str, Any]) -> Principal:
        groups = _groups(claims.get(self.settings.groups_claim))
        return Principal(
            kind=USER,
            subject=str(claims["sub"]),
            groups=groups,
            is_admin=self.settings.admin_group in groups,
            name=_text_claim(claims, "name")
            or _text_claim(claims, "preferred_username"),
            email=_text_claim(claims, "email"),
        )


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("expected 'Authorization: Bearer <token>'")
    return token.strip()


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(item) for item in value if isinstance(item, str | int))
    return ()


def _text_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def _reason(error: jwt.PyJWTError) -> str:
    # pyjwt's messages describe the claim, never the token itself.
    return str(error) or "invalid token"
