"""End users' JWTs: every way a token can be wrong is refused with its problem named,
and the key sources (HS256 secret, RS256/ES256 public key, JWKS URL) verify real tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventmill.errors import ConfigurationError
from eventmill.web.tokens import JwtSettings, JwtVerifier, TokenError
from tests.conftest import free_port

SECRET = "s3cret-for-tests-s3cret-for-tests-0123"


def _token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode({"sub": "u1", **claims}, key, algorithm=alg, headers=headers or None)


def _verifier(**settings: Any) -> JwtVerifier:
    return JwtVerifier(JwtSettings(**settings))


async def _problem(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    if token:
        assert token not in str(info.value)
    return info.value.problem


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(private: Any) -> str:
    public = private.public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


async def test_a_valid_hs256_token_names_its_user() -> None:
    v = _verifier(secret=SECRET)
    principal = await v.verify(_token({"exp": time.time() + 60}))
    assert principal.user_id == "u1"
    assert principal.expires_at is not None
    assert not principal.all_users
    assert principal.may_act_for("u1")
    assert not principal.may_act_for("u2")


async def test_the_all_users_claim_is_read_only_from_the_eventmill_claim() -> None:
    v = _verifier(secret=SECRET)
    assert (await v.verify(_token({"eventmill": {"all_users": True}}))).all_users
    assert not (await v.verify(_token({"eventmill": {"all_users": "yes"}}))).all_users
    assert not (await v.verify(_token({"all_users": True}))).all_users


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"exp": time.time() - 3600}, "expired"),
        ({"nbf": time.time() + 3600}, "not_yet_valid"),
        ({"aud": "someone-else"}, "bad_audience"),
        ({"iss": "https://evil.example"}, "bad_issuer"),
    ],
)
async def test_time_audience_and_issuer_are_checked(claims: dict[str, Any], problem: str) -> None:
    v = _verifier(secret=SECRET, audience="eventmill", issuer="https://auth.example")
    good = {"aud": "eventmill", "iss": "https://auth.example"}
    assert (await v.verify(_token(good))).user_id == "u1"
    assert await _problem(v, _token({**good, **claims})) == problem


async def test_a_missing_audience_or_issuer_is_refused_as_such_when_configured() -> None:
    """Named as the claim it lacks (it was ``malformed``, as if the JWT were broken)."""
    v = _verifier(secret=SECRET, audience="eventmill", issuer="https://auth.example")
    assert await _problem(v, _token({"iss": "https://auth.example"})) == "bad_audience"
    assert await _problem(v, _token({"aud": "eventmill"})) == "bad_issuer"


async def test_an_exp_given_as_a_numeric_string_still_expires_the_principal() -> None:
    """PyJWT accepts ``"exp": "1796599317"``: the connection it opens must still end
    then (its expiry was None, so an open WebSocket never expired)."""
    exp = int(time.time()) + 60
    principal = await _verifier(secret=SECRET).verify(_token({"exp": str(exp)}))
    assert principal.expires_at == exp


async def test_a_token_without_a_subject_is_refused() -> None:
    v = _verifier(secret=SECRET)
    no_sub = jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256")
    assert await _problem(v, no_sub) == "no_subject"
    assert await _problem(v, _token({"sub": ""})) == "no_subject"
    assert await _problem(v, _token({"sub": "  "})) == "no_subject"
    assert await _problem(v, _token({"sub": 42})) == "no_subject"


@pytest.mark.parametrize("sub", ["x" * 257, "x" * 1000, "a\x00b", "a\nb", "a\x7fb"])
async def test_a_subject_that_is_not_a_valid_user_id_is_refused(sub: str) -> None:
    """The user-id rule of the rest of the service (1-256 characters, no control
    characters): otherwise an end user could own what an admin cannot filter for."""
    v = _verifier(secret=SECRET)
    token = _token({"sub": sub})
    assert await _problem(v, token) == "no_subject"
    with pytest.raises(TokenError, match="not a valid user id"):
        await v.verify(token)
    assert (await v.verify(_token({"sub": "x" * 256}))).user_id == "x" * 256


async def test_a_wrong_signature_and_garbage_are_refused() -> None:
    v = _verifier(secret=SECRET)
    assert await _problem(v, _token({}, key="another-secret-another-secret-0000")) == (
        "bad_signature"
    )
    assert await _problem(v, "not.a.jwt") == "malformed"
    assert await _problem(v, "") == "malformed"


def _unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': 'u1', **claims})}."


async def test_alg_none_is_refused_with_every_key_source(rsa_key: rsa.RSAPrivateKey) -> None:
    for v in (_verifier(secret=SECRET), _verifier(public_key=_public_pem(rsa_key))):
        assert await _problem(v, _unsigned({})) == "algorithm_not_allowed"


async def test_algorithm_confusion_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token 'signed' with the RSA public key as HMAC secret must not verify."""
    pem = _public_pem(rsa_key)
    v = _verifier(public_key=pem)
    assert (await v.verify(_token({}, key=rsa_key, alg="RS256"))).user_id == "u1"
    header = {"alg": "HS256", "typ": "JWT"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps({'sub': 'u1'}).encode())}"
    signature = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert await _problem(v, f"{signing_input}.{b64(signature)}") == "algorithm_not_allowed"


