"""End users' JWTs: configuration (:class:`JwtSettings`), verification
(:class:`JwtVerifier`) and the caller they name (:class:`Principal`).

The accepted algorithms are pinned by configuration: an HS256 secret, an RS256/ES256
public key, or a JWKS URL (keys cached, fetched again on an unknown ``kid`` at most
every ``jwks_min_refresh_seconds``). ``alg: none`` and algorithm confusion (an HMAC
token signed with the public key) are refused; ``exp`` and ``nbf`` are checked when
present, ``aud`` and ``iss`` when configured. The user id is ``sub``, which must be one
(1-256 characters without control characters, the rule every user id follows). No token
or key ever appears in an error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import jwt
from pydantic import BaseModel, Field, SecretStr, model_validator

from eventmill.errors import ConfigurationError
from eventmill.events.envelope import USER_ID_RE
from eventmill.store import ApiKeyRecord
from eventmill.web.errors import AuthenticationError

__all__ = ["JwtSettings", "JwtVerifier", "Principal", "TokenError", "TokenProblem"]

TokenProblem = Literal[
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_audience",
    "bad_issuer",
    "no_subject",
    "unknown_key",
    "algorithm_not_allowed",
    "not_configured",
    "keys_unavailable",
]


class TokenError(AuthenticationError):
    """An end user's JWT is missing or not acceptable; ``problem`` says why."""

    def __init__(self, problem: TokenProblem, message: str) -> None:
        super().__init__(message)
        self.problem: TokenProblem = problem


# -- configuration ----------------------------------------------------------------------


class JwtSettings(BaseModel):
    """How end users' JWTs are verified (settings section ``jwt``, env ``EVENTMILL_JWT__*``).

    Configure exactly one key source: ``secret`` (HS256), ``public_key`` (RS256 or
    ES256, by the key's type) or ``jwks_url``. With none, routes for end users answer
    401 ``token_not_configured`` and API keys work as before.
    """

    model_config = {"extra": "forbid", "frozen": True}

    secret: SecretStr | None = None
    """HS256 shared secret (``EVENTMILL_JWT__SECRET``); at least 32 bytes."""
    public_key: str | None = None
    """PEM public key (RSA → RS256, EC P-256 → ES256), or the path of a PEM file
    (``EVENTMILL_JWT__PUBLIC_KEY``)."""
    jwks_url: str | None = None
    """URL of a JSON Web Key Set (``EVENTMILL_JWT__JWKS_URL``); RS256 and ES256 keys."""
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256"]] = (
        Field(default_factory=list)
    )
    """Accepted algorithms (default: derived from the key: HS256, RS256 or ES256;
    with a JWKS URL, RS256 and ES256). ``none`` can never be configured."""
    audience: str | None = None
    """Required ``aud`` (``EVENTMILL_JWT__AUDIENCE``); unchecked when unset."""
    issuer: str | None = None
    """Required ``iss`` (``EVENTMILL_JWT__ISSUER``); unchecked when unset."""
    leeway_seconds: float = Field(default=5.0, ge=0, le=300)
    """Clock skew allowed on ``exp`` and ``nbf`` (default 5 s)."""
    cookie_name: str = "eventmill_token"
    """Cookie a browser may carry the token in, where the route allows it."""
    jwks_cache_seconds: float = Field(default=300.0, gt=0)
    """How long fetched JWKS keys are used before they are fetched again (default 300)."""
    jwks_min_refresh_seconds: float = Field(default=10.0, ge=0)
    """Shortest interval between two fetches of the JWKS (an unknown ``kid`` triggers
    one; default 10 s), so unknown ids cannot make eventmill hammer the key server."""

    @model_validator(mode="after")
    def _one_source(self) -> JwtSettings:
        given = [n for n in ("secret", "public_key", "jwks_url") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"configure one of secret, public_key, jwks_url (got {given})")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < 32:
            raise ValueError("secret must be at least 32 bytes (HS256)")
        return self

    @property
    def configured(self) -> bool:
        """Whether a key source is set."""
        return bool(self.secret or self.public_key or self.jwks_url)


# -- verification -----------------------------------------------------------------------


def _load_public_key(text: str) -> tuple[Any, str]:
    """The key object and its algorithm, from PEM text or a PEM file's path."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = text.strip()
    if not pem.startswith("-----BEGIN"):
        path = Path(pem)
        if not path.is_file():
            raise ConfigurationError(
                "jwt.public_key is neither a PEM public key nor the path of a PEM file"
            )
        pem = path.read_text().strip()
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ConfigurationError("jwt.public_key is not a valid PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return key, "ES256"
    raise ConfigurationError("jwt.public_key must be an RSA or an EC P-256 public key")


def _fits(alg: str, key: Any) -> bool:
    """Whether a token signed with ``alg`` can be verified with the public ``key`` (an
    RSA key for RS*/PS*, a P-256 key for ES256, …): otherwise PyJWT raises a TypeError
    deep inside instead of refusing the token."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    curves = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
    if alg in curves:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curves[alg]
    return alg.startswith("HS") and isinstance(key, str)


