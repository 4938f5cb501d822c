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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    p50_range: tuple[float, float] = (0.0, 0.0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _haproxy_env() -> dict[str, str]:
    """Serve's HAProxy ingress on ports of its own.

    Serve binds fixed default ports with SO_REUSEPORT (fallback proxy 8500/9500, replicas
    from 30000/40000, stats 8404, metrics 9101): another Ray on the same host would share
    those sockets and answer some of this run's requests. Every port is drawn fresh.
    """
    import random
    import socket

    rng = random.SystemRandom()
    while True:
        block = rng.randrange(32_000, 59_000, 1_000)
        try:
            for port in range(block, block + 50):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            break
        except OSError:
            continue

    def port() -> int:
        return next(p for p in iter(_free_port, None) if not block <= p < block + 1_000)

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
    return _wrk_script(url, script, connections=connections, duration=duration, name=name)


def _wrk_script(url: str, script: Path, *, connections: int, duration: float, name: str) -> Run:
    """One wrk run (one thread) with a Lua ``script`` that ends with ``_WRK_REPORT``."""
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


def _measure(url: str, body_file: Path, args: argparse.Namespace, name: str) -> list[Run]:
    return [
        _wrk(url, body_file, connections=1, duration=args.duration, name=name),
        _wrk(url, body_file, connections=args.connections, duration=args.duration, name=name),
    ]


@contextmanager
def _baseline(model: Path, body_file: Path) -> Iterator[str]:
    """The uvicorn baseline in a subprocess; yields its URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(_ROOT / "bench" / "_uvicorn_baseline.py"), str(model), str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/rank"
        _wait(url, body_file.read_bytes())
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def _serve(model: Path, body_file: Path, work: Path, args: argparse.Namespace) -> Iterator[str]:
    """A local Ray running the app twice: champion only, and champion + 100 % shadow.

    Yields the base URL; the apps answer under ``/app`` and ``/shadow``.
    """
    if args.proxy == "haproxy":
        os.environ.update(_haproxy_env())
    for pair in args.serve_env:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy

    registry = Registry(str(work / "registry"))
    files = {"model.onnx": model.read_bytes(), "feature_spec.json": _spec_json()}
    champion = registry.register(files, metadata={"bench": "champion"})
    shadow = registry.register(files, metadata={"bench": "shadow"})
    rollouts = {
        "app": RolloutConfig(champion=champion),
        "shadow": RolloutConfig(champion=champion, shadow=shadow, shadow_percent=100),
    }
    port = _free_port()
    # address="local": a fresh instance, never some other Ray already running on the host.
    ray.init(
        address="local",
        num_cpus=max(2, 2 * args.replicas),  # logical CPUs: both apps' replicas fit
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        apps = []
        for name, rollout in rollouts.items():
            ingress: dict[str, Any] = {
                "num_replicas": args.replicas,
                "user_config": rollout.model_dump(mode="json"),
            }
            if args.separate_user_thread:
                env = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"}
                ingress["ray_actor_options"] = {"runtime_env": {"env_vars": env}}
            store = str(work / f"store-{name}")
            app = app_config(
                {"registry": registry.uri, "store": store},
                name=name,
                route_prefix=f"/{name}",
                ingress=ingress,
            )
            if not args.access_log:
                app["logging_config"] = {"enable_access_log": False}
            apps.append(app)
        deploy(ServeDeploySchema(applications=apps))
        base = f"http://127.0.0.1:{port}"
        for name in rollouts:
            _wait(f"{base}/{name}/v1/rank", body_file.read_bytes())
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


def _rounds(targets: list[tuple[str, str]], body_file: Path, args: argparse.Namespace) -> list[Run]:
    """Interleave the targets for ``args.rounds`` rounds; the median of each figure."""
    from rich.progress import track

    for _, url in targets:
        _wrk(url, body_file, connections=args.connections, duration=2, name="warm-up")
    measured: dict[tuple[str, int], list[Run]] = {}
    steps = [(r, name, url) for r in range(args.rounds) for name, url in targets]
    for _, name, url in track(steps, description="measuring (wrk)"):
        for run in _measure(url, body_file, args, name):
            measured.setdefault((name, run.connections), []).append(run)
    out = []
    for (name, connections), runs in measured.items():
        out.append(
            Run(
                name=name,
                connections=connections,
                p50_ms=statistics.median(r.p50_ms for r in runs),
                p99_ms=statistics.median(r.p99_ms for r in runs),
                rps=statistics.median(r.rps for r in runs),
                failed=sum(r.failed for r in runs),
                p50_range=(min(r.p50_ms for r in runs), max(r.p50_ms for r in runs)),
            )
        )
    return out


def _spec_json() -> bytes:
    from attune.data.spec import default_spec

    return default_spec().to_json().encode()


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"POST /v1/rank, 8 candidates: median of {args.rounds} interleaved wrk runs "
        f"of {args.duration:g} s"
    )
    for column in ("server", "conns", "p50 ms", "p50 min-max", "p99 ms", "req/s", "failed"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            run.name,
            str(run.connections),
            f"{run.p50_ms:.2f}",
            f"{run.p50_range[0]:.2f}-{run.p50_range[1]:.2f}",
            f"{run.p99_ms:.2f}",
            f"{run.rps:,.0f}",
            str(run.failed),
        )
    console = Console()
    console.print(table)
    console.print(
        f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
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
    parser.add_argument("--duration", type=float, default=5, help="Seconds per wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (median).")
    parser.add_argument("--connections", type=int, default=8, help="Saturating connections.")
    parser.add_argument("--proxy", choices=("haproxy", "default"), default="haproxy")
    parser.add_argument("--replicas", type=int, default=1, help="Ingress replicas per app.")
    parser.add_argument("--access-log", action="store_true", help="Keep Serve's access log.")
    parser.add_argument(
        "--separate-user-thread",
        action="store_true",
        help="Run user code on Serve's separate thread (Serve's default; the app turns it off).",
    )
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
        with _baseline(model, body_file) as baseline, _serve(model, body_file, work, args) as base:
            targets = [
                ("uvicorn + ONNX Runtime", baseline),
                (f"Serve app ({args.proxy} x{args.replicas})", f"{base}/app/v1/rank"),
                ("Serve app + 100 % shadow", f"{base}/shadow/v1/rank"),
            ]
            runs = _rounds(targets, body_file, args)
    _report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
