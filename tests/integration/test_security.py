"""Security of the running app: bearer token, hashed borrower ids, no credentials anywhere.

One app is deployed as a non-local config would be: ``auth.required`` with the token in
a file (a mounted secret); the borrower salt is the replicas' ``ATTUNE_BORROWER_SALT``
from the cluster's environment (never a Serve ``runtime_env``: Ray's runtime-env agent
writes its env_vars to its log). The tests check the token over real HTTP, that borrower
ids reach the decision log, the metrics and the logs only salted and hashed, that
neither the repo (tracked files) nor the logs of this Serve run hold credentials, and
that protected attributes are never model features.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from attune.data.schema import PROTECTED_COLUMNS
from attune.data.spec import FEATURE_NAMES, FeatureSpec, default_spec
from attune.errors import FeatureSpecMismatch
from attune.experiments.assignment import hash_borrower
from attune.settings import DEFAULT_BORROWER_SALT, MIN_BORROWER_SALT_LENGTH
from tests.conftest import wait_for
from tests.integration.serving_fixtures import model_files, rank_body, ranker_onnx, wait_http_ok

pytestmark = pytest.mark.integration

APP = "attune-sec"
PREFIX = "/attune-sec"
REPO = Path(__file__).resolve().parents[2]
# Secrets are derived, never written out: the credential scan below greps this file too.
TOKEN = "sec-" + hashlib.sha256(b"attune security test token").hexdigest()
#: The next token of a rotation, accepted beside TOKEN.
NEXT_TOKEN = "sec-next-" + hashlib.sha256(b"attune security next token").hexdigest()
#: Borrower ids distinctive enough to grep for in logs.
BORROWERS = [7_345_812_906_117 + 1_000 * i for i in range(12)]

#: What a leaked credential looks like (AWS keys, private keys, bearer tokens, secrets).
KEY_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}\b"
    ),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "bearer token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*"),
    "secret literal": re.compile(
        r"(?i)\b(?:password|passwd|secret|token|api_?key)['\"]?\s*[:=]\s*['\"][^'\"\s]{12,}['\"]"
    ),
}


@dataclass
class SecureApp:
    base: str
    registry: Any
    version: str
    store: Path
    session_dir: Path

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """(status, headers, JSON answer); ``body`` bytes are sent as they are."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture(scope="module")
def secure(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureApp]:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy
    from tests.conftest import free_port

    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "api-token").write_text(TOKEN + "\n")
    (secrets / "api-token-next").write_text(NEXT_TOKEN + "\n")
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    version = registry.register(model_files(ranker_onnx(seed=1)), metadata={"name": "sec"})
    store = tmp_path_factory.mktemp("store")
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    client = _get_global_client()
    assert client is not None
    port = client.http_config.port
    args = {
        "registry": registry.uri,
        "store": str(store),
        "decision_log": {"max_batch": 20, "max_age_s": 0.5},
        "auth": {
            "required": True,
            "token_file": str(secrets / "api-token"),
            "next_token_file": str(secrets / "api-token-next"),
        },
    }
    ingress = {
        "num_replicas": 1,
        "user_config": RolloutConfig(champion=version).model_dump(mode="json"),
    }
    deploy(
        ServeDeploySchema(
            applications=[app_config(args, name=APP, route_prefix=PREFIX, ingress=ingress)]
        )
    )
    base = f"http://127.0.0.1:{port}{PREFIX}"
    wait_http_ok(f"{base}/v1/healthz")
    session_dir = Path(ray_cluster.head_node.get_session_dir_path())
    yield SecureApp(base, registry, version, store, session_dir)
    serve.delete(APP)


# --------------------------------------------------------------------------- bearer token


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("POST", "/v1/rank", None, 401),
        ("POST", "/v1/rank", "x" * len(TOKEN), 401),
        ("POST", "/v1/rank", TOKEN, 200),
        ("GET", "/v1/models", None, 401),
        ("GET", "/v1/models", TOKEN, 200),
        ("GET", "/v1/healthz", None, 200),
    ],
    ids=["rank/none", "rank/wrong", "rank/right", "models/none", "models/right", "healthz/open"],
)
def test_protected_routes_need_the_bearer_token_and_healthz_stays_open(
    secure: SecureApp, method: str, path: str, token: str | None, status: int
) -> None:
    body = rank_body(BORROWERS[0], n=3) if method == "POST" else None
    code, headers, answer = secure.call(method, path, body, token)
    assert code == status, answer
    if status == 401:
        assert headers["www-authenticate"].startswith('Bearer realm="attune"')
        assert "bearer token" in answer["message"] and TOKEN not in json.dumps(answer)


