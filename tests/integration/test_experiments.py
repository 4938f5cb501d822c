"""Experiments end to end: `attune experiment analyze` on S3 logs with Ray Data, and a
bandit served by Ray Serve over HTTP that learns from feedback without restarting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from attune import storage
from attune.cli import main
from attune.experiments.bandits import DecisionContext, Feedback, build_policy, policy_from_state
from attune.experiments.policy_config import ThompsonConfig
from attune.serving.decision_log import DECISION_SCHEMA
from tests.conftest import free_port, wait_for
from tests.integration.serving_fixtures import http

pytestmark = pytest.mark.integration

DAYS = 5
EFFECT = 0.15
SPLIT = {"champion": 0.8, "canary": 0.2}


def _write_parquet(uri: str, table: pa.Table) -> None:
    fs, path = storage.pyarrow_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _decision_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows in the serving decision-log schema (list columns kept tiny)."""
    columns: dict[str, list[Any]] = {name: [] for name in DECISION_SCHEMA.names}
    for row in rows:
        full = {
            "borrower_hash": "0" * 16,
            "model_version": "v1",
            "feature_spec_hash": "h",
            "touchpoint": "app",
            "feature_source": "request",
            "candidates": ["pay_now", "autopay_enroll"],
            "features": [[0.0], [0.0]],
            "scores": [0.2, 0.1],
            "returned_order": ["pay_now", "autopay_enroll"],
            "propensities": None,
            "latency_ms": 1.0,
            **row,
        }
        for name in DECISION_SCHEMA.names:
            columns[name].append(full[name])
    return pa.Table.from_pydict(columns, schema=DECISION_SCHEMA)


