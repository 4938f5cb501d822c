"""Optional bearer-token authentication for the ranking API.

The token is a shared secret that clients send as ``Authorization: Bearer <token>``.
It comes from the replica's environment, never from a config file:

* ``ATTUNE_API_TOKEN`` (read through :mod:`attune.settings`; in Kubernetes an
  ``envFrom`` of the ``attune-api-token`` Secret), or
* ``AppArgs.auth.token_file``: a file holding the token (a mounted Secret volume),
  which wins over the variable when set.

When a token is configured every protected route needs it; ``GET /v1/healthz`` (and
the published schema at ``/openapi.json``) stay open so load balancers and clients can
probe the app. ``AuthConfig.required`` is for non-local configs: a replica that finds no
token then refuses to start (the deploy fails naming ``auth.required``) instead of
serving unauthenticated. Tokens are compared with :func:`hmac.compare_digest`
(constant time) and never logged or echoed; a missing or wrong token gets 401 with
``WWW-Authenticate: Bearer`` (RFC 6750) before the request body is validated.

Wiring: the ingress calls :func:`configure` once in each replica's constructor, and
its protected routes declare ``dependencies=[Depends(require_bearer)]``. The verifier
is per process (one Serve replica is one process); :func:`require_bearer` is a plain
module-level function, so the FastAPI app that Serve ships to replicas refers to this
module's verifier rather than to a pickled copy.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from attune.errors import AttuneError, ConfigError
from attune.settings import get_settings

log = logging.getLogger(__name__)

#: Shortest token accepted: a guessable secret is no secret.
MIN_TOKEN_LENGTH = 16
REALM = "attune"

_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="Shared API token (ATTUNE_API_TOKEN), required when the app sets one.",
)


class AuthConfig(BaseModel):
    """Authentication of the ranking API (``args.auth`` of the Serve app)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = Field(
        default=False,
        description="Refuse to start without a token (set in every non-local config).",
    )
    token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the token (a mounted secret); else ATTUNE_API_TOKEN.",
    )


class Unauthorized(AttuneError):
    """A protected route was called without the right bearer token (HTTP 401)."""

    status_code = 401

    def __init__(self, *, problem: str) -> None:
        super().__init__(f"unauthorized: {problem}", problem=problem)
        error = "invalid_request" if "missing" in problem else "invalid_token"
        #: Response headers the ingress sends with the error (RFC 6750 section 3).
        self.headers = {"WWW-Authenticate": f'Bearer realm="{REALM}", error="{error}"'}


class BearerVerifier:
    """Checks presented tokens against one secret in constant time."""

    def __init__(self, token: str) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            # The value itself is a secret: report only its length.
            raise ConfigError(
                field="auth.token",
                value=f"<{len(token)} characters>",
                problem=f"an API token needs at least {MIN_TOKEN_LENGTH} characters",
            )
        self._token = token.encode()

    def __repr__(self) -> str:
        return "BearerVerifier(<token>)"

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """Return when ``credentials`` carry the token; raise :class:`Unauthorized` if not."""
        if credentials is None:
            raise Unauthorized(problem="missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(credentials.credentials.encode(), self._token):
            raise Unauthorized(problem="invalid bearer token")


def load_token(config: AuthConfig) -> str | None:
    """The configured token: ``config.token_file`` if set, else ``ATTUNE_API_TOKEN``.

    Raises ConfigError naming ``auth.token_file`` when the file cannot be read or is
    empty, and ``auth.required`` when a token is required and none is configured.
    """
    token: str | None
    if config.token_file is not None:
        try:
            token = Path(config.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                field="auth.token_file", value=config.token_file, problem=exc.strerror or str(exc)
            ) from exc
        if not token:
            raise ConfigError(field="auth.token_file", value=config.token_file, problem="is empty")
    else:
        token = get_settings().api_token or None
    if token is None and config.required:
        raise ConfigError(
            field="auth.required",
            value=True,
            problem="no API token configured: set ATTUNE_API_TOKEN or auth.token_file",
        )
    return token


#: This process's verifier (None: authentication off). Set by :func:`configure`.
_verifier: BearerVerifier | None = None


def configure(config: AuthConfig) -> bool:
    """Install this process's verifier from ``config``; returns whether auth is on.

    Raises ConfigError (see :func:`load_token`, :class:`BearerVerifier`), so a replica
    with a required but absent or too short token fails to start.
    """
    global _verifier
    token = load_token(config)
    _verifier = BearerVerifier(token) if token is not None else None
    log.info("API authentication %s", "on (bearer token)" if _verifier else "off")
    return _verifier is not None


def check_header(authorization: str | None) -> None:
    """:func:`require_bearer`'s check on a raw ``Authorization`` header, without FastAPI's
    dependency machinery (the ranking route's hot path); same rules, same errors."""
    if _verifier is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    credentials = None
    if scheme.lower() == "bearer" and token:
        credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
    _verifier.check(credentials)


async def require_bearer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_scheme)],
) -> None:
    """FastAPI dependency of protected routes: passes when auth is off or the token matches."""
    if _verifier is not None:
        _verifier.check(credentials)
