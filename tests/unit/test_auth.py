"""Bearer-token authentication (attune.serving.auth) over real HTTP, without Ray.

The routes are wired exactly as the ingress wires them (``auth.RequestGuard`` on the app,
``dependencies=[Depends(require_bearer)]`` on protected routes, ``AttuneError`` answered
with its ``headers``), on a small FastAPI app served by uvicorn on loopback.
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

from attune.errors import AttuneError, ConfigError, Unauthorized
from attune.serving import auth
from attune.serving.config import AppArgs
from attune.settings import borrower_salt, get_settings
from tests.conftest import free_port, wait_for

#: Test secrets are built, never written out whole: the credential scan greps the repo.
TOKEN = "unit-" + "0123456789abcdef" * 2
OTHER = "other-" + "fedcba9876543210" * 2
NEXT = "next-" + "0123456789abcdef"[::-1] * 2
#: Body limit of the test app (the ingress uses attune.serving.api.MAX_BODY_BYTES).
LIMIT = 4096


def _app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(AttuneError)
    async def _error(request: FastAPIRequest, exc: AttuneError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.post("/v1/rank", dependencies=[Depends(auth.require_bearer)])
    async def rank(body: dict[str, int]) -> dict[str, int]:
        return body

    @app.post("/v1/events", dependencies=[Depends(auth.require_bearer)])
    async def events(body: dict[str, int]) -> dict[str, int]:
        return body

    @app.get("/v1/features/{borrower_id}", dependencies=[Depends(auth.require_bearer)])
    async def features(borrower_id: int) -> dict[str, int]:
        return {"borrower_id": borrower_id}

    @app.get("/v1/whoami")
    async def whoami(request: FastAPIRequest) -> dict[str, bool]:
        return {"authenticated": auth.authenticated(request.scope)}

    app.add_middleware(auth.RequestGuard, limit=LIMIT)

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
def token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    def set_token(value: str | None, following: str | None = None) -> None:
        for name, secret in (("ATTUNE_API_TOKEN", value), ("ATTUNE_API_TOKEN_NEXT", following)):
            if secret is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, secret)
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
    base: str, token_env: Callable[..., None], header: str | None, error: str
) -> None:
    token_env(TOKEN)
    assert auth.configure(auth.AuthConfig()) is True
    status, headers, body = _call("POST", f"{base}/v1/rank", header=header, body={"a": 1})
    assert status == 401, body
    assert headers["www-authenticate"] == f'Bearer realm="attune", error="{error}"'
    assert body["error"] == "Unauthorized" and "bearer token" in body["message"]
    assert TOKEN not in json.dumps(body)


def test_the_right_token_passes_and_healthz_stays_open(
    base: str, token_env: Callable[..., None]
) -> None:
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {TOKEN}", body={"a": 1})[::2] == (
        200,
        {"a": 1},
    )
    assert _call("GET", f"{base}/v1/healthz")[::2] == (200, {"status": "ok"})


def test_an_unauthenticated_malformed_body_gets_401_not_a_validation_error(
    base: str, token_env: Callable[..., None]
) -> None:
    """The token is checked before the body is validated (no schema hints to strangers)."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    assert _call("POST", f"{base}/v1/rank", body={"a": "not an int"})[0] == 401
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {TOKEN}", body={"a": "x"})[0] == 422


def test_without_a_token_configured_auth_is_off(base: str, token_env: Callable[..., None]) -> None:
    token_env(None)
    assert auth.configure(auth.AuthConfig()) is False
    assert _call("POST", f"{base}/v1/rank", body={"a": 2})[::2] == (200, {"a": 2})


