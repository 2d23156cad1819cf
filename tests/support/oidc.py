"""A real OIDC issuer on 127.0.0.1: discovery document, JWKS and token minting.

It stands in for PocketID. Its keys are RSA keys made with `cryptography`;
a test can rotate them, count how often the JWKS is fetched, or take the
issuer down.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support.ports import free_port

CLIENT_ID = "manager"
ADMIN_GROUP = "manager-admins"


class Issuer:
    """An identity provider serving discovery and JWKS over real HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jwks_fetches = 0
        self.available = True
        self.key_number = 0
        self.key, self.kid = self._new_key()
        self._runner: web.AppRunner | None = None

    def _new_key(self) -> tuple[rsa.RSAPrivateKey, str]:
        self.key_number += 1
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key, f"test-key-{self.key_number}"

    def rotate(self) -> None:
        """Replace the signing key; the JWKS then lists only the new one."""
        self.key, self.kid = self._new_key()

    async def start(self) -> Issuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self.available:
            return web.Response(status=503)
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if not self.available:
            return web.Response(status=503)
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        public.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return web.json_response({"keys": [public]})

    def token(
        self,
        subject: str,
        groups: tuple[str, ...] = (),
        *,
        audience: str = CLIENT_ID,
        issuer: str | None = None,
        lifetime: float = 3600,
        not_before: float | None = None,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT as PocketID would issue it; every part can be spoiled."""
        now = time.time()
        payload: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": subject,
            "aud": audience,
            "iat": int(now),
            "exp": int(now + lifetime),
            "groups": list(groups),
            **claims,
        }
        if not_before is not None:
            payload["nbf"] = int(not_before)
        return jwt.encode(
            payload,
            key or self.key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )
