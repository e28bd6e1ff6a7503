"""A small OIDC provider for tests: real RSA and EC keys (cryptography), a JWKS served over
HTTP on a free loopback port (aiohttp, in the test's event loop), and tokens signed with PyJWT,
including the hostile ones (alg none, HS256 keyed with the public key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://id.chatplane.test/"
AUDIENCE = "chatplane"


@dataclass
class SigningKey:
    """A private key, its kid and algorithm, and its public JWK."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def rsa(cls, kid: str | None = None) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or f"rsa-{uuid.uuid4().hex[:8]}", "RS256", private)

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        return cls(
            kid or f"ec-{uuid.uuid4().hex[:8]}", "ES256", ec.generate_private_key(ec.SECP256R1())
        )

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, **header: Any) -> str:
        return jwt.encode(
            claims,
            self.private,
            algorithm=self.algorithm,
            headers={"kid": kid or self.kid, **header},
        )


def claims(
    user: str, tenant: str, *, scope: str | None = "chat", lifetime: float = 300, **extra: Any
) -> dict[str, Any]:
    """Valid claims for `user` of `tenant`."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "tenant": tenant,
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
    }
    if scope is not None:
        values["scope"] = scope
    values.update(extra)
    return values


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims_: dict[str, Any], kid: str) -> str:
    """A token with alg none (no signature)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims_).encode())}."


def hs256_with_public_key(claims_: dict[str, Any], key: SigningKey) -> str:
    """The classic key-confusion forgery: HS256 keyed with the RSA public key's PEM."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = _b64(json.dumps(claims_).encode())
    mac = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


@dataclass
class Provider:
    """The published keys (change `published` to rotate) and how often the JWKS was fetched."""

    published: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    url: str = ""

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": [key.public_jwk() for key in self.published]})


@asynccontextmanager
async def running_provider(*keys: SigningKey) -> AsyncIterator[Provider]:
    """The provider serving /jwks.json on 127.0.0.1 (a free port) until the block ends."""
    provider = Provider(published=list(keys))
    app = web.Application()
    app.router.add_get("/jwks.json", provider._jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider.url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        yield provider
    finally:
        await runner.cleanup()
