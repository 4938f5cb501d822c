"""Benchmark: the Serve ranking app against a single-process uvicorn + ONNX Runtime server.

    .venv/bin/python bench/serve.py [--duration 10] [--connections 8] [--proxy haproxy]

Same model (XGBoost ranker, 200 trees of depth 6, exported to ONNX), same payload (one
borrower, 8 candidates with full feature vectors), one external load generator (wrk,
``apt-get install -y wrk``), all in one run:

1. baseline: ``bench/_uvicorn_baseline.py`` (uvicorn + FastAPI + ONNX Runtime, one process);
2. the attune app on a local Ray (``--proxy haproxy``: Serve's HAProxy ingress, the
   default; ``--proxy default``: Serve's Python proxy), champion only;
3. the same app with a shadow model mirroring 100 % of requests (reconfigured live).

Each is measured at 1 connection (latency: p50, p99) and at ``--connections`` (saturated
throughput). Prints the figures and the ratios the goals are stated in: p50 within 2 ms
of the baseline, >= 50 % of its throughput, shadow adding <= 10 % to p50. ``--plot``
writes a PNG of the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
_WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format('{"p50_us": %d, "p99_us": %d, "requests": %d, "errors": %d, '
    .. '"non2xx": %d, "seconds": %f}\\n',
    latency:percentile(50), latency:percentile(99), summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status, summary.duration / 1e6))
end
"""


