"""Authentication of the ranking API: scoped bearer tokens, a body limit, the borrower salt.

Tokens are shared secrets that clients send as ``Authorization: Bearer <token>``. They
come from the replica's environment or from mounted secret files, never from a config:

* ``ATTUNE_API_TOKEN`` and ``ATTUNE_API_TOKEN_NEXT`` (read through :mod:`attune.settings`;
  in Kubernetes an ``envFrom`` of the ``attune-api-token`` Secret) grant every scope.
  Both are accepted at once, so a token rotates without downtime: set the new one as
  ``..._NEXT``, move the clients to it, then make it the current one and drop the next.
* ``AuthConfig.token_file`` / ``AuthConfig.next_token_file``: files holding the current
  and next token (a mounted Secret volume); each wins over its variable when set.
* ``AuthConfig.tokens_file``: a YAML list of ``{token: ..., scopes: [rank]}`` entries, one
  per client, each limited to the scopes it needs.

Scopes are per route (:data:`ROUTE_SCOPES`): ``rank`` (``POST /v1/rank``,
``GET /v1/models``), ``features`` (``GET /v1/features/{id}``), ``events``
(``POST /v1/events``). ``GET /v1/healthz`` and the published schema stay open so load
balancers can probe the app; healthz names the model versions only to a valid token.
Any other path needs a valid token (deny by default). A missing or wrong token gets 401
with ``WWW-Authenticate: Bearer`` (RFC 6750); a valid token without the route's scope
gets 403 ``insufficient_scope``. Tokens are compared with :func:`hmac.compare_digest`
against every configured token (no early exit) and are never logged or echoed.

:class:`RequestGuard` is the pure ASGI middleware that enforces all of this *before* the
application sees the request: first the declared ``Content-Length`` (413), then the
token (401/403, before any byte of the body is read or parsed), then the body itself,
counted as it arrives (chunked bodies too) and refused with 413 past the limit. The
application then reads the buffered body (at most the limit). ``AuthConfig.required``
is for non-local configs: a replica that finds no token refuses to start.

The borrower salt (``ATTUNE_BORROWER_SALT``) is checked here too (:func:`borrower_salt`):
wherever auth is required or the store is ``s3://``, the public default or a short salt
fails the deploy, since a salted hash is only as secret as its salt.

Wiring: the ingress calls :func:`configure` once in each replica's constructor and its
FastAPI app carries ``RequestGuard``; protected routes also declare
``dependencies=[Depends(require_bearer)]``, which publishes the scheme in OpenAPI and
fails closed when a route is reached without the guard. The verifier is per process
(one Serve replica is one process) and module-level, so the app Serve ships to replicas
refers to this module's verifier rather than to a pickled copy.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from attune import storage
from attune.errors import ConfigError, InsufficientScope, Unauthorized
from attune.settings import get_settings

log = logging.getLogger(__name__)

#: Shortest token accepted: a guessable secret is no secret.
MIN_TOKEN_LENGTH = 16

Scope = Literal["rank", "features", "events"]
SCOPES: tuple[Scope, ...] = ("rank", "features", "events")
#: The scope each protected route needs (paths relative to the app's route prefix).
ROUTE_SCOPES: dict[str, Scope] = {
    "/v1/rank": "rank",
    "/v1/models": "rank",
    "/v1/events": "events",
    "/v1/features/": "features",  # a prefix: /v1/features/{borrower_id}
}
#: Paths open without a token.
OPEN_PATHS = frozenset({"/v1/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: ASGI scope key where the guard leaves the scopes of a valid token (None: no valid token).
GRANTED = "attune.granted_scopes"

_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="API token (ATTUNE_API_TOKEN), required when the app sets one; scoped per "
    "route (rank, features, events).",
)


class AuthConfig(BaseModel):
    """Authentication of the ranking API (``args.auth`` of the Serve app)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = Field(
        default=False,
        description="Refuse to start without a token, and with the default or a short "
        "borrower salt (set in every non-local config).",
    )
    token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the current token (a mounted secret); else ATTUNE_API_TOKEN.",
    )
    next_token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the next token (rotation); else ATTUNE_API_TOKEN_NEXT.",
    )
    tokens_file: str | None = Field(
        default=None,
        min_length=1,
        description="YAML list of per-client tokens with their scopes: "
        "[{token: ..., scopes: [rank]}] (a mounted secret).",
    )