def test_tokens_are_compared_in_constant_time(
    base: str, token_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
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
    tmp_path: Path, token_env: Callable[..., None]
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
    token_env: Callable[..., None],
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
    token_env: Callable[..., None], header: str | None, problem: str | None
) -> None:
    """``check_header`` (the /v1/rank hot path) accepts and refuses what require_bearer does."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    if problem is None:
        auth.check_header(header)
        return
    with pytest.raises(Unauthorized) as err:
        auth.check_header(header)
    assert err.value.problem.startswith(problem) and err.value.status_code == 401
    token_env(None)
    auth.configure(auth.AuthConfig())
    auth.check_header(header)  # authentication off: anything passes


# --------------------------------------------------------------------------- request guard


def _raw(
    base: str,
    method: str,
    path: str,
    *,
    body: bytes | list[bytes] = b"",
    header: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send ``body`` as is (a list: chunked transfer encoding, no Content-Length)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    try:
        if isinstance(body, list):
            connection.putrequest(method, path)
            for name, value in {**headers, "Transfer-Encoding": "chunked"}.items():
                connection.putheader(name, value)
            connection.endheaders()
            try:
                for chunk in body:
                    connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                connection.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the whole body was sent
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/events"])
@pytest.mark.parametrize(
    "body", [b"{not json", b'{"a": "not an int"}', b"[1, 2"], ids=["garbage", "wrong type", "cut"]
)
def test_401_comes_before_any_json_parsing_on_every_protected_route(
    base: str, token_env: Callable[..., None], path: str, body: bytes
) -> None:
    """Malformed JSON without a token is 401, not a 422 that tells a stranger the schema."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    status, answer = _raw(base, "POST", path, body=body)
    assert status == 401, answer
    assert _raw(base, "POST", path, body=body, header=f"Bearer {TOKEN}")[0] == 422


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_counted(
    base: str, token_env: Callable[..., None]
) -> None:
    """No Content-Length to check: the guard counts the chunks and answers 413 past LIMIT."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    chunks = [b'{"a": 1, "pad": "'] + [b"x" * 1024] * 64 + [b'"}']
    status, answer = _raw(base, "POST", "/v1/rank", body=chunks, header=f"Bearer {TOKEN}")
    assert status == 413, answer
    assert answer["details"]["limit"] == LIMIT
    # Under the limit the same transfer encoding reaches the route.
    small = [b'{"a":', b" 7}"]
    assert _raw(base, "POST", "/v1/rank", body=small, header=f"Bearer {TOKEN}") == (200, {"a": 7})


def test_a_chunked_body_without_a_token_is_401_before_it_is_read(
    base: str, token_env: Callable[..., None]
) -> None:
    """The answer comes while the body is still open: a server that read it first would hang."""
    import http.client
    from urllib.parse import urlsplit

    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/events")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"400\r\n" + b"x" * 1024 + b"\r\n")  # one chunk; no last chunk, ever
        # a read of the whole body would wait for the last chunk and time out here
        assert connection.getresponse().status == 401
    finally:
        connection.close()


def test_a_declared_length_over_the_limit_is_413_before_the_token_is_checked(
    base: str, token_env: Callable[..., None]
) -> None:
    import http.client
    from urllib.parse import urlsplit

    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/rank")
        connection.putheader("Content-Length", str(LIMIT + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()


def test_the_current_and_the_next_token_are_both_accepted(
    base: str, token_env: Callable[..., None]
) -> None:
    """A rotation: clients on either token keep working; the retired one is refused."""
    token_env(TOKEN, NEXT)
    auth.configure(auth.AuthConfig())
    for token in (TOKEN, NEXT):
        assert _call("POST", f"{base}/v1/rank", header=f"Bearer {token}", body={"a": 1})[0] == 200
    token_env(NEXT)  # rotated: the next token is now the current one
    auth.configure(auth.AuthConfig())
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {NEXT}", body={"a": 1})[0] == 200
    assert _call("POST", f"{base}/v1/rank", header=f"Bearer {TOKEN}", body={"a": 1})[0] == 401


def test_a_next_token_without_a_current_one_is_a_config_error(
    token_env: Callable[..., None],
) -> None:
    token_env(None, NEXT)
    with pytest.raises(ConfigError, match="next token needs a current one"):
        auth.configure(auth.AuthConfig())


def test_scoped_tokens_reach_only_their_routes(
    base: str, tmp_path: Path, token_env: Callable[..., None]
) -> None:
    """tokens_file: a ranking client cannot read features nor post events, and vice versa."""
    token_env(None)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"- {{token: {TOKEN}, scopes: [rank]}}\n- {{token: {OTHER}, scopes: [events, features]}}\n"
    )
    auth.configure(auth.AuthConfig(tokens_file=str(tokens)))
    ranker, ingester = f"Bearer {TOKEN}", f"Bearer {OTHER}"
    assert _call("POST", f"{base}/v1/rank", header=ranker, body={"a": 1})[0] == 200
    status, headers, answer = _call("POST", f"{base}/v1/events", header=ranker, body={"a": 1})
    assert status == 403 and answer["details"] == {"scope": "events"}
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert _call("GET", f"{base}/v1/features/7", header=ranker)[0] == 403
    assert _call("POST", f"{base}/v1/rank", header=ingester, body={"a": 1})[0] == 403
    assert _call("POST", f"{base}/v1/events", header=ingester, body={"a": 1})[0] == 200
    assert _call("GET", f"{base}/v1/features/7", header=ingester)[::2] == (200, {"borrower_id": 7})
    assert TOKEN not in json.dumps(answer)


def test_a_bad_tokens_file_is_refused_without_echoing_it(
    tmp_path: Path, token_env: Callable[..., None]
) -> None:
    token_env(None)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- {{token: {TOKEN}, scopes: [admin]}}\n")
    with pytest.raises(ConfigError) as err:
        auth.configure(auth.AuthConfig(tokens_file=str(tokens)))
    assert err.value.details["field"] == "auth.tokens_file"
    assert TOKEN not in str(err.value.to_dict())


def test_unknown_paths_need_a_token_and_open_paths_learn_whether_it_is_valid(
    base: str, token_env: Callable[..., None]
) -> None:
    """Deny by default: a path not in OPEN_PATHS needs a valid token."""
    token_env(TOKEN)
    auth.configure(auth.AuthConfig())
    assert _call("GET", f"{base}/v1/whoami")[0] == 401
    assert _call("GET", f"{base}/v1/whoami", header=f"Bearer {TOKEN}")[::2] == (
        200,
        {"authenticated": True},
    )
    assert _call("GET", f"{base}/v1/healthz", header=f"Bearer {OTHER}")[0] == 200


@pytest.mark.parametrize(
    ("salt", "strict", "refused"),
    [
        ("attune-default-salt", True, "the public default"),
        ("short-salt", True, "<10 characters>"),
        ("a-long-enough-secret-salt", True, None),
        ("attune-default-salt", False, None),
    ],
)
def test_the_borrower_salt_is_refused_when_default_or_short_where_it_matters(
    monkeypatch: pytest.MonkeyPatch, salt: str, strict: bool, refused: str | None
) -> None:
    monkeypatch.setenv("ATTUNE_BORROWER_SALT", salt)
    get_settings.cache_clear()
    try:
        if refused is None:
            assert borrower_salt(strict=strict) == salt
            return
        with pytest.raises(ConfigError) as err:
            borrower_salt(strict=strict)
        assert err.value.details["field"] == "ATTUNE_BORROWER_SALT"
        assert refused in str(err.value.details["value"])
        if salt != "attune-default-salt":
            assert salt not in str(err.value.to_dict())
    finally:
        get_settings.cache_clear()


def test_the_salt_must_be_secret_with_auth_required_or_an_s3_store() -> None:
    assert auth.salt_required(auth.AuthConfig(required=True), "/tmp/store")
    assert auth.salt_required(auth.AuthConfig(), "/tmp/store", "s3://bucket/registry")
    assert not auth.salt_required(auth.AuthConfig(), "/tmp/store", "/tmp/registry")


def test_secrets_in_settings_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings hold every secret as SecretStr: repr, str and dumps show no value."""
    values = {
        "ATTUNE_API_TOKEN": TOKEN,
        "ATTUNE_API_TOKEN_NEXT": NEXT,
        "ATTUNE_BORROWER_SALT": "salt-" + "9" * 20,
        "ATTUNE_REDIS_URL": "redis://:pw-" + "7" * 16 + "@redis:6379/0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        shown = repr(settings) + str(settings) + settings.model_dump_json()
        for value in values.values():
            assert value not in shown
    finally:
        get_settings.cache_clear()