async def test_an_es256_public_key_verifies_es256_tokens() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    v = _verifier(public_key=_public_pem(key))
    assert v.algorithms == ("ES256",)
    assert (await v.verify(_token({}, key=key, alg="ES256"))).user_id == "u1"


async def test_a_public_key_may_be_given_as_a_file(
    tmp_path: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "key.pem"
    path.write_text(_public_pem(rsa_key))
    v = _verifier(public_key=str(path))
    assert (await v.verify(_token({}, key=rsa_key, alg="RS256"))).user_id == "u1"


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"secret": "short"}, "32 bytes"),
        ({"secret": SECRET, "jwks_url": "http://127.0.0.1:1/jwks"}, "one of"),
        ({"public_key": "/no/such/file.pem"}, "neither a PEM"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "HS"),
    ],
)
def test_bad_configuration_is_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises((ConfigurationError, ValueError), match=match):
        JwtVerifier(JwtSettings(**settings))


async def test_nothing_configured_refuses_every_token() -> None:
    v = _verifier()
    assert not v.configured
    assert await _problem(v, _token({})) == "not_configured"


# -- JWKS -----------------------------------------------------------------------------


class KeyServer:
    """A real JWKS endpoint on 127.0.0.1 whose keys a test can rotate."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.port = free_port()

    def add(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def add_ec(self, kid: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = key
        return key

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def jwks(self, request: Request) -> JSONResponse:
        self.fetches += 1
        keys = []
        for kid, private in self.keys.items():
            if isinstance(private, rsa.RSAPrivateKey):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            else:
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return JSONResponse({"keys": keys})


@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    ks = KeyServer()
    app = Starlette(routes=[Route("/jwks.json", ks.jwks)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=ks.port, log_level="error"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield ks
    server.should_exit = True
    await task


async def test_jwks_keys_are_fetched_cached_and_refreshed_on_an_unknown_kid(
    key_server: KeyServer,
) -> None:
    first = key_server.add("k1")
    v = _verifier(jwks_url=key_server.url, jwks_min_refresh_seconds=0)
    assert (await v.verify(_token({}, key=first, alg="RS256", kid="k1"))).user_id == "u1"
    assert (await v.verify(_token({"sub": "u2"}, key=first, alg="RS256", kid="k1"))).user_id == (
        "u2"
    )
    assert key_server.fetches == 1  # cached

    second = key_server.add("k2")  # the issuer rotates
    assert (await v.verify(_token({}, key=second, alg="RS256", kid="k2"))).user_id == "u1"
    assert key_server.fetches == 2


async def test_unknown_kids_do_not_hammer_the_key_server(key_server: KeyServer) -> None:
    key = key_server.add("k1")
    v = _verifier(jwks_url=key_server.url, jwks_min_refresh_seconds=3600)
    await v.verify(_token({}, key=key, alg="RS256", kid="k1"))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(5):
        token = _token({}, key=stranger, alg="RS256", kid=f"unknown-{i}")
        assert await _problem(v, token) == "unknown_key"
    assert key_server.fetches == 1


async def test_a_jwks_hs256_token_is_refused(key_server: KeyServer) -> None:
    key_server.add("k1")
    v = _verifier(jwks_url=key_server.url)
    assert await _problem(v, _token({}, kid="k1")) == "algorithm_not_allowed"


async def test_a_token_whose_algorithm_is_not_its_keys_is_refused(
    key_server: KeyServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A JWKS of an RSA and an EC key: a token naming one key with the other's algorithm
    is refused (PyJWT itself would raise a TypeError, a 500 for the caller)."""
    rsa_private = key_server.add("k1")
    ec_private = key_server.add_ec("e1")
    v = _verifier(jwks_url=key_server.url)
    assert (await v.verify(_token({}, key=ec_private, alg="ES256", kid="e1"))).user_id == "u1"
    assert (await v.verify(_token({}, key=rsa_private, alg="RS256", kid="k1"))).user_id == "u1"
    assert await _problem(v, _token({}, key=rsa_private, alg="RS256", kid="e1")) == (
        "algorithm_not_allowed"
    )
    assert await _problem(v, _token({}, key=ec_private, alg="ES256", kid="k1")) == (
        "algorithm_not_allowed"
    )
    # one public key with both algorithms allowed: likewise
    both = _verifier(public_key=_public_pem(rsa_key), algorithms=["RS256", "ES256"])
    other = ec.generate_private_key(ec.SECP256R1())
    assert await _problem(both, _token({}, key=other, alg="ES256")) == "algorithm_not_allowed"


async def test_an_unreachable_jwks_is_a_clear_refusal() -> None:
    v = _verifier(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await _problem(v, _token({}, key=key, alg="RS256", kid="k1")) == "keys_unavailable"
