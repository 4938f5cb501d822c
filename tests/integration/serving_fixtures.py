"""Test models, registries and HTTP helpers for the serving tests (no Ray at import).

Models are real: tiny XGBoost rankers exported by attune.training.export, and two
planted faulty models for the guardrails: a "garbage" regressor whose scores sit around
1,000 (finite, but nothing like the champion's) and an ONNX graph that answers NaN.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attune.data.schema import OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, FEATURE_NAMES, FeatureSpec, default_spec

N_FEATURES = len(FEATURE_NAMES)


def serve_isolation_env() -> dict[str, str]:
    """Environment that keeps this Ray's Serve ports apart from other Rays on the host.

    Set before the cluster starts. Serve's HAProxy ingress (docs/serving.md) binds fixed
    defaults with SO_REUSEPORT: the fallback proxy on 8500/9500, replicas from 30000 and
    40000 up, stats on 8404 and metrics on 9101. Two clusters on one host would then share
    sockets, and a request could reach the *other* cluster's proxy or replica (a 404 for
    a route it does not know). Every port here is drawn fresh; replicas drain in 1 s.
    """
    from tests.conftest import free_port

    block = _free_port_block()

    def port() -> int:  # outside the replicas' block
        return next(p for p in iter(free_port, None) if not block <= p < block + 1_000)

    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(block + 200),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(block + 400),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(block + 600),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def _free_port_block(size: int = 1_000) -> int:
    """The start of ``size`` ports none of whose first 50 is bound (system randomness:
    the tests seed ``random``, and every session must draw a different block)."""
    import random
    import socket

    rng = random.SystemRandom()
    while True:
        base = rng.randrange(32_000, 60_000 - size, size)
        try:
            for port in range(base, base + 50):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


_OPTION_COLUMNS = [FEATURE_NAMES.index(f"opt_{o}") for o in OPTION_IDS]


def _rows(rng: np.random.Generator, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n_groups * len(OPTION_IDS), N_FEATURES)).astype(np.float32)
    X[:, _OPTION_COLUMNS] = 0.0
    for g in range(n_groups):
        for k, column in enumerate(_OPTION_COLUMNS):
            X[g * len(OPTION_IDS) + k, column] = 1.0
    qid = np.repeat(np.arange(n_groups), len(OPTION_IDS))
    return X, qid


def ranker_onnx(*, seed: int, n_trees: int = 6) -> bytes:
    """A small ``rank:ndcg`` XGBoost ranker exported to ONNX (spec: default_spec())."""
    return ranker_files(seed=seed, n_trees=n_trees)["model.onnx"]


def ranker_files(*, seed: int, n_trees: int = 6) -> dict[str, bytes]:
    """A small ranker as registry files: ``model.onnx``, native ``model.ubj``, feature spec."""
    import xgboost

    from attune.training.export import export_onnx

    rng = np.random.default_rng(seed)
    X, qid = _rows(rng, 40)
    utility = X[:, 0] * X[:, _OPTION_COLUMNS[0]] + X[:, 1] * X[:, _OPTION_COLUMNS[2]] + X[:, 2]
    label = np.clip(np.round(utility + 1), 0, 3)
    dtrain = xgboost.DMatrix(X, label=label, qid=qid)
    params = {"objective": "rank:ndcg", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": seed}
    booster = xgboost.train(params, dtrain, num_boost_round=n_trees)
    files = model_files(export_onnx(booster, n_features=N_FEATURES))
    files["model.ubj"] = bytes(booster.save_raw("ubj"))
    return files


def garbage_onnx(*, seed: int = 7) -> bytes:
    """A regressor trained on noise around 1,000: finite scores, far from any ranker's."""
    import xgboost

    from attune.training.export import export_onnx

    rng = np.random.default_rng(seed)
    X, _ = _rows(rng, 20)
    y = rng.uniform(500, 1500, size=X.shape[0])
    params = {"objective": "reg:squarederror", "max_depth": 2, "nthread": 1, "seed": seed}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=y), num_boost_round=3)
    return export_onnx(booster, n_features=N_FEATURES)


