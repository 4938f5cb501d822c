"""``attune rank-batch`` against the served app: same scores, same arms, same decision log.

A small simulated book (300 borrowers x 3 months) is materialized into a snapshot; the
campaign ranks it on the session's two-node Ray with a champion and a 50 % canary; the
serving app runs the same rollout (same registry, salt and share) over real HTTP, and
each ranked borrower's snapshot features, sent to ``POST /v1/rank`` with the options the
campaign offered, must come back with the campaign's arm, model version, order and
scores. Both write the same decision log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import yaml

from attune import storage
from attune.batch.job import RankBatchResult, read_part
from attune.cli import main as cli
from attune.data.materialize import latest_snapshot, read_snapshot
from attune.data.spec import BORROWER_FEATURES
from attune.experiments.assignment import hash_borrower
from attune.serving.config import RolloutConfig
from attune.settings import get_settings
from attune.simulator.generator import GenerateConfig, generate
from tests.conftest import wait_for
from tests.integration.serving_fixtures import http, ranker_files, wait_http_ok

pytestmark = pytest.mark.integration

APP = "attune-rank-batch"
PREFIX = "/attune-rank-batch"
OPTIONS = ["autopay_enroll", "due_date_change", "payment_plan", "reminder_email", "pay_now"]
ELIGIBILITY = {
    "touchpoints": {
        "email": {
            "options": OPTIONS,
            "rules": [
                {"name": "fatigue", "feature": "contacts_7d", "op": "ge", "value": 3},
                {"name": "hardship", "feature": "hardship_180", "op": "gt", "value": 0,
                 "options": ["payment_plan"]},
            ],
        }
    }
}  # fmt: skip


@dataclass
class Campaign:
    result: RankBatchResult
    store: str
    features: Any  # snapshot features (pandas), indexed by borrower_id
    base: str


@pytest.fixture(scope="module")
def campaign(ray_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.rollout import deploy, deployed_config
    from tests.conftest import free_port

    work = tmp_path_factory.mktemp("rank-batch")
    history, store = str(work / "history"), str(work / "store")
    generate(
        GenerateConfig(borrowers=300, months=3, seed=23, out=history, parallel="local"),
        progress=False,
    )
    registry = Registry(str(work / "registry"))
    champion = registry.register(ranker_files(seed=1), metadata={"name": "champ"})
    canary = registry.register(ranker_files(seed=2), metadata={"name": "canary"})
    rollout = RolloutConfig(champion=champion, canary=canary, canary_percent=50, salt="c-7")
    (work / "rules.yaml").write_text(yaml.safe_dump(ELIGIBILITY))
    (work / "rollout.yaml").write_text(yaml.safe_dump(rollout.model_dump(mode="json")))
    # the commands of docs/batch-ranking.md
    materialized = cli(
        ["features", "materialize", "--histories", history, "--out", store,
         "--as-of", "2025-03-25T00:00:00Z", "--no-online", "--buckets", "2", "--partitions", "2"]
    )  # fmt: skip
    assert materialized == 0
    out = str(work / "campaign")
    ranked = cli(
        ["rank-batch", "--features", store, "--registry", registry.uri, "--touchpoint", "email",
         "--out", out, "--store", store, "--eligibility", str(work / "rules.yaml"),
         "--rollout", str(work / "rollout.yaml"), "--batch-size", "64"]
    )  # fmt: skip
    assert ranked == 0
    summary = json.loads(Path(out, "summary.json").read_text())
    result = RankBatchResult(uri=out, summary=summary)
    snapshot = latest_snapshot(store)
    features, _ = read_snapshot(snapshot)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    port = _get_global_client().http_config.port
    args = {"registry": registry.uri, "store": store, "decision_log": {"max_age_s": 0.5}}
    ingress = {"ray_actor_options": {"num_cpus": 0.5}, "user_config": rollout.model_dump()}
    mine = app_config(args, name=APP, route_prefix=PREFIX, ingress=ingress)
    current = deployed_config().model_dump(exclude_unset=True)
    others = [a for a in current.get("applications", []) if a["name"] != APP]
    deploy(ServeDeploySchema.model_validate({**current, "applications": [*others, mine]}))
    base = f"http://127.0.0.1:{port}{PREFIX}"
    wait_http_ok(f"{base}/v1/healthz")
    yield Campaign(result, store, features.set_index("borrower_id"), base)
    serve.delete(APP)


def _ranked(campaign: Campaign) -> list[dict[str, Any]]:
    return read_part(campaign.result.uri, "ranked").to_pylist()


def test_campaign_scores_and_arms_equal_the_served_app_for_the_same_borrower_and_time(
    campaign: Campaign,
) -> None:
    ranked = _ranked(campaign)
    assert {r["arm"] for r in ranked} == {"champion", "canary"}
    sample = sorted(ranked, key=lambda r: r["borrower_id"])[::4]
    assert any("hardship" in r["withheld_by"] for r in ranked)
    for row in sample:
        served = http("POST", f"{campaign.base}/v1/rank", _body(campaign, row["decision_id"]))
        assert served.status == 200, served
        assert (served.body["arm"], served.body["model_version"]) == (
            row["arm"],
            row["model_version"],
        )
        assert [o["option_id"] for o in served.body["options"]] == row["options"]
        assert [o["score"] for o in served.body["options"]] == row["scores"]


def test_one_row_per_borrower_and_the_summary_counts_each_rule(campaign: Campaign) -> None:
    ranked = _ranked(campaign)
    excluded = read_part(campaign.result.uri, "excluded").to_pylist()
    ids = [r["borrower_id"] for r in ranked + excluded]
    assert sorted(ids) == sorted(campaign.features.index.tolist())
    fatigued = int((campaign.features["contacts_7d"] >= 3).sum())
    summary = json.loads(Path(campaign.result.uri, "summary.json").read_text())
    assert summary["excluded_by_rule"]["fatigue"] == fatigued == len(excluded) > 0
    hardship = campaign.features.loc[[r["borrower_id"] for r in ranked], "hardship_180"] > 0
    assert summary["ranked_with_options_withheld_by_rule"]["hardship"] == int(hardship.sum())
    assert summary["ranked"] == len(ranked)
    assert summary["arms"]["canary"] == sum(r["arm"] == "canary" for r in ranked)


def test_every_campaign_decision_is_in_the_decision_log_beside_served_ones(
    campaign: Campaign,
) -> None:
    ranked = {r["decision_id"]: r for r in _ranked(campaign)}
    root = storage.join(campaign.store, "decisions")

    def logged() -> list[dict[str, Any]]:
        data = pads.dataset(root, format="parquet", partitioning="hive")
        return data.to_table(filter=pads.field("feature_source") == "batch").to_pylist()

    rows = logged()
    assert sorted(r["decision_id"] for r in rows) == sorted(ranked)
    salt = get_settings().borrower_salt.get_secret_value()
    for row in rows:
        mine = ranked[row["decision_id"]]
        assert row["role"] == "primary" and row["touchpoint"] == "email"
        assert row["borrower_hash"] == hash_borrower(mine["borrower_id"], salt=salt)
        assert (row["arm"], row["returned_order"]) == (mine["arm"], mine["options"])
    # a served decision lands in the same log
    served = http("POST", f"{campaign.base}/v1/rank", _body(campaign, rows[0]["decision_id"]))
    assert served.status == 200, served

    def served_logged() -> bool:
        data = pads.dataset(root, format="parquet", partitioning="hive")
        where = pads.field("decision_id") == served.body["decision_id"]
        return data.to_table(filter=where).num_rows == 1

    wait_for(served_logged, timeout=30, what="the served decision in the log")


def _body(campaign: Campaign, decision: str) -> dict[str, Any]:
    row = next(r for r in _ranked(campaign) if r["decision_id"] == decision)
    state = campaign.features.loc[row["borrower_id"]]
    return {
        "borrower_id": row["borrower_id"],
        "context": {"touchpoint": "email"},
        "candidates": [{"option_id": o} for o in OPTIONS if o in row["options"]],
        "borrower": {n: float(state[n]) for n in BORROWER_FEATURES},
    }
