"""The ranking app over real HTTP on the session's Ray cluster (Serve, ONNX Runtime, S3).

One app serves the whole module (deployed from a config, as ``serve deploy`` would);
each test sets the rollout it needs through the same path as ``attune rollout``. The
registry is a local directory; the decision log goes to the session's S3 server.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attune import storage
from attune.data.features import feature_matrix, option_rows
from attune.data.schema import OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.serving.config import RolloutConfig
from attune.serving.guardrails import GuardrailBounds
from attune.serving.traffic_split import TrafficSplit
from tests.conftest import wait_for
from tests.integration.serving_fixtures import (
    KeepAlive,
    garbage_onnx,
    http,
    model_files,
    nan_onnx,
    offline_borrower_features,
    rank_body,
    ranker_files,
    ranker_onnx,
    wait_http_ok,
)

pytestmark = pytest.mark.integration

APP = "attune-it"
PREFIX = "/attune-it"


@dataclass
class Serving:
    base: str
    registry: Any
    versions: dict[str, str]
    store: str
    seen_decisions: set[str] = field(default_factory=set)

    def rank(self, body: dict[str, Any]) -> Any:
        return http("POST", f"{self.base}/v1/rank", body)

    def models(self) -> dict[str, Any]:
        result = http("GET", f"{self.base}/v1/models")
        assert result.status == 200, result
        body: dict[str, Any] = result.body
        return body

    def model_calls(self) -> int:
        return sum(m["calls"] for m in self.models()["models"])

    def set_rollout(self, rollout: RolloutConfig) -> None:
        """Reconfigure the running app through its declarative config (the CLI's path)."""
        from attune.serving.rollout import update_rollout

        update_rollout(APP, lambda _: rollout)
        champion = self.registry.resolve(rollout.champion)
        wait_for(
            lambda: (
                self.models()["salt_fingerprint"] == TrafficSplit(salt=rollout.salt).fingerprint
                and self.models()["models"][0]["version"] == champion
            ),
            timeout=60,
            what="the rollout to reach the replica",
        )

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision-log row written so far (pyarrow: cheap enough to poll)."""
        import pyarrow.dataset as ds

        fs, path = storage.pyarrow_filesystem(storage.join(self.store, "decisions"))
        if not storage.list_uris(storage.join(self.store, "decisions")):
            return []
        rows: list[dict[str, Any]] = (
            ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
            .to_table()
            .to_pylist()
        )
        return rows

    def decisions_with_ray_data(self) -> list[dict[str, Any]]:
        """The decision log as analysts read it: ``ray.data.read_parquet`` on the store."""
        import ray.data

        root = storage.join(self.store, "decisions")
        rows: list[dict[str, Any]] = ray.data.read_parquet(**storage.ray_read_args(root)).take_all()
        return rows


@pytest.fixture(scope="module")
def serving(ray_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.rollout import deploy
    from tests.conftest import free_port

    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    versions = {
        name: registry.register(files, metadata={"name": name})
        for name, files in {
            "champ": ranker_files(seed=1),
            "cand": model_files(ranker_onnx(seed=2)),
            "garbage": model_files(garbage_onnx()),
            "nan": model_files(nan_onnx()),
        }.items()
    }
    registry.set_alias("champion", versions["champ"], by="test", justification="t", override=True)
    bucket = f"serving-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    port = _get_global_client().http_config.port
    args = {
        "registry": registry.uri,
        "store": store,
        "decision_log": {"max_batch": 200, "max_age_s": 0.5},
    }
    ingress = {
        "num_replicas": 1,
        "user_config": RolloutConfig(champion=versions["champ"]).model_dump(mode="json"),
    }
    deploy(
        ServeDeploySchema(
            applications=[app_config(args, name=APP, route_prefix=PREFIX, ingress=ingress)]
        )
    )
    base = f"http://127.0.0.1:{port}{PREFIX}"
    wait_http_ok(f"{base}/v1/healthz")
    yield Serving(base=base, registry=registry, versions=versions, store=store)
    serve.delete(APP)  # a no-op when the last test replaced it


def test_ranks_over_http_and_publishes_openapi(serving: Serving) -> None:
    # Its own rollout: the test holds in any order (no canary left by another test).
    serving.set_rollout(RolloutConfig(champion=serving.versions["champ"], salt="it-openapi"))
    result = serving.rank(rank_body(11))
    assert result.status == 200
    assert result.body["model_version"] == serving.versions["champ"]
    assert result.body["arm"] == "champion" and len(result.body["options"]) == len(OPTION_IDS)
    scores = [o["score"] for o in result.body["options"]]
    assert scores == sorted(scores, reverse=True)
    explained = serving.rank({**rank_body(11, n=3), "explain": True})
    assert explained.status == 200
    assert all(len(o["reasons"]) == 3 for o in explained.body["options"])
    assert all(o["reasons"] is None for o in result.body["options"])
    spec = http("GET", f"{serving.base}/openapi.json")
    assert spec.status == 200 and "/v1/rank" in spec.body["paths"]
    health = http("GET", f"{serving.base}/v1/healthz")
    assert health.body == {"status": "ok", "champion": serving.versions["champ"], "canary": None}


def _malformed() -> list[tuple[str, dict[str, Any] | None, bytes | None, int, str]]:
    short = rank_body(1)
    short["candidates"][2]["features"] = short["candidates"][2]["features"][:-3]
    nan_text = json.dumps(rank_body(1)).replace(
        json.dumps(rank_body(1)["candidates"][0]["features"][0]), "NaN", 1
    )
    unknown = rank_body(1)
    unknown["candidates"][0]["option_id"] = "free_money"
    too_many = rank_body(1)
    too_many["candidates"] = too_many["candidates"] * 2
    return [
        ("unknown option", unknown, None, 422, "candidates.0.option_id"),
        ("wrong feature count", short, None, 422, "candidates[2].features"),
        ("NaN feature", None, nan_text.encode(), 422, "candidates.0.features"),
        ("too many candidates", too_many, None, 422, "candidates"),
        ("unknown field", {**rank_body(1), "admin": True}, None, 422, "admin"),
        ("wrong type", {**rank_body(1), "borrower_id": "abc"}, None, 422, "borrower_id"),
        ("not JSON", None, b"{borrower_id: 1", 422, "body"),
        ("no feature source", {**rank_body(1, features=False), "borrower": None}, None, 422,
         "borrower"),
        ("oversized body", None, b"[" + b"0," * 40_000 + b"0]", 413, "content-length"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "raw", "status", "named"), _malformed(), ids=[c[0] for c in _malformed()]
)
def test_malformed_requests_get_4xx_naming_the_field_and_reach_no_model(
    serving: Serving, case: str, body: Any, raw: bytes | None, status: int, named: str
) -> None:
    calls = serving.model_calls()
    result = http("POST", f"{serving.base}/v1/rank", body, raw=raw)
    assert result.status == status, result
    assert named in result.body["message"], result.body
    assert serving.model_calls() == calls


def test_shadow_answers_are_logged_beside_the_decision_and_never_returned(
    serving: Serving,
) -> None:
    serving.set_rollout(
        RolloutConfig(
            champion=serving.versions["champ"],
            shadow=serving.versions["cand"],
            shadow_percent=100,
            salt="it-shadow",
        )
    )
    answers = [serving.rank(rank_body(b, n=4)).body for b in range(40)]
    assert {a["model_version"] for a in answers} == {serving.versions["champ"]}
    assert {a["arm"] for a in answers} == {"champion"}
    ids = {a["decision_id"] for a in answers}

    def shadow_rows() -> list[dict[str, Any]]:
        rows = [r for r in serving.decisions() if r["decision_id"] in ids]
        return rows if len(rows) == 2 * len(ids) else []

    rows = wait_for(shadow_rows, timeout=60, what="primary and shadow rows in the log")
    assert isinstance(rows, list)
    by_role = Counter((r["role"], r["model_version"]) for r in rows)
    assert by_role == {
        ("primary", serving.versions["champ"]): 40,
        ("shadow", serving.versions["cand"]): 40,
    }
    assert all(len(r["features"]) == 4 for r in rows)
    analysed = [r for r in serving.decisions_with_ray_data() if r["decision_id"] in ids]
    assert Counter((r["role"], r["date"]) for r in analysed) == Counter(
        (r["role"], r["date"]) for r in rows
    )


def test_borrower_state_over_http_gives_the_training_feature_vectors(serving: Serving) -> None:
    serving.set_rollout(RolloutConfig(champion=serving.versions["champ"], salt="it-features"))
    offline = offline_borrower_features(seed=5)
    row = offline.iloc[[2]]
    options = list(OPTION_IDS[1:6])
    expected = feature_matrix(option_rows(row, options=options, touchpoint="sms"), default_spec())
    body = {
        "borrower_id": 2,
        "context": {"touchpoint": "sms"},
        "candidates": [{"option_id": o} for o in options],
        "borrower": {n: float(row[n].iloc[0]) for n in BORROWER_FEATURES},
    }
    answer = serving.rank(body)
    assert answer.status == 200 and answer.body["feature_source"] == "borrower"

    def logged() -> list[dict[str, Any]]:
        return [r for r in serving.decisions() if r["decision_id"] == answer.body["decision_id"]]

    (record,) = wait_for(logged, timeout=60, what="the decision in the log")  # type: ignore[misc]
    np.testing.assert_array_equal(np.asarray(record["features"], dtype=np.float32), expected)


def _logged(serving: Serving, answers: dict[int, Any]) -> dict[int, dict[str, Any]]:
    """The primary decision-log rows of ``answers`` (borrower -> answer body), by borrower."""
    wanted = {a["decision_id"]: b for b, a in answers.items()}

    def rows() -> dict[int, dict[str, Any]]:
        found = {
            wanted[r["decision_id"]]: r
            for r in serving.decisions()
            if r["decision_id"] in wanted and r["role"] == "primary"
        }
        return found if len(found) == len(wanted) else {}

    found = wait_for(rows, timeout=60, what="the decisions in the log")
    assert isinstance(found, dict)
    return found


def test_exploration_knob_logs_exact_propensities_and_swaps_policies_without_restart(
    serving: Serving,
) -> None:
    """Exploring borrowers (by the assignment hash) get slates drawn by the policy, with
    per-position propensities that the policy itself gives; others get none. Thompson
    sampling is a choice of the same live knob, and a new posterior arrives through
    ``reconfigure`` on the running replica."""
    from attune.experiments.bandits import DecisionContext, Feedback, build_policy
    from attune.experiments.exploration import ExplorationConfig, Explorer
    from attune.experiments.policy_config import ThompsonConfig

    champ = serving.versions["champ"]
    softmax = ExplorationConfig(policy="softmax", share=0.5, temperature=0.5)
    serving.set_rollout(RolloutConfig(champion=champ, salt="it-explore", exploration=softmax))
    replica = serving.models()["replica"]
    explorer = Explorer(softmax, salt="it-explore")
    answers = {b: serving.rank(rank_body(b, n=5, seed=b)).body for b in range(60)}
    rows = _logged(serving, answers)
    exploring = [b for b in answers if explorer.explores(b)]
    assert 15 < len(exploring) < 45
    for b, answer in answers.items():
        row, shown = rows[b], [o["propensity"] for o in answer["options"]]
        if b not in exploring:
            assert row["propensities"] is None and shown == [None] * 5
            continue
        assert json.loads(row["logging_policy"]) == {"policy": "softmax", "temperature": 0.5}
        context = DecisionContext(scores=np.asarray(row["scores"]))
        marginals = explorer.policy.position_probabilities(context, 3)
        drawn = [row["candidates"].index(o) for o in row["returned_order"][:3]]
        np.testing.assert_allclose(row["propensities"], marginals[drawn, [0, 1, 2]])
        np.testing.assert_allclose(shown[:3], row["propensities"])

    # Thompson sampling over the catalog, its posterior learned offline from feedback.
    policy = build_policy(ThompsonConfig(n_options=len(OPTION_IDS), n_buckets=3, mc_samples=300))
    policy.update([Feedback(option=2, reward=1.0) for _ in range(30)])
    thompson = ExplorationConfig(policy="thompson", share=1.0, state=policy.state())
    serving.set_rollout(RolloutConfig(champion=champ, salt="it-explore-2", exploration=thompson))
    assert serving.models()["replica"] == replica  # reconfigured in place, not restarted
    answers = {b: serving.rank(rank_body(b, n=5, seed=b)).body for b in range(20)}
    rows = _logged(serving, answers)
    context = DecisionContext(options=tuple(range(5)), bucket=0)  # touchpoint "app"
    marginals = policy.position_probabilities(context, 3)
    for row in rows.values():
        drawn = [row["candidates"].index(o) for o in row["returned_order"][:3]]
        np.testing.assert_allclose(row["propensities"], marginals[drawn, [0, 1, 2]])
    leading = Counter(row["returned_order"][0] for row in rows.values())
    assert leading.most_common(1)[0][0] == OPTION_IDS[2]  # what the posterior learned


def _arms(serving: Serving, borrowers: range) -> dict[int, str]:
    client = KeepAlive(serving.base)

    def one(b: int) -> tuple[int, str]:
        result = client.post("/v1/rank", rank_body(b, n=2))
        assert result.status == 200, result
        return b, result.body["arm"]

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, borrowers))


def test_canary_takes_its_share_of_borrowers_and_each_keeps_its_arm(serving: Serving) -> None:
    serving.set_rollout(
        RolloutConfig(
            champion=serving.versions["champ"],
            canary=serving.versions["cand"],
            canary_percent=20,
            salt="it-share",
            guardrails=GuardrailBounds(enabled=False),  # a loaded host must not trip p99
        )
    )
    first = _arms(serving, range(5_000))
    share = sum(arm == "canary" for arm in first.values()) / 5_000
    assert 0.17 <= share <= 0.23
    again = _arms(serving, range(5_000))
    assert again == first


class SteadyLoad:
    """Threads posting rankings until stopped; keeps every status and served version."""

    def __init__(self, serving: Serving, threads: int = 2) -> None:
        self.serving = serving
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        # Even threads keep one connection alive, odd ones connect per request.
        rng = np.random.default_rng(seed)
        client = KeepAlive(self.serving.base) if seed % 2 == 0 else None
        while not self._stop.is_set():
            body = rank_body(int(rng.integers(0, 10**9)), n=3)
            try:
                result = client.post("/v1/rank", body) if client else self.serving.rank(body)
                status, version = result.status, (result.body or {}).get("model_version")
            except OSError as exc:  # a dropped connection is a dropped request
                status, version = -1, repr(exc)
            with self._lock:
                self.results.append((status, version))

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def versions_since(self, start: int) -> set[str | None]:
        with self._lock:
            return {v for _, v in self.results[start:]}


def test_canary_promote_and_rollback_under_steady_load_drop_no_request(serving: Serving) -> None:
    from attune.serving.rollout import RolloutRequest, run_step

    champ, cand = serving.versions["champ"], serving.versions["cand"]
    # Guardrails off: this test moves the canary itself; a p99 spike on a loaded host must
    # not roll it back in between.
    off = GuardrailBounds(enabled=False)
    serving.set_rollout(RolloutConfig(champion=champ, salt="it-load", guardrails=off))
    replica = serving.models()["replica"]
    steps = [
        RolloutRequest(step="canary", app=APP, version=cand, percent=50, override=True,
                       justification="integration test"),
        RolloutRequest(step="promote", app=APP, override=True, justification="integration test"),
        RolloutRequest(step="rollback", app=APP, champion=True),
    ]  # fmt: skip
    expected_after = [{champ, cand}, {cand}, {champ}]
    with SteadyLoad(serving) as load:
        wait_for(lambda: load.count() > 50, timeout=60, what="steady load")
        for step, expected in zip(steps, expected_after, strict=True):
            run_step(step, registry_uri=serving.registry.uri)
            mark = load.count()
            wait_for(lambda m=mark: load.count() > m + 100, timeout=60, what="load after the step")
            # Equal, not a subset: at 50 % both arms answer, after promote or rollback one.
            assert load.versions_since(mark + 50) == expected, step.step
    failures = Counter(status for status, _ in load.results if status != 200)
    assert failures == Counter(), failures
    assert len(load.results) > 300
    assert serving.models()["replica"] == replica  # reconfigured in place, never restarted
    assert serving.registry.aliases()["champion"] == champ
    assert serving.registry.aliases()["canary"] == champ  # rolled back onto the champion


@pytest.mark.parametrize(("faulty", "bound"), [("garbage", "score drift"), ("nan", "error rate")])
def test_a_faulty_canary_is_rolled_back_by_the_guardrails_on_its_own(
    serving: Serving, faulty: str, bound: str
) -> None:
    from attune.serving.rollout import deployed_config, rollout_of

    champ = serving.versions["champ"]
    rollout = RolloutConfig(
        champion=champ,
        canary=serving.versions[faulty],
        canary_percent=50,
        salt=f"it-{faulty}",
        guardrails=GuardrailBounds(
            min_requests=20, min_paired=10, window_s=600, max_p99_latency_ms=60_000
        ),
    )
    serving.set_rollout(rollout)
    before = len(serving.models()["rollbacks"])
    with SteadyLoad(serving) as load:
        rollbacks = wait_for(
            lambda: serving.models()["rollbacks"][before:], timeout=90, what="a guardrail rollback"
        )
        mark = load.count()
        wait_for(lambda: load.count() > mark + 50, timeout=60, what="load after the rollback")
    assert isinstance(rollbacks, list) and rollbacks[0]["version"] == serving.versions[faulty]
    assert bound in rollbacks[0]["reasons"][0]
    assert load.versions_since(mark) == {champ}
    assert all(status == 200 for status, _ in load.results)  # clients never saw the fault

    def persisted() -> bool:
        current = rollout_of(deployed_config(), APP)
        return current.canary is None and serving.registry.aliases().get("canary") == champ

    wait_for(persisted, timeout=60, what="the rollback in the app config and the registry")


def test_rollout_cli_reconfigures_the_running_app(
    serving: Serving, capsys: pytest.CaptureFixture[str]
) -> None:
    from attune.cli import main

    serving.set_rollout(RolloutConfig(champion=serving.versions["champ"], salt="it-cli"))
    common = ["--app", APP, "--registry", serving.registry.uri]
    assert main(["rollout", "shadow", serving.versions["cand"], "--percent", "25", *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shadow"] == serving.versions["cand"] and printed["shadow_percent"] == 25
    roles = {m["role"]: m["version"] for m in serving.models()["models"]}
    assert roles == {"champion": serving.versions["champ"], "shadow": serving.versions["cand"]}
    assert main(["rollout", "status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["shadow_percent"] == 25
    assert serving.registry.aliases()["shadow"] == serving.versions["cand"]


def test_rollout_canary_runs_the_off_policy_gate_on_served_logs_and_refuses_a_worse_one(
    serving: Serving, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Served exploring decisions, rewards planted on what the champion ranks first: a
    candidate whose ranking is unrelated (a model of noise) is refused by ``attune rollout
    canary`` itself, and neither the aliases nor the app's config move."""
    import pandas as pd

    from attune.cli import main

    champ, worse = serving.versions["champ"], serving.versions["garbage"]
    explore = {"policy": "softmax", "share": 1.0, "temperature": 2.0}
    serving.set_rollout(RolloutConfig(champion=champ, salt="it-ope", exploration=explore))
    answers = {b: serving.rank(rank_body(b, seed=1_000 + b)).body for b in range(200)}
    rows = _logged(serving, answers)
    outcomes = []
    for row in rows.values():  # the option the champion scores highest is the one that pays
        best = row["candidates"][int(np.argmax(row["scores"]))]
        outcomes += [
            {"decision_id": row["decision_id"], "option_id": o, "reward": float(o == best)}
            for o in row["returned_order"][:3]
        ]
    planted = tmp_path / "outcomes.parquet"
    pd.DataFrame(outcomes).to_parquet(planted)
    aliases = serving.registry.aliases()
    common = ["--app", APP, "--registry", serving.registry.uri]
    gate = ["--ope-decisions", storage.join(serving.store, "decisions"), "--ope-outcomes"]
    code = main(["rollout", "canary", worse, "--percent", "10", *gate, str(planted), *common])
    printed = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    verdict = printed["ope_gate"]
    assert code != 0 and verdict["verdict"]["passed"] is False, json.dumps(printed)
    assert verdict["estimator"] == "snips" and verdict["decisions_used"] >= 200
    assert serving.registry.aliases() == aliases
    assert [m["role"] for m in serving.models()["models"]] == ["champion"]


def test_a_canary_or_promote_refused_by_a_gate_changes_nothing(
    serving: Serving, capsys: pytest.CaptureFixture[str]
) -> None:
    """``attune rollout canary|promote`` without override, for a version whose fairness gate
    refuses (it has no report): a non-zero exit naming the gate; aliases and the app's
    config exactly as they were."""
    from attune.cli import main
    from attune.serving.rollout import deployed_config, rollout_of

    champ, cand = serving.versions["champ"], serving.versions["cand"]
    serving.set_rollout(
        RolloutConfig(champion=champ, canary=cand, canary_percent=5, salt="it-refused")
    )
    aliases, config = serving.registry.aliases(), rollout_of(deployed_config(), APP)
    history = len(serving.registry.history())
    common = ["--app", APP, "--registry", serving.registry.uri]
    for argv in (["canary", cand, "--percent", "20"], ["promote"]):
        assert main(["rollout", *argv, *common]) != 0, argv
        assert f"gate refused version {cand!r}" in capsys.readouterr().err
        assert serving.registry.aliases() == aliases
        assert rollout_of(deployed_config(), APP) == config
        assert len(serving.registry.history()) == history
    roles = {m["role"]: m["version"] for m in serving.models()["models"]}
    assert roles == {"champion": champ, "canary": cand}


def test_serve_run_local_yaml_serves_the_champion_from_the_local_registry(
    tmp_path: Path,
) -> None:
    """``serve run serve_configs/local.yaml`` in a checkout with a local registry serves."""
    import os

    import yaml

    from attune.registry import Registry
    from tests.conftest import free_port
    from tests.integration.serving_fixtures import serve_run

    registry = Registry(str(tmp_path / ".attune" / "registry"))
    version = registry.register(ranker_files(seed=3), metadata={"name": "local"})
    registry.set_alias("champion", version, by="test", justification="t", override=True)
    config = yaml.safe_load((Path(__file__).parents[2] / "serve_configs/local.yaml").read_text())
    config["http_options"]["port"] = free_port()
    # A Ray of its own ("-a local") with Serve's defaults: none of this session's settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS"))}
    with serve_run(tmp_path, config, env) as base:
        assert http("GET", f"{base}/v1/healthz").body["champion"] == version
        answer = http("POST", f"{base}/v1/rank", rank_body(5, n=3))
        assert answer.status == 200 and answer.body["model_version"] == version
        decisions = tmp_path / ".attune" / "decisions"
        wait_for(lambda: list(decisions.rglob("*.parquet")), timeout=60, what="a decision file")


#: Counters Ray exports only once their event has happened (a failed model call, a
#: guardrail rollback, a full shadow queue, a dropped decision record).
_EVENT_ONLY = {
    "attune_rank_errors_total",
    "attune_guardrail_rollbacks_total",
    "attune_shadow_dropped_total",
    "attune_decisions_dropped_total",
}


def test_every_metric_the_dashboard_queries_is_scraped_from_the_app(serving: Serving) -> None:
    """The node metrics endpoints Prometheus scrapes carry every series the Grafana
    dashboard queries, the drift gauges included (set by the app from the latest report)."""
    import urllib.request
    from datetime import UTC, datetime

    import ray

    from attune.monitoring.drift_monitor import latest_report_uri
    from tests.unit.test_monitoring import _base, _dashboard_series

    champion = serving.versions["champ"]
    serving.set_rollout(RolloutConfig(champion=champion, salt="it-metrics"))
    report = {
        "computed_at": datetime.now(UTC).isoformat(),
        "max_psi": 0.03,
        "features": {"apr": {"psi": 0.03}},
    }
    storage.write_json(latest_report_uri(serving.store, champion), report)
    for i in range(20):
        assert serving.rank(rank_body(i)).status == 200
    wanted = {_base(s) for s in _dashboard_series()} - _EVENT_ONLY
    wanted |= {"attune_drift_report_age_seconds", "attune_drift_max_psi"}

    def scraped() -> str:
        texts = []
        for node in ray.nodes():
            port = node.get("MetricsExportPort")
            if node.get("Alive") and port:
                url = f"http://{node['NodeManagerAddress']}:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    texts.append(response.read().decode())
        return "\n".join(texts)

    def missing() -> set[str]:
        text = scraped()
        return {name for name in wanted if f"ray_{name}" not in text}

    wait_for(lambda: not missing(), timeout=120, interval=2, what="every dashboard metric")
    assert f'model_version="{champion}"' in scraped()
