"""Benchmark: the online feature view at scale, and the cost of its hop in a ranking request.

    .venv/bin/python bench/online.py [--borrowers 100000] [--months 7] [--requests 300]

All in one run, on a local Ray with ``--cpus`` CPUs (default 2):

1. **materialize**: ``attune features materialize`` of a simulator history of
   ``--borrowers`` over ``--months`` (generated once into ``--work`` and reused), as of
   the history's end, so the snapshot holds a full 180-day horizon of events: wall time
   and borrowers per second.
2. **memory**: that snapshot loaded as an online view in this process: resident-memory
   growth and the view's array bytes, per borrower and per kept event, and both scaled
   to one million borrowers.
3. **look-up compute** in this process: one borrower per call, and 64 per call (what
   the deployment's ``@serve.batch`` does under concurrency), per look-up.
4. **ranking latency over HTTP**, one app, requests interleaved: the borrower's state in
   the request (no hop) versus the borrower id only (ingress -> ``OnlineFeatures`` hop
   and look-up): p50 / p99 at one connection and throughput at ``--threads``. The
   difference of the p50s is what the online view adds to a ranking.

Prints a table and one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]


def _history(work: Path, borrowers: int, months: int) -> str:
    from attune import storage
    from attune.data.simulator import GenerateConfig, generate

    out = work / f"history-{borrowers}x{months}"
    if storage.exists(str(out / "manifest.json")):
        return str(out)
    started = time.perf_counter()
    generate(
        GenerateConfig(
            borrowers=borrowers,
            months=months,
            seed=7,
            out=str(out),
            parallel="local",
            overwrite=True,
        ),
        progress=False,
    )
    print(
        f"generated {borrowers} borrowers x {months} months in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return str(out)


def _rss() -> int:
    import psutil

    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _replica_rss() -> float:
    """Resident memory of the OnlineFeatures replica process (GiB; 0 when not found)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if any("OnlineFeatures" in part for part in proc.info["cmdline"] or ()):
            return float(proc.memory_info().rss / 2**30)
    return 0.0


def _peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _memory(info: Any, sample: int) -> tuple[dict[str, float], list[int]]:
    import numpy as np

    from attune.data.materialize import read_snapshot
    from attune.serving.online_view import OnlineView

    read_snapshot(info, borrower_ids=[1])  # one-time imports and buffers, not per borrower
    before, peak_before = _rss(), _peak()
    started = time.perf_counter()
    view = OnlineView.load(info)
    load_s = time.perf_counter() - started
    grown, arrays, peak = _rss() - before, view.nbytes(), _peak() - peak_before
    n, events = len(view.ids), info.events
    figures = {
        "load_s": load_s,
        "borrowers": n,
        "kept_events": events,
        "events_per_borrower": events / n,
        "rss_bytes_per_borrower": grown / n,
        "rss_peak_bytes_per_borrower": peak / n,
        "array_bytes_per_borrower": arrays / n,
        "array_bytes_per_event": arrays / max(events, 1),
        "rss_gib_per_million": grown / n * 1e6 / 2**30,
        "array_gib_per_million": arrays / n * 1e6 / 2**30,
    }
    figures.update(_lookup_compute(view))
    ids = np.random.default_rng(1).choice(view.ids, min(sample, n), replace=False).tolist()
    del view
    return figures, ids


def _lookup_compute(view: Any) -> dict[str, float]:
    from datetime import UTC, datetime

    import numpy as np

    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    one = []
    for b in rng.choice(view.ids, 60):
        started = time.perf_counter()
        view.lookup([int(b)], [now])
        one.append(time.perf_counter() - started)
    batch = []
    for _ in range(10):
        ids = rng.choice(view.ids, 64, replace=False).tolist()
        started = time.perf_counter()
        view.lookup(ids, [now] * 64)
        batch.append((time.perf_counter() - started) / 64)
    return {
        "lookup_ms_single": statistics.median(one) * 1e3,
        "lookup_ms_per_borrower_in_64": statistics.median(batch) * 1e3,
    }