def nan_onnx() -> bytes:
    """An ONNX graph with the ranker's signature that answers NaN for every row."""
    from onnx import TensorProto, helper

    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, N_FEATURES])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "nan"], ["score"]),
        ],
        "nan_ranker",
        [features],
        [score],
        initializer=[nan, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data: bytes = model.SerializeToString()
    return data


def model_files(onnx_bytes: bytes, spec: FeatureSpec | None = None) -> dict[str, bytes]:
    """The files a registry version needs for serving (no fairness report: moves override)."""
    spec = spec or default_spec()
    return {"model.onnx": onnx_bytes, "feature_spec.json": spec.to_json().encode()}


class DictStore:
    """A ModelStore over a dict ``{version: {file: bytes}}`` with ``aliases`` (unit tests)."""

    def __init__(self, versions: dict[str, dict[str, bytes]], aliases: dict[str, str]) -> None:
        self.versions, self.aliases = versions, aliases

    def resolve(self, alias_or_version: str) -> str:
        from attune.errors import VersionNotFound

        version = self.aliases.get(alias_or_version, alias_or_version)
        if version not in self.versions:
            raise VersionNotFound(registry="dict", version=alias_or_version)
        return version

    def read(self, version: str, name: str) -> bytes:
        from attune.errors import StoreNotFound

        files = self.versions[self.resolve(version)]
        if name not in files:
            raise StoreNotFound(uri=f"dict://{version}/{name}")
        return files[name]


# --------------------------------------------------------------------------- requests


def borrower_state(seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {name: float(round(rng.uniform(0, 5), 3)) for name in BORROWER_FEATURES}


def rank_body(
    borrower_id: int, *, features: bool = True, n: int = len(OPTION_IDS), seed: int = 0
) -> dict[str, Any]:
    """A valid /v1/rank body: ``n`` candidates with full feature vectors, or borrower state."""
    rng = np.random.default_rng(seed)
    candidates: list[dict[str, Any]] = []
    for option in OPTION_IDS[:n]:
        candidate: dict[str, Any] = {"option_id": option}
        if features:
            candidate["features"] = [round(float(v), 4) for v in rng.normal(size=N_FEATURES)]
        candidates.append(candidate)
    body: dict[str, Any] = {
        "borrower_id": borrower_id,
        "context": {"touchpoint": "app"},
        "candidates": candidates,
    }
    if not features:
        body["borrower"] = borrower_state(seed)
    return body


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: Any


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None) -> HttpResult:
    """One HTTP call; returns status and parsed JSON (or text) without raising on 4xx/5xx."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return HttpResult(status, json.loads(payload))
    except ValueError:
        return HttpResult(status, payload.decode(errors="replace"))


class KeepAlive:
    """One persistent HTTP/1.1 connection per thread (much cheaper than a connect per call)."""

    def __init__(self, base: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname or "", parts.port or 80, parts.path
        self._local = threading.local()

    def post(self, path: str, body: Any) -> HttpResult:
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request(
            "POST", self.prefix + path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        payload = response.read()
        try:
            return HttpResult(response.status, json.loads(payload))
        except ValueError:
            return HttpResult(response.status, payload.decode(errors="replace"))


def wait_http_ok(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = http("GET", url)
            if result.status == 200:
                return
            last = result
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s: {last}")


# --------------------------------------------------------------------------- offline features


def offline_borrower_features(seed: int = 0, n_borrowers: int = 3) -> Any:
    """Borrower features as ``attune preprocess`` computes them, from a tiny random history.

    Returns the ``attune.data.features.borrower_features`` frame: one row per borrower,
    as of 2026-03-01, with every BORROWER_FEATURES column.
    """
    import pandas as pd

    from attune.data.features import borrower_features

    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-09-01", tz="UTC")
    types = ["installment_due", "payment_on_time", "payment_late", "login", "outreach_sent",
             "outreach_delivered", "outreach_opened", "autopay_on", "hardship_flag"]  # fmt: skip
    rows = []
    for b in range(n_borrowers):
        for _ in range(40):
            kind = str(rng.choice(types))
            rows.append(
                {
                    "borrower_id": b,
                    "ts": start + pd.Timedelta(minutes=int(rng.integers(0, 180 * 24 * 60))),
                    "event_type": kind,
                    "amount": float(rng.uniform(50, 300)) if "pay" in kind or "due" in kind else 0,
                    "channel": str(rng.choice(["sms", "email", "push"])) if "outreach" in kind
                    else None,
                }
            )  # fmt: skip
    events = pd.DataFrame(rows)
    borrowers = pd.DataFrame(
        {
            "borrower_id": range(n_borrowers),
            "income_monthly": rng.uniform(2000, 6000, n_borrowers),
            "income_volatility": rng.uniform(0, 1, n_borrowers),
        }
    )
    loans = pd.DataFrame(
        {
            "borrower_id": range(n_borrowers),
            "origination_ts": [start - pd.Timedelta(days=30)] * n_borrowers,
            "term_months": [36] * n_borrowers,
            "installment": rng.uniform(100, 400, n_borrowers),
            "apr": rng.uniform(0.05, 0.3, n_borrowers),
        }
    )
    queries = pd.DataFrame(
        {
            "borrower_id": range(n_borrowers),
            "ts": [pd.Timestamp("2026-03-01", tz="UTC")] * n_borrowers,
        }
    )
    return borrower_features(events, queries, borrowers=borrowers, loans=loans)


@contextlib.contextmanager
def serve_run(checkout: Path, config: dict[str, Any], env: dict[str, str]) -> Iterator[str]:
    """``serve run serve_configs/local.yaml`` in ``checkout`` with ``config`` written there,
    on a Ray of its own (``-a local``); yields the base URL once ``/v1/healthz`` answers.

    Stopped with SIGINT as a user would (killed if it does not exit in 90 s).
    """
    import signal
    import subprocess
    import sys

    import yaml

    (checkout / "serve_configs").mkdir(exist_ok=True)
    (checkout / "serve_configs/local.yaml").write_text(yaml.safe_dump(config))
    log = (checkout / "serve-run.log").open("w")
    serve_cli = str(Path(sys.executable).parent / "serve")
    process = subprocess.Popen(
        [serve_cli, "run", "-a", "local", "serve_configs/local.yaml"],
        cwd=checkout,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{config['http_options']['port']}"
        wait_http_ok(f"{base}/v1/healthz", timeout=240)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