@dataclass(frozen=True)
class Run:
    """One wrk run: latency percentiles (ms) and throughput (req/s)."""

    name: str
    connections: int
    p50_ms: float
    p99_ms: float
    rps: float
    failed: int


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _model(work: Path) -> tuple[Path, dict[str, Any]]:
    """Train the benchmark ranker, export it; returns (model.onnx path, request body)."""
    import numpy as np
    import xgboost as xgb

    from attune.data.schema import OPTION_IDS
    from attune.data.spec import FEATURE_NAMES
    from attune.training.export import export_onnx

    rng = np.random.default_rng(0)
    rows = 4_000
    X = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    y = np.clip(np.round(X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(0, 0.5, rows) + 1), 0, 3)
    dtrain = xgb.DMatrix(X, label=y, qid=np.repeat(np.arange(rows // 8), 8))
    params = {"objective": "rank:ndcg", "max_depth": 6, "eta": 0.1, "nthread": 1, "seed": 0}
    booster = xgb.train(params, dtrain, num_boost_round=200)
    path = work / "model.onnx"
    path.write_bytes(export_onnx(booster, n_features=len(FEATURE_NAMES)))
    body = {
        "borrower_id": 123456,
        "context": {"touchpoint": "app"},
        "candidates": [
            {"option_id": option, "features": [round(float(v), 4) for v in X[i]]}
            for i, option in enumerate(OPTION_IDS)
        ],
    }
    return path, body


def _wrk(url: str, body_file: Path, *, connections: int, duration: float, name: str) -> Run:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = io.open("{body_file}"):read("a")\n' + _WRK_REPORT
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return Run(
        name=name,
        connections=connections,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        rps=report["requests"] / report["seconds"],
        failed=report["errors"] + report["non2xx"],
    )


def _wait(url: str, body: bytes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # the server is up and refuses: no point waiting
            raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:500]!r}") from exc
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _measure(name: str, url: str, body_file: Path, args: argparse.Namespace) -> list[Run]:
    _wrk(url, body_file, connections=args.connections, duration=2, name="warm-up")
    return [
        _wrk(url, body_file, connections=1, duration=args.duration, name=name),
        _wrk(url, body_file, connections=args.connections, duration=args.duration, name=name),
    ]


def _baseline(model: Path, body_file: Path, args: argparse.Namespace) -> list[Run]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(_ROOT / "bench" / "_uvicorn_baseline.py"), str(model), str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/rank"
        _wait(url, body_file.read_bytes())
        return _measure("uvicorn + ONNX Runtime", url, body_file, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _serve(model: Path, body_file: Path, work: Path, args: argparse.Namespace) -> list[Run]:
    if args.proxy == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
        os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    for pair in args.serve_env:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy, update_rollout

    registry = Registry(str(work / "registry"))
    files = {"model.onnx": model.read_bytes(), "feature_spec.json": _spec_json()}
    champion = registry.register(files, metadata={"bench": "champion"})
    shadow = registry.register(files, metadata={"bench": "shadow"})
    port = _free_port()
    # address="local": a fresh instance, never some other Ray already running on the host.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        args_ = {"registry": registry.uri, "store": str(work / "store")}
        ingress = {
            "num_replicas": 1,
            "user_config": RolloutConfig(champion=champion).model_dump(mode="json"),
        }
        app = app_config(args_, name="bench", ingress=ingress)
        if not args.access_log:
            app["logging_config"] = {"enable_access_log": False}
        deploy(ServeDeploySchema(applications=[app]))
        url = f"http://127.0.0.1:{port}/v1/rank"
        _wait(url, body_file.read_bytes())
        runs = _measure(f"Serve app ({args.proxy} proxy)", url, body_file, args)
        update_rollout(
            "bench",
            lambda r: r.model_copy(update={"shadow": shadow, "shadow_percent": 100.0}),
        )
        runs += _measure("Serve app + 100 % shadow", url, body_file, args)
        return runs
    finally:
        serve.shutdown()
        ray.shutdown()


def _spec_json() -> bytes:
    from attune.data.spec import default_spec

    return default_spec().to_json().encode()


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"POST /v1/rank, 8 candidates, wrk {args.duration:g} s per row")
    for column in ("server", "connections", "p50 ms", "p99 ms", "req/s", "failed"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            run.name,
            str(run.connections),
            f"{run.p50_ms:.2f}",
            f"{run.p99_ms:.2f}",
            f"{run.rps:,.0f}",
            str(run.failed),
        )
    console = Console()
    console.print(table)
    base_1, base_n, app_1, app_n, shadow_1, shadow_n = runs
    verdicts = [
        ("p50 - baseline p50", f"{app_1.p50_ms - base_1.p50_ms:+.2f} ms", "<= 2 ms",
         app_1.p50_ms - base_1.p50_ms <= 2.0),
        ("throughput / baseline", f"{app_n.rps / base_n.rps:.0%}", ">= 50 %",
         app_n.rps / base_n.rps >= 0.5),
        ("shadow p50 / p50", f"{shadow_1.p50_ms / app_1.p50_ms - 1:+.1%}", "<= +10 %",
         shadow_1.p50_ms / app_1.p50_ms - 1 <= 0.10),
        ("shadow throughput / throughput", f"{shadow_n.rps / app_n.rps:.0%}", "(info)", True),
    ]  # fmt: skip
    for name, value, goal, met in verdicts:
        console.print(f"{name:>32}: {value:>8}  goal {goal:<9} {'met' if met else 'MISSED'}")
    if args.plot:
        _plot(runs, Path(args.plot))
        console.print(f"plot written to {args.plot}")


def _plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs[::2]]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(names))
    lat.bar([x - 0.2 for x in xs], [r.p50_ms for r in runs[::2]], width=0.4, label="p50")
    lat.bar([x + 0.2 for x in xs], [r.p99_ms for r in runs[::2]], width=0.4, label="p99")
    lat.set_title("latency at 1 connection (ms)")
    thr.bar(xs, [r.rps for r in runs[1::2]])
    thr.set_title(f"saturated throughput, {runs[1].connections} connections (req/s)")
    for axis in (lat, thr):
        axis.set_xticks(list(xs), names, rotation=15, fontsize=8)
    lat.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/serve.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="Seconds per wrk run.")
    parser.add_argument("--connections", type=int, default=8, help="Saturating connections.")
    parser.add_argument("--proxy", choices=("haproxy", "default"), default="haproxy")
    parser.add_argument("--access-log", action="store_true", help="Keep Serve's access log.")
    parser.add_argument(
        "--serve-env", action="append", default=[], help="KEY=VALUE set before Ray starts."
    )
    parser.add_argument("--plot", default=None, help="Write a PNG of the figures here.")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="attune-bench-") as tmp:
        work = Path(tmp)
        print("training and exporting the benchmark model (200 trees, depth 6) ...")
        model, body = _model(work)
        body_file = work / "body.json"
        body_file.write_text(json.dumps(body))
        runs = _baseline(model, body_file, args)
        runs += _serve(model, body_file, work, args)
    _report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