_EVENT = {
    "event_id": "sec-1",
    "borrower_id": 7,
    "ts": "2025-03-01T10:00:00+00:00",
    "event_type": "login",
}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/events", {"events": [_EVENT]}),
        ("POST", "/v1/events", b"{not json"),
        ("POST", "/v1/events", b'{"events": "not a list"}'),
        ("GET", "/v1/features/7", None),
        ("POST", "/v1/rank", b"{not json"),
    ],
    ids=["events", "events/garbage", "events/wrong type", "features", "rank/garbage"],
)
def test_every_protected_route_answers_401_before_it_parses_anything(
    secure: SecureApp, method: str, path: str, body: Any
) -> None:
    """No token: 401, whatever the body (a 422 would tell a stranger the schema)."""
    for token in (None, "x" * len(TOKEN)):
        code, headers, answer = secure.call(method, path, body, token)
        assert code == 401, (token, answer)
        assert headers["www-authenticate"].startswith('Bearer realm="attune"')
    # With the token the route runs: this app has no online view (404), garbage is 422.
    code, _, answer = secure.call(method, path, body, TOKEN)
    assert code == (404 if isinstance(body, dict) or body is None else 422), answer


def test_the_current_and_the_next_token_both_work_over_http(secure: SecureApp) -> None:
    """A token rotates without downtime: both are accepted while the rotation lasts."""
    for token in (TOKEN, NEXT_TOKEN):
        code, _, answer = secure.call("POST", "/v1/rank", rank_body(BORROWERS[1], n=3), token)
        assert code == 200, answer
    assert secure.call("GET", "/v1/models", token=NEXT_TOKEN)[0] == 200


def test_healthz_names_the_model_versions_only_to_a_valid_token(secure: SecureApp) -> None:
    code, _, anonymous = secure.call("GET", "/v1/healthz")
    assert code == 200 and anonymous == {"status": "ok", "champion": None, "canary": None}
    assert secure.version not in json.dumps(anonymous)
    code, _, wrong = secure.call("GET", "/v1/healthz", token="y" * len(TOKEN))
    assert code == 200 and wrong["champion"] is None
    code, _, known = secure.call("GET", "/v1/healthz", token=TOKEN)
    assert code == 200 and known["champion"] == secure.version


def test_an_unauthenticated_chunked_upload_is_refused_before_it_is_read(
    secure: SecureApp,
) -> None:
    """A chunked upload without a token is answered 401 while its body is still open.

    One 64 KiB chunk is sent and the body is never ended: an app that read the body
    before checking the token would wait for the rest and this read would time out.
    """
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(secure.base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=30)
    try:
        connection.putrequest("POST", f"{url.path}/v1/events")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"10000\r\n" + b" " * 0x10000 + b"\r\n")  # no last chunk, ever
        response = connection.getresponse()
        assert response.status == 401, response.read()
    finally:
        connection.close()


def test_the_published_schema_declares_the_bearer_scheme(secure: SecureApp) -> None:
    code, _, schema = secure.call("GET", "/openapi.json")
    assert code == 200
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/rank"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in schema["paths"]["/v1/healthz"]["get"]


# --------------------------------------------------------------------------- borrower ids


def _decisions(store: Path) -> list[dict[str, Any]]:
    return [row for f in store.rglob("*.parquet") for row in pq.read_table(f).to_pylist()]


def _salt() -> str:
    """The replicas' salt: they inherit this process's environment (it started the cluster)."""
    from attune.settings import get_settings

    return get_settings().borrower_salt.get_secret_value()


