"""What the fault scenarios share: the app's handle, the load process, the report.

* :class:`FaultApp` talks to the shared Serve app over HTTP, finds its replicas (Ray
  named actors), reads its decision log back from S3 and its drop counter back from
  Ray's Prometheus endpoints.
* :class:`Load` runs :mod:`tests.faults.loadgen` in a separate process and reads its
  counts while it runs.
* :class:`Report` keeps one line per scenario: what was injected, what was counted.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import WaitAborted, wait_for
from tests.integration.serving_fixtures import (
    garbage_onnx,
    http,
    model_files,
    nan_onnx,
    rank_body,
    ranker_onnx,
)

APP = "attune-faults"
PREFIX = "/faults"
REPO = Path(__file__).resolve().parents[2]


def register_versions(registry: Any) -> dict[str, str]:
    """Register the suite's versions: good rankers, faulty canaries and broken artifacts.

    ``corrupted``: registered whole, then its ``model.onnx`` truncated in the store (the
    sha256 in the manifest no longer matches). ``truncated``: registered with a
    truncated ``model.onnx`` (the manifest matches; ONNX Runtime cannot load it).
    ``mismatch``: a good model whose feature spec names one feature less than it takes.
    """
    from attune import storage
    from attune.data.spec import FEATURE_NAMES, FeatureSpec

    good = ranker_onnx(seed=1)
    short = FeatureSpec(names=FEATURE_NAMES[:-1], dtypes=("float32",) * (len(FEATURE_NAMES) - 1))
    files = {
        "champ": model_files(good),
        "cand": model_files(ranker_onnx(seed=2)),
        "garbage": model_files(garbage_onnx()),
        "nan": model_files(nan_onnx()),
        "corrupted": model_files(ranker_onnx(seed=3)),
        "truncated": model_files(good[: len(good) // 2]),
        "mismatch": model_files(good, spec=short),
    }
    versions = {
        name: registry.register(content, metadata={"name": name}) for name, content in files.items()
    }
    onnx = storage.join(registry.uri, "versions", versions["corrupted"], "model.onnx")
    storage.write_bytes(onnx, files["corrupted"]["model.onnx"][:1000])
    registry.set_alias("champion", versions["champ"], by="faults", justification="t", override=True)
    return versions


@dataclass
class Report:
    """One line per scenario, printed in the terminal summary."""

    lines: list[str] = field(default_factory=list)

    def add(self, scenario: str, *, injected: str, counted: dict[str, Any]) -> None:
        figures = ", ".join(f"{key}={value}" for key, value in counted.items())
        line = f"[{scenario}] injected: {injected} | counted: {figures}"
        self.lines.append(line)
        print(line)


def request_counts(final: dict[str, Any]) -> dict[str, Any]:
    """The request figures every scenario reports, from the load generator's counts."""
    return {
        "sent": final["sent"],
        "ok": final["ok"],
        "failed": sum(final["failed"].values()),
        "failed_first_attempt": sum(final["first_failed"].values()),
        "retried": final["retried"],
        "retried_ok": final["retried_ok"],
    }


