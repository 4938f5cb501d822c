"""Benchmark: where should the shadow model run? A separate deployment vs the ingress.

    .venv/bin/python bench/shadow_hop.py [--rounds 3] [--duration 4]

The ranking app scores the shadow inside its ingress replica, after the answer, on a
worker thread (attune.serving.ingress). The alternative is a separate Serve deployment
called fire-and-forget through a DeploymentHandle. This measures what that call alone
costs the ingress: a minimal FastAPI ingress scoring the same ONNX model (200 trees,
depth 6, 8 candidates), with and without ``shadow.score.remote(X)`` per request (never
awaited), behind Serve's HAProxy ingress, interleaved rounds, wrk at 1 connection.
bench/serve.py measures the in-process shadow of the real app in the same way.
"""

# No `from __future__ import annotations`: FastAPI must see the route annotations as types.

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/shadow_hop.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4)
    args = parser.parse_args(argv)
    from serve import _free_port, _haproxy_env, _model, _wrk  # bench/serve.py's helpers

    with tempfile.TemporaryDirectory(prefix="attune-hop-") as tmp:
        work = Path(tmp)
        model, body = _model(work)
        body_file = work / "body.json"
        body_file.write_text(json.dumps(body))
        os.environ.update(_haproxy_env())
        os.environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] = "0"
        results = _run(model.read_bytes(), body_file, _free_port(), _wrk, args)
    for name, runs in results.items():
        p50 = statistics.median(r.p50_ms for r in runs)
        rps = statistics.median(r.rps for r in runs)
        failed = sum(r.failed for r in runs)
        print(f"{name:>28}: p50 {p50:.2f} ms, {rps:,.0f} req/s (1 connection), {failed} failed")
    plain = statistics.median(r.p50_ms for r in results["ingress only"])
    hop = statistics.median(r.p50_ms for r in results["ingress + handle call"])
    print(f"fire-and-forget handle call adds {hop - plain:+.2f} ms ({hop / plain - 1:+.0%}) to p50")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


def _run(model: bytes, body_file: Path, port: int, wrk: Any, args: argparse.Namespace) -> Any:
    import numpy as np
    import onnxruntime as ort
    import ray
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve

    api = FastAPI()

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
    class Shadow:
        def __init__(self) -> None:
            self.session = ort.InferenceSession(model)
            self.calls = 0

        def score(self, X: np.ndarray) -> None:
            self.session.run(None, {"features": X})
            self.calls += 1

        def count(self) -> int:
            return self.calls

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(api)
    class Ingress:
        def __init__(self, shadow: Any) -> None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(model, options)
            self.shadow, self.mirror = shadow, False
            # A DeploymentResponse that is dropped at once is never sent: keep the latest.
            self.in_flight: deque[Any] = deque(maxlen=1_000)

        def reconfigure(self, config: dict[str, Any]) -> None:
            self.mirror = config["mirror"]

        @api.post("/rank")
        async def rank(self, request: Request) -> Response:
            body = json.loads(await request.body())
            X = np.asarray([c["features"] for c in body["candidates"]], dtype=np.float32)
            scores = self.session.run(None, {"features": X})[0].reshape(-1)
            if self.mirror:
                self.in_flight.append(self.shadow.score.remote(X))  # never awaited
            return Response(json.dumps({"scores": scores.tolist()}), media_type="application/json")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[Any]] = {"ingress only": [], "ingress + handle call": []}
    mirrored: list[int] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        ingress: Any = Ingress
        for _ in range(args.rounds):
            for name, mirror in (("ingress only", False), ("ingress + handle call", True)):
                app = ingress.options(user_config={"mirror": mirror}).bind(Shadow.bind())
                serve.run(app, name="hop", route_prefix="/hop")
                time.sleep(1)
                url = f"http://127.0.0.1:{port}/hop/rank"
                wrk(url, body_file, connections=1, duration=1, name="warm-up")
                results[name].append(
                    wrk(url, body_file, connections=1, duration=args.duration, name=name)
                )
                if mirror:  # proof that the shadow calls happened
                    handle = serve.get_deployment_handle("Shadow", app_name="hop")
                    mirrored.append(handle.count.remote().result())
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"shadow deployment calls per mirrored round: {mirrored}")
    return results


if __name__ == "__main__":
    sys.exit(main())