@dataclass(slots=True)
class _Jwks:
    """Keys fetched from a JWKS URL, by ``kid``."""

    url: str
    cache_seconds: float
    min_refresh: float
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self.fetched_at > self.cache_seconds
        if stale or (kid not in self.keys and now - self.fetched_at >= self.min_refresh):
            await self._refresh(now)
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        found = self.keys.get(kid or "")
        if found is None:
            raise TokenError("unknown_key", "the token's signing key (kid) is not known")
        return found

    async def _refresh(self, asked_at: float) -> None:
        async with self.lock:
            if self.fetched_at >= asked_at:  # another task fetched meanwhile
                return
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                    data = response.json()
                keyset = jwt.PyJWKSet.from_dict(data)
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                if self.keys:  # keep serving the keys we have
                    self.fetched_at = time.monotonic()
                    return
                raise TokenError(
                    "keys_unavailable", f"the JWKS could not be fetched ({type(exc).__name__})"
                ) from None
            self.keys = {k.key_id: k for k in keyset.keys if k.key_id}
            if not self.keys and len(keyset.keys) == 1:
                self.keys = {"": keyset.keys[0]}
            self.fetched_at = time.monotonic()


_PROBLEMS: Final[tuple[tuple[type[jwt.PyJWTError], TokenProblem, str], ...]] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "bad_audience", "the token's audience (aud) is not accepted"),
    (jwt.InvalidIssuerError, "bad_issuer", "the token's issuer (iss) is not accepted"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "the token's algorithm is not allowed"),
    (jwt.InvalidSignatureError, "bad_signature", "the token's signature does not verify"),
    (
        jwt.exceptions.InvalidSubjectError,
        "no_subject",
        "the token's subject (sub) must be a user id",
    ),
    (jwt.MissingRequiredClaimError, "malformed", "the token lacks a required claim"),
    (jwt.DecodeError, "malformed", "the token is not a well-formed JWT"),
)


class JwtVerifier:
    """Verifies end users' JWTs as configured by :class:`JwtSettings`."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self._key: Any = None
        self._jwks: _Jwks | None = None
        algorithms: list[str] = list(settings.algorithms)
        if settings.secret is not None:
            self._key = settings.secret.get_secret_value()
            algorithms = algorithms or ["HS256"]
            if any(not a.startswith("HS") for a in algorithms):
                raise ConfigurationError("jwt.algorithms: a secret only verifies HS* algorithms")
        elif settings.public_key is not None:
            self._key, derived = _load_public_key(settings.public_key)
            algorithms = algorithms or [derived]
            if any(a.startswith("HS") for a in algorithms):
                raise ConfigurationError("jwt.algorithms: a public key never verifies HS*")
        elif settings.jwks_url is not None:
            self._jwks = _Jwks(
                settings.jwks_url, settings.jwks_cache_seconds, settings.jwks_min_refresh_seconds
            )
            algorithms = algorithms or ["RS256", "ES256"]
            if any(a.startswith("HS") for a in algorithms):
                raise ConfigurationError("jwt.algorithms: JWKS keys never verify HS*")
        self.algorithms: tuple[str, ...] = tuple(algorithms)

    @property
    def configured(self) -> bool:
        """Whether tokens can be verified at all."""
        return self._key is not None or self._jwks is not None

    async def verify(self, token: str) -> Principal:
        """Return the end user the token names, or raise :class:`TokenError`."""
        if not self.configured:
            raise TokenError("not_configured", "end-user tokens are not configured on this server")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("algorithm_not_allowed", "the token's algorithm is not allowed")
        key: Any = self._key
        if self._jwks is not None:
            kid = header.get("kid")
            jwk = await self._jwks.key(kid if isinstance(kid, str) else None)
            if jwk.key_type not in ("RSA", "EC"):  # never a symmetric (oct) key
                raise TokenError("algorithm_not_allowed", "the key set's key type is not allowed")
            key = jwk.key
        if not _fits(alg, key):
            raise TokenError("algorithm_not_allowed", "the token's algorithm is not its key's")
        s = self.settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"verify_aud": s.audience is not None},
            )
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise TokenError("bad_audience", "the token has no audience (aud)") from None
            if exc.claim == "iss":
                raise TokenError("bad_issuer", "the token has no issuer (iss)") from None
            raise TokenError("malformed", "the token lacks a required claim") from None
        except jwt.PyJWTError as exc:
            for kind, problem, message in _PROBLEMS:
                if isinstance(exc, kind):
                    raise TokenError(problem, message) from None
            raise TokenError("malformed", "the token is not acceptable") from None
        except (TypeError, ValueError):  # a key PyJWT cannot use for this token
            raise TokenError(
                "algorithm_not_allowed", "the token's algorithm is not its key's"
            ) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise TokenError("no_subject", "the token's subject (sub) must be a user id")
        if USER_ID_RE.fullmatch(sub) is None:
            raise TokenError(
                "no_subject",
                "the token's subject (sub) is not a valid user id: 1-256 characters "
                "without control characters",
            )
        options = claims.get("eventmill")
        all_users = isinstance(options, dict) and options.get("all_users") is True
        exp = claims.get("exp")
        return Principal(
            user_id=sub,
            claims=claims,
            # PyJWT verified it as an integer, also when it came as a numeric string
            expires_at=None if exp is None or isinstance(exp, bool) else float(exp),
            all_users=all_users,
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a service or operator (``key``), or an end user (``user_id``)."""

    key: ApiKeyRecord | None = None
    """The API key, for services and operators."""
    user_id: str | None = None
    """The end user's id (the JWT's ``sub``)."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """The JWT's claims (empty for an API key)."""
    expires_at: float | None = None
    """When the JWT expires (Unix time), if it does."""
    all_users: bool = False
    """An operator's token (claim ``"eventmill": {"all_users": true}``) may see events
    of every user; set only by whoever issues the tokens."""

    @property
    def is_admin(self) -> bool:
        """Whether this is an API key with scope ``admin``."""
        return self.key is not None and self.key.allows("admin")

    def may_act_for(self, user_id: str | None) -> bool:
        """Whether the caller may see or manage what belongs to ``user_id``."""
        if self.is_admin:
            return True
        return self.user_id is not None and user_id == self.user_id