@dataclass
class FaultApp:
    """The shared app: HTTP, replicas, decision log and metrics."""

    base: str
    registry: Any
    versions: dict[str, str]
    log_bucket: str
    s3_server: Any
    workdir: Path
    base_rollout: Any
    _files: dict[str, list[str]] = field(default_factory=dict)

    # ------------------------------------------------------------------ HTTP and replicas

    def models(self) -> dict[str, Any]:
        result = http("GET", f"{self.base}/v1/models")
        assert result.status == 200, result
        body: dict[str, Any] = result.body
        return body

    def replicas(self) -> list[str]:
        """Names of the ingress replicas' actors that are alive now."""
        import ray

        prefix = f"SERVE_REPLICA::{APP}#"
        return sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)
        )

    def wait_replicas(self, n: int, timeout: float = 180) -> list[str]:
        """Wait until ``n`` replicas are RUNNING in Serve and every one has answered."""
        from ray import serve
        from ray.serve.schema import ReplicaState

        def running() -> bool:
            status = serve.status().applications[APP].deployments["RankingIngress"]
            up = status.replica_states.get(ReplicaState.RUNNING, 0)
            return up == n and len(self.replicas()) == n

        wait_for(running, timeout=timeout, what=f"{n} running replicas")
        self.replica_stats()
        return self.replicas()

    def replica_stats(self, timeout: float = 60) -> dict[str, dict[str, Any]]:
        """``/v1/models`` of every live replica (requests land on one at random)."""
        tags = {name.rsplit("#", 1)[1] for name in self.replicas()}
        seen: dict[str, dict[str, Any]] = {}

        def all_seen() -> bool:
            body = self.models()
            seen[body["replica"].rsplit("#", 1)[-1]] = body
            return tags <= set(seen)

        wait_for(all_seen, timeout=timeout, interval=0.05, what=f"/v1/models of {sorted(tags)}")
        return {tag: seen[tag] for tag in tags}

    def quiesce(self, timeout: float = 90) -> None:
        """Wait until no live replica holds unwritten decisions."""

        def empty() -> bool:
            return all(s["decisions_buffered"] == 0 for s in self.replica_stats().values())

        wait_for(empty, timeout=timeout, interval=0.3, what="decision buffers to drain")

    def reset_rollout(self, timeout: float = 90) -> None:
        """Deploy the base rollout and wait until every live replica has applied it.

        Replicas apply a new user_config through reconfigure, a moment apart: the next
        scenario must not start while one still serves the previous rollout.
        """
        from attune.serving.rollout import update_rollout
        from attune.serving.traffic_split import TrafficSplit

        base = self.base_rollout
        update_rollout(APP, lambda _: base)
        wanted = {"champion": base.champion}

        def applied() -> bool:
            stats = self.replica_stats()
            return all(
                s["salt_fingerprint"] == TrafficSplit(salt=base.salt).fingerprint
                and {m["role"]: m["version"] for m in s["models"]} == wanted
                for s in stats.values()
            )

        wait_for(applied, timeout=timeout, interval=0.3, what="every replica on the base rollout")

    # ------------------------------------------------------------------ decision log

    @property
    def decisions_uri(self) -> str:
        return f"s3://{self.log_bucket}/store/decisions"

    def logged_ids(self) -> set[str]:
        """Primary decision ids in the log (reads each file once, new files only)."""
        import pyarrow.parquet as pq

        from attune import storage

        for uri in storage.list_uris(self.decisions_uri):
            if uri.endswith(".parquet") and uri not in self._files:
                table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
                rows = table.select(["decision_id", "role"]).to_pylist()
                self._files[uri] = [r["decision_id"] for r in rows if r["role"] == "primary"]
        return {d for ids in self._files.values() for d in ids}

    def forget_files(self) -> None:
        """Drop the cache of read files (after the store itself was emptied)."""
        self._files.clear()

    # ------------------------------------------------------------------ metrics

    def metric(self, name: str) -> float:
        """Sum of a counter over this app's replicas, from every node's Prometheus endpoint."""
        import ray

        pattern = re.compile(rf"^ray_{name}(?:_total)?\{{([^}}]*)\}}\s+(\S+)$", re.M)
        total = 0.0
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            for labels, value in pattern.findall(text):
                if f'application="{APP}"' in labels:
                    total += float(value)
        return total

    def load(self, name: str, **options: Any) -> Load:
        return Load(self, self.workdir / name, **options)


class Load:
    """:mod:`tests.faults.loadgen` in a subprocess; a context manager that stops it."""

    def __init__(
        self,
        app: FaultApp,
        workdir: Path,
        *,
        rate: float = 20.0,
        concurrency: int = 2,
        max_seconds: float = 240.0,
        seed: int = 0,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out, self.stop_file = workdir / "counts.json", workdir / "stop"
        bodies = workdir / "bodies.json"
        bodies.write_text(json.dumps([rank_body(0, n=4, seed=seed + k) for k in range(16)]))
        self.command = [
            sys.executable,
            "-m",
            "tests.faults.loadgen",
            f"--url={app.base}",
            f"--bodies={bodies}",
            f"--out={self.out}",
            f"--stop-file={self.stop_file}",
            f"--rate={rate}",
            f"--concurrency={concurrency}",
            f"--max-seconds={max_seconds}",
            f"--seed={seed}",
        ]
        self._log = workdir / "loadgen.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.final: dict[str, Any] | None = None

    def __enter__(self) -> Load:
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=log, stderr=log)
        return self

    def counts(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.out.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def wait_ok(self, n: int, timeout: float = 90) -> None:
        """Wait until ``n`` more requests than now have been answered."""
        start = self.counts().get("ok", 0)
        wait_for(
            lambda: self._alive() and self.counts().get("ok", 0) >= start + n,
            timeout=timeout,
            what=f"{n} more answered requests",
        )

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            # WaitAborted: wait_for stops at once instead of retrying until its timeout.
            raise WaitAborted(f"load generator exited: {self._log.read_text()[-2000:]}")
        return True

    def stop(self) -> dict[str, Any]:
        """Stop sending, wait for the process, return its final counts."""
        if self.final is None:
            self.stop_file.touch()
            assert self.process is not None
            self.process.wait(timeout=90)
            self.final = self.counts()  # written last, before the process exits
            assert self.final.get("done"), self._log.read_text()[-2000:]
        return self.final

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop_file.touch()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
