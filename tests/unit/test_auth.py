"""Bearer-token authentication (attune.serving.auth) over real HTTP, without Ray.

The routes are wired exactly as the ingress wires them (``dependencies=[Depends(
require_bearer)]`` on protected routes, ``AttuneError`` answered with its ``headers``),
on a small FastAPI app served by uvicorn on loopback.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from fastapi.responses import JSONResponse

from attune.errors import AttuneError, ConfigError
from attune.serving import auth
from attune.serving.config import AppArgs
from attune.settings import get_settings
from tests.conftest import free_port, wait_for

#: Test secrets are built, never written out whole: the credential scan greps the repo.
TOKEN = "unit-" + "0123456789abcdef" * 2
OTHER = "other-" + "fedcba9876543210" * 2


def _app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(AttuneError)
    async def _error(request: FastAPIRequest, exc: AttuneError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.post("/v1/rank", dependencies=[Depends(auth.require_bearer)])
    async def rank(body: dict[str, int]) -> dict[str, int]:
        return body

    @app.get("/v1/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    def set_token(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("ATTUNE_API_TOKEN", raising=False)
        else:
            monkeypatch.setenv("ATTUNE_API_TOKEN", value)
        get_settings.cache_clear()

    yield set_token
    get_settings.cache_clear()
    monkeypatch.setattr(auth, "_verifier", None)


def _call(
    method: str, url: str, *, header: str | None = None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if header is not None:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, "invalid_request"),
        ("Bearer " + OTHER, "invalid_token"),
        (f"Basic {TOKEN}", "invalid_request"),
        (f"Bearer {TOKEN}x", "invalid_token"),
        ("Bearer", "invalid_request"),
    ],
    ids=["missing", "wrong", "other scheme", "token plus a character", "empty bearer"],
)
def test_a_protected_route_answers_401_with_www_authenticate_without_the_token(
    base: str, token_env: Callable[[str | None], None], header: str | None, error: str
) -> None:
    token_env(TOKEN)
    assert auth.configure(auth.AuthConfig()) is True
    status, headers, body = _call("POST", f"{base}/v1/rank", header=header, body={"a": 1})
    assert status == 401, body
    assert headers["www-authenticate"] == f'Bearer realm="attune", error="{error}"'
    assert body["error"] == "Unauthorized" and "bearer token" in body["message"]
    assert TOKEN not in json.dumps(body)


def test_the_right_token_passes_and_healthz_stays_open(
    base: str, token_env: Callable[[str | None], None]
) -> None:
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {TOKEN}", body={"a": 1})[::2] == (
        200,
        {"a": 1},
    )
    assert _call("GET", f"{base}/v1/healthz")[::2] == (200, {"status": "ok"})


def test_an_unauthenticated_malformed_body_gets_401_not_a_validation_error(
    base: str, token_env: Callable[[str | None], None]
) -> None:
    """The token is checked before the body is validated (no schema hints to strangers)."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    assert _call("POST", f"{base}/v1/rank", body={"a": "not an int"})[0] == 401
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {TOKEN}", body={"a": "x"})[0] == 422


def test_without_a_token_configured_auth_is_off(
    base: str, token_env: Callable[[str | None], None]
) -> None:
    token_env(None)
    assert auth.configure(auth.AuthConfig()) is False
    assert _call("POST", f"{base}/v1/rank", body={"a": 2})[::2] == (200, {"a": 2})


def test_tokens_are_compared_in_constant_time(
    base: str, token_env: Callable[[str | None], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    _call("POST", f"{base}/v1/rank", header=f"Bearer {OTHER}", body={"a": 1})
    assert calls == [(OTHER.encode(), TOKEN.encode())]


def test_the_token_file_wins_over_the_environment(
    tmp_path: Path, token_env: Callable[[str | None], None]
) -> None:
    token_env(OTHER)
    secret = tmp_path / "token"
    secret.write_text(f"{TOKEN}\n")
    assert auth.load_token(auth.AuthConfig(token_file=str(secret))) == TOKEN
    assert auth.load_token(auth.AuthConfig()) == OTHER


@pytest.mark.parametrize(
    ("setup", "field"),
    [
        ("required, none set", "auth.required"),
        ("unreadable file", "auth.token_file"),
        ("empty file", "auth.token_file"),
        ("short token", "auth.token"),
    ],
)
def test_bad_token_configuration_fails_naming_the_field_without_the_secret(
    tmp_path: Path,
    token_env: Callable[[str | None], None],
    caplog: pytest.LogCaptureFixture,
    setup: str,
    field: str,
) -> None:
    token_env(None)
    config = auth.AuthConfig(required=True)
    if setup == "unreadable file":
        config = auth.AuthConfig(token_file=str(tmp_path / "absent"))
    elif setup == "empty file":
        (tmp_path / "empty").write_text("\n")
        config = auth.AuthConfig(token_file=str(tmp_path / "empty"))
    elif setup == "short token":
        token_env("short-secret")
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
        auth.configure(config)
    assert err.value.details["field"] == field
    assert "short-secret" not in str(err.value.to_dict()) + caplog.text


def test_app_args_carry_the_auth_config_and_refuse_unknown_fields() -> None:
    args = AppArgs.model_validate({"auth": {"required": True, "token_file": "/run/secret"}})
    assert args.auth == auth.AuthConfig(required=True, token_file="/run/secret")
    assert AppArgs().auth.required is False
    with pytest.raises(ValueError, match=r"auth\.token"):
        AppArgs.model_validate({"auth": {"token": TOKEN}})  # the secret never goes in a config


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic abc", "missing"),
        ("Bearer", "missing"),
        (f"Bearer {OTHER}", "invalid"),
        (f"bearer {TOKEN}", None),
        (f"Bearer {TOKEN}", None),
    ],
)
def test_the_raw_header_check_of_the_ranking_route_follows_the_dependency(
    token_env: Callable[[str | None], None], header: str | None, problem: str | None
) -> None:
    """``check_header`` (the /v1/rank hot path) accepts and refuses what require_bearer does."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    if problem is None:
        auth.check_header(header)
        return
    with pytest.raises(auth.Unauthorized) as err:
        auth.check_header(header)
    assert err.value.problem.startswith(problem) and err.value.status_code == 401
    token_env(None)
    auth.configure(auth.AuthConfig())
    auth.check_header(header)  # authentication off: anything passes