def test_borrower_ids_reach_the_log_and_metrics_only_salted_and_hashed(secure: SecureApp) -> None:
    answered = {}
    for borrower in BORROWERS:
        code, _, answer = secure.call("POST", "/v1/rank", rank_body(borrower, n=3), TOKEN)
        assert code == 200, answer
        answered[answer["decision_id"]] = borrower

    def logged() -> list[dict[str, Any]]:
        rows = [r for r in _decisions(secure.store) if r["decision_id"] in answered]
        return rows if len(rows) == len(answered) else []

    rows: Any = wait_for(logged, timeout=60, what="the decisions in the log")
    # The cluster's own secret salt, not the public default (which a reader could replay).
    assert _salt() != DEFAULT_BORROWER_SALT and len(_salt()) >= MIN_BORROWER_SALT_LENGTH
    for row in rows:
        borrower = answered[row["decision_id"]]
        assert row["borrower_hash"] != hash_borrower(borrower, salt=DEFAULT_BORROWER_SALT)
        assert row["borrower_hash"] == hash_borrower(borrower, salt=_salt())
        assert row["borrower_hash"] != hash_borrower(borrower, salt=_salt() + "-other")
        assert str(borrower) not in json.dumps(row, default=str)
    series: Any = wait_for(lambda: _attune_series(), timeout=60, what="attune metrics")
    assert not any(str(b) in line for b in BORROWERS for line in series)
    labels = {key for line in series for key in re.findall(r"(\w+)=\"", line)}
    assert not {label for label in labels if "borrower" in label}, labels


def _attune_series() -> list[str]:
    """Every ``ray_attune_*`` sample of this app on every node's Prometheus endpoint."""
    import ray

    lines: list[str] = []
    for node in ray.nodes():
        if node["Alive"]:
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            lines += [
                line
                for line in text.splitlines()
                if line.startswith("ray_attune_rank_requests") and f'application="{APP}"' in line
            ]
    return lines


# --------------------------------------------------------------------------- credentials


def _scan(text: str) -> list[str]:
    return [name for name, pattern in KEY_PATTERNS.items() if pattern.search(text)]


def test_the_key_patterns_catch_what_they_are_for() -> None:
    """The scanner itself can fail: each pattern matches a planted (built) example."""
    planted = {
        "AWS access key id": "AKIA" + "Q" * 16,
        "AWS secret access key": "aws_secret_access_key = " + "k" * 40,
        "private key": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "bearer token": "Authorization: Bearer " + TOKEN,
        "secret literal": 'api_key = "' + "s" * 20 + '"',
    }
    assert {name: _scan(text) for name, text in planted.items()} == {
        name: [name] for name in planted
    }


def test_no_credentials_in_tracked_files() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = {}
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.is_file():
            hits = _scan(path.read_bytes().decode(errors="replace"))
            if hits:
                found[name.decode()] = hits
    assert len(files) > 100 and not found, found


def test_no_credentials_or_borrower_ids_in_the_logs_of_this_serve_run(
    secure: SecureApp,
) -> None:
    for borrower in BORROWERS[:3]:  # traffic with the token, so it could leak now
        assert secure.call("POST", "/v1/rank", rank_body(borrower, n=2), TOKEN)[0] == 200
    logs = [p for p in (secure.session_dir / "logs").rglob("*") if p.is_file()]
    found = {}
    for path in logs:
        text = path.read_bytes().decode(errors="replace")
        hits = _scan(text) + [
            what
            for what, value in (("api token", TOKEN), ("borrower salt", _salt()))
            if value in text
        ]
        hits += ["raw borrower id"] * any(str(b) in text for b in BORROWERS)
        if hits:
            found[str(path.relative_to(secure.session_dir))] = sorted(set(hits))
    assert len(logs) > 10 and not found, found


# --------------------------------------------------------------------------- protected


def test_protected_attributes_are_never_model_features(secure: SecureApp) -> None:
    from attune.serving.rollout import _checked

    attribute = sorted(PROTECTED_COLUMNS)[0]
    with pytest.raises(ValidationError, match="protected attributes may not be features"):
        FeatureSpec(
            names=(*FEATURE_NAMES, attribute), dtypes=("float32",) * (len(FEATURE_NAMES) + 1)
        )
    served = FeatureSpec.from_json(secure.registry.read(secure.version, "feature_spec.json"))
    assert not set(served.names) & PROTECTED_COLUMNS and served == default_spec()
    models = secure.call("GET", "/v1/models", token=TOKEN)[2]["models"]
    assert [m["feature_spec_hash"] for m in models] == [served.hash]
    # A version whose spec names a protected attribute never passes the rollout check.
    spec = json.loads(default_spec().to_json())
    spec["names"][0], spec["hash"] = attribute, ""
    files = {**model_files(ranker_onnx(seed=1)), "feature_spec.json": json.dumps(spec).encode()}
    leaky = secure.registry.register(files, metadata={"name": "leaky"})
    with pytest.raises(FeatureSpecMismatch, match="protected attributes"):
        _checked(secure.registry, leaky)