class ScopedToken(BaseModel):
    """One entry of ``AuthConfig.tokens_file``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr = Field(description="The token.")
    scopes: tuple[Scope, ...] = Field(
        default=SCOPES, min_length=1, description="Routes it may call."
    )


def _checked(token: str, field: str) -> bytes:
    if len(token) < MIN_TOKEN_LENGTH:
        # The value itself is a secret: report only its length.
        raise ConfigError(
            field=field,
            value=f"<{len(token)} characters>",
            problem=f"an API token needs at least {MIN_TOKEN_LENGTH} characters",
        )
    return token.encode()


class BearerVerifier:
    """Checks presented tokens against every configured token, in constant time each."""

    def __init__(self, token: str | None = None, *, scoped: Sequence[ScopedToken] = ()) -> None:
        self._tokens: list[tuple[bytes, frozenset[str]]] = []
        if token is not None:
            self._tokens.append((_checked(token, "auth.token"), frozenset(SCOPES)))
        for i, entry in enumerate(scoped):
            secret = _checked(entry.token.get_secret_value(), f"auth.tokens_file[{i}].token")
            self._tokens.append((secret, frozenset(entry.scopes)))
        if not self._tokens:
            raise ConfigError(field="auth", value=None, problem="no token to verify against")

    def __repr__(self) -> str:
        return f"BearerVerifier(<{len(self._tokens)} tokens>)"

    def add(self, token: str, *, field: str) -> None:
        """Accept ``token`` too, with every scope (the next token of a rotation)."""
        self._tokens.append((_checked(token, field), frozenset(SCOPES)))

    def granted(self, credentials: HTTPAuthorizationCredentials | None) -> frozenset[str]:
        """The scopes ``credentials`` grant; raises :class:`Unauthorized` if none match."""
        if credentials is None:
            raise Unauthorized(problem="missing bearer token (Authorization: Bearer <token>)")
        presented = credentials.credentials.encode()
        scopes: frozenset[str] | None = None
        for secret, granted in self._tokens:  # every token, always: no timing hint
            if hmac.compare_digest(presented, secret) and scopes is None:
                scopes = granted
        if scopes is None:
            raise Unauthorized(problem="invalid bearer token")
        return scopes

    def check(
        self, credentials: HTTPAuthorizationCredentials | None, scope: str | None = None
    ) -> frozenset[str]:
        """The granted scopes; raises Unauthorized (no valid token) or InsufficientScope."""
        granted = self.granted(credentials)
        if scope is not None and scope not in granted:
            raise InsufficientScope(scope=scope)
        return granted


def _read_secret(path: str, field: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(field=field, value=path, problem=exc.strerror or str(exc)) from exc
    if not value:
        raise ConfigError(field=field, value=path, problem="is empty")
    return value


def load_token(config: AuthConfig) -> str | None:
    """The current token: ``config.token_file`` if set, else ``ATTUNE_API_TOKEN``.

    Raises ConfigError naming ``auth.token_file`` when the file cannot be read or is
    empty, and ``auth.required`` when a token is required and none is configured.
    """
    if config.token_file is not None:
        token: str | None = _read_secret(config.token_file, "auth.token_file")
    else:
        secret = get_settings().api_token
        token = secret.get_secret_value() or None if secret is not None else None
    if token is None and config.tokens_file is None and config.required:
        raise ConfigError(
            field="auth.required",
            value=True,
            problem="no API token configured: set ATTUNE_API_TOKEN, auth.token_file or "
            "auth.tokens_file",
        )
    return token


def load_next_token(config: AuthConfig) -> str | None:
    """The next token (rotation): ``config.next_token_file``, else ``ATTUNE_API_TOKEN_NEXT``."""
    if config.next_token_file is not None:
        return _read_secret(config.next_token_file, "auth.next_token_file")
    secret = get_settings().api_token_next
    return secret.get_secret_value() or None if secret is not None else None


def load_scoped_tokens(config: AuthConfig) -> list[ScopedToken]:
    """The per-client tokens of ``config.tokens_file`` (none when unset)."""
    if config.tokens_file is None:
        return []
    text = _read_secret(config.tokens_file, "auth.tokens_file")
    try:
        entries = yaml.safe_load(text)
        if not isinstance(entries, list) or not entries:
            raise ValueError("must be a non-empty YAML list of {token, scopes}")
        return [ScopedToken.model_validate(entry) for entry in entries]
    except (yaml.YAMLError, ValueError, ValidationError) as exc:
        # Never echo the file: it holds secrets. Name the file and the kind of problem.
        problem = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else type(exc).__name__
            if isinstance(exc, yaml.YAMLError)
            else str(exc)
        )
        raise ConfigError(
            field="auth.tokens_file", value=config.tokens_file, problem=problem
        ) from None


def salt_required(config: AuthConfig, *uris: str) -> bool:
    """Whether the borrower salt must be a real secret: auth required or any s3:// store."""
    return config.required or any(storage.is_s3(uri) for uri in uris)