def _model() -> bytes:
    import numpy as np
    import xgboost as xgb

    from attune.data.spec import FEATURE_NAMES
    from attune.training.export import export_onnx

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, len(FEATURE_NAMES))).astype(np.float32)
    y = np.clip(np.round(X[:, 0] + X[:, 9] - X[:, 23] + 1), 0, 3)
    params = {"objective": "rank:ndcg", "max_depth": 6, "eta": 0.1, "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(X, label=y, qid=np.arange(4000) // 8), 200)
    return export_onnx(booster, n_features=len(FEATURE_NAMES))


class _Client:
    """One keep-alive HTTP connection per thread; returns (status, JSON body, seconds)."""

    def __init__(self, base: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname or "", parts.port or 80, parts.path
        self._local = threading.local()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        data = json.dumps(body) if body is not None else None
        started = time.perf_counter()
        conn.request(method, self.prefix + path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload), time.perf_counter() - started


def _serve(work: Path, store: str) -> str:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from attune.data.spec import default_spec
    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy

    registry = Registry(str(work / "registry"))
    files = {"model.onnx": _model(), "feature_spec.json": default_spec().to_json().encode()}
    champion = registry.register(files, metadata={"bench": "online"})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    args = {"registry": registry.uri, "store": store, "online": {}}
    ingress = {"num_replicas": 1, "user_config": RolloutConfig(champion=champion).model_dump()}
    app = app_config(args, name="online", route_prefix="/online", ingress=ingress)
    app["logging_config"] = {"enable_access_log": False}
    deploy(ServeDeploySchema(applications=[app]), wait_s=600)
    return f"http://127.0.0.1:{port}/online"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bodies(client: _Client, ids: Sequence[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    from attune.data.schema import OPTION_IDS

    out = []
    for b in ids:
        base = {
            "borrower_id": int(b),
            "context": {"touchpoint": "app"},
            "candidates": [{"option_id": o} for o in OPTION_IDS],
        }
        status, found, _ = client.call("GET", f"/v1/features/{int(b)}")
        assert status == 200, found
        out.append((base, {**base, "borrower": found["features"]}))
    return out


def _latency(
    client: _Client, bodies: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"online": [], "request": []}
    for i, (by_id, with_state) in enumerate(bodies):
        pairs = [("online", by_id), ("request", with_state)]
        for name, body in pairs if i % 2 else pairs[::-1]:  # interleaved, order alternating
            status, answer, seconds = client.call("POST", "/v1/rank", body)
            assert status == 200, answer
            times[name].append(seconds * 1e3)
    out: dict[str, Any] = {}
    for name, values in times.items():
        values.sort()
        out[f"{name}_p50_ms"] = values[len(values) // 2]
        out[f"{name}_p99_ms"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    return out


def _throughput(
    client: _Client, bodies: list[Any], which: int, threads: int, seconds: float
) -> float:
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            status, answer, _ = client.call("POST", "/v1/rank", bodies[i % len(bodies)][which])
            assert status == 200, answer
            done[k] += 1
            i += threads

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--borrowers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="Rankings per mode.")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="Per throughput run.")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--work", type=Path, default=_ROOT / ".attune" / "bench-online")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # as in the OnlineFeatures replica (attune.serving.online.REPLICA_ENV), before pyarrow loads
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import ray
    from ray import serve

    from attune import storage
    from attune.data.materialize import MaterializeConfig, materialize

    args.work.mkdir(parents=True, exist_ok=True)
    history = _history(args.work, args.borrowers, args.months)
    end = storage.read_json(storage.join(history, "manifest.json"))["end"]
    store = str(args.work / f"store-{args.borrowers}x{args.months}")
    storage.delete_prefix(store)
    figures: dict[str, Any] = {
        "borrowers": args.borrowers,
        "months": args.months,
        "cpus": args.cpus,
    }
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        from datetime import UTC, datetime

        as_of = datetime.fromisoformat(str(end)).replace(tzinfo=UTC)
        started = time.perf_counter()
        info = materialize(history, store, config=MaterializeConfig(as_of=as_of))
        figures["materialize_s"] = time.perf_counter() - started
        figures["materialize_borrowers_per_s"] = info.borrowers / figures["materialize_s"]
        memory, ids = _memory(info, args.requests)
        figures.update(memory)
        base = _serve(args.work, store)
        client = _Client(base)
        bodies = _bodies(client, ids)
        figures["replica_rss_gib"] = _replica_rss()
        _latency(client, bodies[:20])  # warm both paths
        figures.update(_latency(client, bodies))
        figures["hop_p50_ms"] = figures["online_p50_ms"] - figures["request_p50_ms"]
        figures["online_rps"] = _throughput(client, bodies, 0, args.threads, args.seconds)
        figures["request_rps"] = _throughput(client, bodies, 1, args.threads, args.seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    _report(figures)
    return 0


def _report(f: dict[str, Any]) -> None:
    rows = [
        (
            "materialize",
            f"{f['borrowers']:,} borrowers x {f['months']} months on {f['cpus']} "
            f"CPUs: {f['materialize_s']:.0f} s "
            f"({f['materialize_borrowers_per_s']:,.0f} borrowers/s)",
        ),
        (
            "snapshot",
            f"{f['kept_events']:,} kept events, {f['events_per_borrower']:.1f} per "
            f"borrower; loaded as a view in {f['load_s']:.1f} s",
        ),
        (
            "memory",
            f"RSS +{f['rss_bytes_per_borrower']:,.0f} B/borrower (peak while loading "
            f"+{f['rss_peak_bytes_per_borrower']:,.0f}) "
            f"({f['rss_gib_per_million']:.2f} GiB per million); arrays "
            f"{f['array_bytes_per_borrower']:,.0f} B/borrower, {f['array_bytes_per_event']:.1f} "
            f"B/event ({f['array_gib_per_million']:.2f} GiB per million)",
        ),
        ("replica", f"OnlineFeatures replica process RSS {f['replica_rss_gib']:.2f} GiB"),
        (
            "look-up compute",
            f"{f['lookup_ms_single']:.2f} ms alone, "
            f"{f['lookup_ms_per_borrower_in_64']:.3f} ms each in a batch of 64",
        ),
        (
            "rank, state in request",
            f"p50 {f['request_p50_ms']:.1f} ms, p99 "
            f"{f['request_p99_ms']:.1f} ms, {f['request_rps']:.0f} req/s",
        ),
        (
            "rank, by id (online)",
            f"p50 {f['online_p50_ms']:.1f} ms, p99 "
            f"{f['online_p99_ms']:.1f} ms, {f['online_rps']:.0f} req/s",
        ),
        (
            "online hop",
            f"+{f['hop_p50_ms']:.1f} ms p50 "
            f"(x{f['online_p50_ms'] / f['request_p50_ms']:.2f}); throughput "
            f"x{f['online_rps'] / f['request_rps']:.2f}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()}))


if __name__ == "__main__":
    sys.exit(main())