def _write_experiment_logs(root: str, seed: int) -> dict[str, int]:
    """Decision logs (with shadow copies) and outcomes; returns primary decisions per arm."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    counts = dict.fromkeys(SPLIT, 0)
    outcomes: dict[str, list[Any]] = {"decision_id": [], "reward": [], "pre_reward": []}
    for day in range(DAYS):
        rows = []
        for i in range(300):
            arm = "canary" if rng.random() < SPLIT["canary"] else "champion"
            counts[arm] += 1
            decision_id = f"d{day}-{i}"
            ts = start + timedelta(days=day, seconds=i)
            rows.append({"decision_id": decision_id, "ts": ts, "role": "primary", "arm": arm})
            if rng.random() < 0.5:  # mirrored to the shadow: same id, must not be counted
                rows.append({"decision_id": decision_id, "ts": ts, "role": "shadow", "arm": arm})
            if day == 0 and i < 6:
                continue  # no outcome row: the left join scores it fill_missing (0)
            pre = rng.normal(1.0, 1.0)
            reward = 0.6 * pre + EFFECT * (arm == "canary") + rng.normal(0, 0.5)
            outcomes["decision_id"].append(decision_id)
            outcomes["reward"].append(reward)
            outcomes["pre_reward"].append(pre)
        date = (start + timedelta(days=day)).strftime("%Y-%m-%d")
        _write_parquet(
            storage.join(root, "decisions", f"date={date}", "part-0.parquet"),
            _decision_table(rows),
        )
    _write_parquet(storage.join(root, "outcomes", "part-0.parquet"), pa.table(outcomes))
    return counts


def test_analyze_command_reads_s3_logs_with_ray_data_and_writes_report_and_plot(
    ray_cluster: object, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Primary decisions only, left-joined outcomes, CUPED, SRM and a daily sequence."""
    root = f"{s3_bucket}/store"
    counts = _write_experiment_logs(root, seed=0)
    out = f"{s3_bucket}/reports/exp-1"
    argv = [
        "experiment", "analyze",
        "--decisions", storage.join(root, "decisions"),
        "--outcomes", storage.join(root, "outcomes"),
        "--out", out,
        "--covariate", "pre_reward",
        "--weight", "champion=0.8", "--weight", "canary=0.2",
        "--partitions", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    assert storage.join(out, "report.json") in capsys.readouterr().out
    report = storage.read_json(storage.join(out, "report.json"))
    assert {arm: report["arms"][arm]["n"] for arm in SPLIT} == counts  # shadows excluded
    assert report["srm"]["flagged"] is False
    canary = report["comparisons"]["canary"]
    low, high = canary["absolute_ci"]
    assert low <= EFFECT <= high
    assert canary["variance_reduction"] > 0.3  # CUPED on a correlated pre-period metric
    assert [look["label"] for look in canary["over_time"]] == [
        f"2026-03-0{d + 1}" for d in range(DAYS)
    ]
    assert storage.read_bytes(storage.join(out, "lift_over_time.png")).startswith(b"\x89PNG")


def test_analyze_command_names_a_missing_column(
    ray_cluster: object, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = f"{s3_bucket}/store"
    _write_experiment_logs(root, seed=1)
    outcomes = storage.join(root, "outcomes")
    argv = [
        "experiment", "analyze",
        "--decisions", storage.join(root, "decisions"),
        "--outcomes", outcomes,
        "--out", f"{s3_bucket}/reports/bad",
        "--covariate", "no_such_column",
        "--partitions", "2",
    ]  # fmt: skip
    assert main(argv) == 2
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["error"] == "SchemaError"
    assert error["details"]["column"] == "no_such_column"
    assert error["details"]["file"] == outcomes


# ----------------------------------------------------------------------------- served bandit

APP = "experiments-bandit"
PREFIX = "/experiments-bandit"
OPTIONS, BUCKETS = 6, 3


@pytest.fixture
def bandit_url(ray_cluster: object) -> Iterator[tuple[str, Any]]:
    """A Thompson-sampling policy in a Serve replica; yields (base URL, deploy function)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    port = _get_global_client().http_config.port  # an already running Serve keeps its port

    # Defined here so Ray ships the class by value; it only needs attune on the replica.
    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    class BanditReplica:
        def __init__(self) -> None:
            import os

            self.pid, self.version, self.policy = os.getpid(), 0, None

        def reconfigure(self, config: dict[str, Any]) -> None:
            self.policy = policy_from_state(config["state"])
            self.version = config["version"]
            self.rng = np.random.default_rng(config["seed"])

        async def __call__(self, request: Any) -> dict[str, Any]:
            action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            if action == "info":
                state = self.policy.state().model_dump(mode="json")
                return {"pid": self.pid, "version": self.version, "state": state}
            body = await request.json()
            if action == "feedback":
                self.policy.update([Feedback(**item) for item in body["feedback"]])
                return {"updated": len(body["feedback"])}
            context = DecisionContext(options=tuple(range(OPTIONS)), bucket=body["bucket"])
            decision = self.policy.choose(context, self.rng)
            return {
                "chosen": decision.chosen,
                "propensity": decision.propensity,
                "probs": list(decision.probs),
            }

    def deploy(state: dict[str, Any], version: int) -> None:
        config = {"state": state, "version": version, "seed": 7}
        app = BanditReplica.options(user_config=config).bind()
        serve.run(app, name=APP, route_prefix=PREFIX)

    base = f"http://127.0.0.1:{port}{PREFIX}"
    yield base, deploy
    serve.delete(APP)


def test_served_bandit_beats_random_logs_true_propensities_and_updates_without_restart(
    bandit_url: tuple[str, Any],
) -> None:
    base, deploy = bandit_url
    config = ThompsonConfig(n_options=OPTIONS, n_buckets=BUCKETS, mc_samples=300)
    initial = build_policy(config).state().model_dump(mode="json")
    deploy(initial, version=1)
    wait_for(lambda: http("GET", f"{base}/info").status == 200, timeout=120, what="bandit app")
    pid = http("GET", f"{base}/info").body["pid"]

    # 1. Learn online through the feedback endpoint; regret against uniform random.
    truth = np.random.default_rng(2024).uniform(0.05, 0.6, size=(BUCKETS, OPTIONS))
    rng = np.random.default_rng(11)
    regret, pending, logged = 0.0, [], []
    rounds = 600
    for _ in range(rounds):
        bucket = int(rng.integers(BUCKETS))
        answer = http("POST", f"{base}/choose", {"bucket": bucket}).body
        chosen = answer["chosen"]
        assert answer["propensity"] == answer["probs"][chosen]
        regret += truth[bucket].max() - truth[bucket, chosen]
        reward = float(rng.random() < truth[bucket, chosen])
        pending.append({"option": chosen, "reward": reward, "bucket": bucket})
        logged.append(pending[-1])
        if len(pending) == 20:
            assert http("POST", f"{base}/feedback", {"feedback": pending}).status == 200
            pending = []
    uniform_regret = rounds * float((truth.max(axis=1, keepdims=True) - truth).mean())
    print(f"\nserved Thompson regret {regret:.1f} vs uniform {uniform_regret:.1f}")
    assert regret < 0.65 * uniform_regret

    # 2. The batch path: rebuild the posterior from the logged feedback, push it as config.
    batch = build_policy(config)
    batch.update([Feedback(**item) for item in logged])
    state = batch.state().model_dump(mode="json")
    deploy(state, version=2)
    wait_for(lambda: http("GET", f"{base}/info").body["version"] == 2, timeout=60, what="v2")
    info = http("GET", f"{base}/info").body
    assert info["pid"] == pid  # reconfigured in place, not restarted
    np.testing.assert_allclose(info["state"]["posterior"]["alpha"], state["posterior"]["alpha"])

    # 3. With the posterior fixed, served choices follow the logged distribution.
    expected = batch.position_probabilities(DecisionContext(options=tuple(range(OPTIONS))), 1)
    counts = np.zeros(OPTIONS)
    for _ in range(500):
        answer = http("POST", f"{base}/choose", {"bucket": 0}).body
        np.testing.assert_allclose(answer["probs"], expected[:, 0])
        counts[answer["chosen"]] += 1
    assert counts[expected[:, 0] == 0].sum() == 0
    # cells expected to hold < 5 draws are pooled so the chi-square approximation holds
    small = 500 * expected[:, 0] < 5
    observed = np.append(counts[~small], counts[small].sum())
    wanted = np.append(500 * expected[~small, 0], 500 * expected[small, 0].sum())
    keep = wanted > 0
    assert stats.chisquare(observed[keep], wanted[keep]).pvalue > 1e-4