#: This process's verifier (None: authentication off). Set by :func:`configure`.
_verifier: BearerVerifier | None = None


def configure(config: AuthConfig) -> bool:
    """Install this process's verifier from ``config``; returns whether auth is on.

    Raises ConfigError (see :func:`load_token`, :class:`BearerVerifier`), so a replica
    with a required but absent or too short token fails to start.
    """
    global _verifier
    token = load_token(config)
    scoped = load_scoped_tokens(config)
    verifier = BearerVerifier(token, scoped=scoped) if token is not None or scoped else None
    following = load_next_token(config)
    if following is not None:
        if verifier is None:
            raise ConfigError(
                field="auth.next_token_file" if config.next_token_file else "ATTUNE_API_TOKEN_NEXT",
                value="<set>",
                problem="a next token needs a current one (ATTUNE_API_TOKEN or auth.token_file)",
            )
        verifier.add(following, field="auth.next_token")
    _verifier = verifier
    log.info("API authentication %s", f"on ({verifier!r})" if verifier else "off")
    return _verifier is not None


def _credentials(authorization: str | None) -> HTTPAuthorizationCredentials | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
    return None


def check_header(authorization: str | None, scope: str | None = None) -> frozenset[str] | None:
    """Check a raw ``Authorization`` header for ``scope`` (None: any valid token).

    Returns the granted scopes (None when auth is off); raises Unauthorized or
    InsufficientScope.
    """
    if _verifier is None:
        return None
    return _verifier.check(_credentials(authorization), scope)


def route_scope(path: str) -> Scope | Literal["open", "any"]:
    """The scope ``path`` needs: one of SCOPES, ``open`` (no token), ``any`` (a valid token)."""
    if path in OPEN_PATHS:
        return "open"
    for route, scope in ROUTE_SCOPES.items():
        if path == route or (route.endswith("/") and path.startswith(route)):
            return scope
    return "any"


async def require_bearer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_scheme)],
) -> None:
    """FastAPI dependency of protected routes: publishes the bearer scheme in OpenAPI.

    The check itself is :class:`RequestGuard`'s, before the body is read; a route
    reached without the guard while auth is on fails closed (401).
    """
    if _verifier is not None and GRANTED not in request.scope:
        needed = route_scope(_relative(request.scope))
        _verifier.check(credentials, needed if needed in SCOPES else None)


def authenticated(scope: MutableMapping[str, Any]) -> bool:
    """Whether the request carried a valid token (always true with auth off)."""
    return _verifier is None or scope.get(GRANTED) is not None


# --------------------------------------------------------------------------- ASGI guard

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _relative(scope: MutableMapping[str, Any]) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(body, status_code=status, headers=headers)


def too_large(length: int | str, limit: int, *, declared: bool = True) -> JSONResponse:
    """The 413 answer for a body of ``length`` bytes (declared, or counted) over ``limit``."""
    what = f"content-length {length}" if declared else f"request body of {length} bytes"
    return _error(
        413,
        {
            "error": "PayloadTooLarge",
            "message": f"{what} exceeds {limit} bytes",
            "details": {"limit": limit},
        },
    )


class RequestGuard:
    """Pure ASGI middleware: body limit and scoped token before the application runs.

    Order: ``Content-Length`` over ``limit`` (or not a number) → 413; protected path
    without a valid token → 401, without its scope → 403 (no byte of the body read);
    then the body is read and counted as it arrives, 413 past ``limit`` (chunked
    uploads included); the application gets the buffered body.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await too_large(value.decode(errors="replace"), self.limit)(scope, receive, send)
                return
            if name == b"authorization":
                authorization = value.decode("latin-1")
        if _verifier is not None:
            needed = route_scope(_relative(scope))
            try:
                if needed == "open":
                    if authorization is not None:
                        scope[GRANTED] = _verifier.check(_credentials(authorization))
                else:
                    scope[GRANTED] = _verifier.check(
                        _credentials(authorization), None if needed == "any" else needed
                    )
            except (Unauthorized, InsufficientScope) as exc:
                if needed != "open":
                    await _error(exc.status_code, exc.to_dict(), exc.headers)(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(f"more than {self.limit}", self.limit, declared=False)(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)
