"""Batch ranking without Ray: eligibility config and rules, and BatchRanker == the serving path."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from attune.batch.eligibility import (
    NO_OPTIONS_LEFT,
    EligibilityConfig,
    TouchpointRules,
    apply_rules,
    load_eligibility,
)
from attune.batch.scoring import BatchRanker, RankPlan, decision_id
from attune.data.features import candidate_block, candidate_matrix
from attune.data.schema import OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.errors import ConfigError
from attune.experiments.assignment import hash_borrower
from attune.experiments.exploration import ExplorationConfig
from attune.serving.api import RankRequest
from attune.serving.config import RolloutConfig
from attune.serving.decision_log import MemorySink
from attune.serving.service import RankingService
from tests.integration.serving_fixtures import DictStore, model_files, nan_onnx, ranker_files

OPTIONS = ("autopay_enroll", "due_date_change", "payment_plan", "pay_now")
RULES: dict[str, Any] = {
    "options": list(OPTIONS),
    "rules": [
        {"name": "fatigue", "feature": "contacts_7d", "op": "ge", "value": 3},
        {"name": "hardship", "feature": "hardship_180", "op": "gt", "value": 0,
         "options": ["payment_plan"]},
        {"name": "no_autopay_plan", "feature": "autopay_on", "op": "eq", "value": 1,
         "options": ["autopay_enroll", "due_date_change", "pay_now"]},
    ],
}  # fmt: skip


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"touchpoints": {"email": {"options": ["autopay_enroll", "gold_card"]}}}, "gold_card"),
        (
            {"touchpoints": {"sms": {"rules": [{**RULES["rules"][1], "options": ["teleport"]}]}}},
            "teleport",
        ),
        (
            {"touchpoints": {"app": {"rules": [{**RULES["rules"][0], "feature": "shoe_size"}]}}},
            "shoe_size",
        ),
        ({"touchpoints": {"fax": {}}}, "fax"),
        ({"touchpoints": {"email": {"rules": [{**RULES["rules"][0], "colour": 1}]}}}, "colour"),
        ({"touchpoints": {"email": {"rules": [{**RULES["rules"][0], "op": "like"}]}}}, "op"),
        (
            {"touchpoints": {"email": {"options": ["pay_now"], "rules": [RULES["rules"][1]]}}},
            "payment_plan",
        ),
        ({"touchpoints": {"email": {"rules": [RULES["rules"][0]] * 2}}}, "fatigue"),
    ],
)
def test_eligibility_config_refuses_unknown_names_with_an_error_naming_them(
    config: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_eligibility(config)
    assert named in str(caught.value)


def test_an_eligibility_file_error_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("touchpoints:\n  email:\n    options: [pay_now, gold_card]\n")
    with pytest.raises(ConfigError) as caught:
        load_eligibility(path)
    assert str(path) in str(caught.value) and "gold_card" in str(caught.value)
    assert caught.value.details["field"] == "touchpoints.email.options"


def test_a_touchpoint_without_rules_offers_the_whole_catalog() -> None:
    config = load_eligibility({"touchpoints": {"email": RULES}})
    assert config.for_touchpoint("sms") == TouchpointRules()
    assert config.for_touchpoint("sms").options == OPTION_IDS
    assert load_eligibility(None) == EligibilityConfig()


# --------------------------------------------------------------------------- rules


def test_rules_exclude_in_order_withhold_options_and_drop_borrowers_left_without_any() -> None:
    rules = TouchpointRules.model_validate(RULES)
    features = {
        "contacts_7d": np.array([0, 5, 4, 0, 0]),
        "hardship_180": np.array([0, 1, 0, 2, 2]),
        "autopay_on": np.array([0, 0, 1, 0, 1]),
    }
    verdict = apply_rules(rules, features, 5)
    # borrower 1 matches fatigue and hardship: counted once, under the first rule
    assert verdict.excluded_by.tolist() == [None, "fatigue", "fatigue", None, NO_OPTIONS_LEFT]
    assert verdict.offered.tolist() == [
        [True, True, True, True],
        [True, True, True, True],
        [True, True, True, True],
        [True, True, False, True],
        [False, False, False, False],
    ]
    assert verdict.withheld.tolist() == [
        [False] * 3,
        [False] * 3,
        [False] * 3,
        [False, True, False],
        [False, True, True],
    ]


def test_candidate_block_is_candidate_matrix_for_every_borrower() -> None:
    spec = default_spec()
    borrowers = np.random.default_rng(0).normal(size=(5, len(BORROWER_FEATURES)))
    borrowers = borrowers.astype(np.float32)
    block = candidate_block(spec, borrowers=borrowers, touchpoint="sms", option_ids=OPTIONS)
    for b in range(5):
        one = candidate_matrix(spec, borrower=borrowers[b], touchpoint="sms", option_ids=OPTIONS)
        np.testing.assert_array_equal(block[b], one)


# --------------------------------------------------------------------------- BatchRanker


def _snapshot(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {
        "borrower_id": pa.array(np.arange(1, n + 1, dtype=np.int64) * 7),
        "as_of": pa.array(
            np.full(n, np.datetime64("2025-06-01T00:00:00", "us")), pa.timestamp("us", tz="UTC")
        ),
    }
    for name in BORROWER_FEATURES:
        columns[name] = pa.array(rng.uniform(0, 5, n).round(2).astype(np.float32))
    columns["contacts_7d"] = pa.array(rng.integers(0, 5, n).astype(np.float32))
    columns["hardship_180"] = pa.array((rng.random(n) < 0.3).astype(np.float32))
    columns["autopay_on"] = pa.array((rng.random(n) < 0.5).astype(np.float32))
    return pa.table(columns)


def _store(canary: bytes | None = None) -> tuple[DictStore, RolloutConfig]:
    versions = {"v-champ": ranker_files(seed=1)}
    versions["v-canary"] = model_files(canary) if canary else ranker_files(seed=2)
    store = DictStore(versions, aliases={"champion": "v-champ", "canary": "v-canary"})
    rollout = RolloutConfig(champion="v-champ", canary="v-canary", canary_percent=50, salt="s9")
    return store, rollout


def _plan(rollout: RolloutConfig) -> RankPlan:
    return RankPlan(
        registry_uri="unused",
        champion=rollout.champion,
        canary=rollout.canary,
        canary_share=rollout.canary_percent / 100,
        salt=rollout.salt,
        touchpoint="email",
        rules=TouchpointRules.model_validate(RULES),
        borrower_salt="log-salt",
        run_id="run-1",
        decided_at=datetime(2025, 6, 1, 6, tzinfo=UTC),
        decision_store=None,
    )


def test_batch_scores_arms_and_order_equal_the_serving_path_for_each_borrower() -> None:
    store, rollout = _store()
    sink = MemorySink()
    out = BatchRanker(_plan(rollout), store=store, sink=sink)(_snapshot(60)).to_pylist()
    service = RankingService(store=store, rollout=rollout, decision_log=None, borrower_salt="x")
    ranked = [row for row in out if row["_status"] == "ranked"]
    assert {r["arm"] for r in ranked} == {"champion", "canary"}
    for row in ranked:
        features = dict(zip(BORROWER_FEATURES, _features(row), strict=True))
        offered = [o for o in OPTIONS if o in row["options"]]
        request = RankRequest.model_validate(
            {
                "borrower_id": row["borrower_id"],
                "context": {"touchpoint": "email"},
                "candidates": [{"option_id": o} for o in offered],
                "borrower": features,
            }
        )
        served = asyncio.run(service.rank(request))
        assert served.arm == row["arm"] and served.model_version == row["model_version"]
        assert [o.option_id for o in served.options] == row["options"]
        assert [o.score for o in served.options] == row["scores"]


_SNAPSHOT = _snapshot(60)


def _features(row: dict[str, Any]) -> list[float]:
    index = _SNAPSHOT.column("borrower_id").to_pylist().index(row["borrower_id"])
    return [float(_SNAPSHOT.column(n)[index].as_py()) for n in BORROWER_FEATURES]


def test_excluded_borrowers_carry_their_rule_and_withheld_options_are_not_ranked() -> None:
    store, rollout = _store()
    table = _snapshot(60)
    out = BatchRanker(_plan(rollout), store=store, sink=None)(table).to_pylist()
    fatigue = table.column("contacts_7d").to_numpy() >= 3
    assert [r["excluded_by"] == "fatigue" for r in out] == fatigue.tolist()
    for row, hardship in zip(out, table.column("hardship_180").to_numpy() > 0, strict=True):
        if row["_status"] == "ranked":
            assert ("payment_plan" in row["options"]) == (not hardship)
            assert ("hardship" in row["withheld_by"]) == bool(hardship)


def test_every_ranked_borrower_is_one_primary_batch_decision_in_the_log() -> None:
    store, rollout = _store()
    sink = MemorySink()
    plan = _plan(rollout)
    out = BatchRanker(plan, store=store, sink=sink)(_snapshot(60)).to_pylist()
    ranked = {r["decision_id"]: r for r in out if r["_status"] == "ranked"}
    logged = sink.rows()
    assert sorted(r["decision_id"] for r in logged) == sorted(ranked)
    spec = default_spec()
    for record in logged:
        row = ranked[record["decision_id"]]
        assert record["decision_id"] == decision_id("run-1", row["borrower_id"])
        assert record["role"] == "primary" and record["feature_source"] == "batch"
        assert record["borrower_hash"] == hash_borrower(row["borrower_id"], salt="log-salt")
        assert (record["arm"], record["model_version"]) == (row["arm"], row["model_version"])
        assert record["returned_order"] == row["options"]
        assert sorted(record["candidates"]) == sorted(row["options"])
        expected = candidate_matrix(
            spec,
            borrower=np.asarray(_features(row), dtype=np.float32),
            touchpoint="email",
            option_ids=record["candidates"],
        )
        np.testing.assert_array_equal(np.asarray(record["features"], dtype=np.float32), expected)


def test_a_canary_answering_nan_leaves_its_borrowers_to_the_champion() -> None:
    store, rollout = _store(canary=nan_onnx())
    out = BatchRanker(_plan(rollout), store=store, sink=None)(_snapshot(60)).to_pylist()
    ranked = [r for r in out if r["_status"] == "ranked"]
    assert ranked and {r["arm"] for r in ranked} == {"champion"}
    assert all(np.isfinite(r["scores"]).all() for r in ranked)


def test_rank_batch_cli_refuses_a_bad_eligibility_file_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attune.cli import main

    rules = tmp_path / "rules.yaml"
    rules.write_text("touchpoints:\n  sms:\n    rules:\n      - {name: r, feature: logins_30, "
                     "op: lt, value: 1, options: [gold_card]}\n")  # fmt: skip
    status = main(
        ["rank-batch", "--features", str(tmp_path), "--registry", str(tmp_path),
         "--touchpoint", "sms", "--out", str(tmp_path / "out"), "--eligibility", str(rules)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status != 0
    assert "gold_card" in err and "touchpoints.sms.rules.0.options" in err
    assert not (tmp_path / "out").exists()


def test_exploring_borrowers_are_the_apps_and_log_their_slates_propensities() -> None:
    store, rollout = _store()
    rollout = rollout.model_copy(
        update={"exploration": ExplorationConfig(policy="epsilon", share=0.5, epsilon=0.3)}
    )
    plan = replace(_plan(rollout), exploration=rollout.exploration)
    sink = MemorySink()
    out = BatchRanker(plan, store=store, sink=sink)(_snapshot(60)).to_pylist()
    service = RankingService(store=store, rollout=rollout, decision_log=None, borrower_salt="x")
    ranked = [r for r in out if r["_status"] == "ranked"]
    exploring = [r for r in ranked if r["propensities"] is not None]
    assert 0 < len(exploring) < len(ranked)
    for row in ranked:
        request = RankRequest.model_validate(
            {
                "borrower_id": row["borrower_id"],
                "context": {"touchpoint": "email"},
                "candidates": [{"option_id": o} for o in OPTIONS if o in row["options"]],
                "borrower": dict(zip(BORROWER_FEATURES, _features(row), strict=True)),
            }
        )
        served = asyncio.run(service.rank(request))
        assert (served.options[0].propensity is not None) == (row["propensities"] is not None)
        if row["propensities"] is not None:
            assert len(row["propensities"]) == min(3, len(row["options"]))
            assert all(0 < p <= 1 for p in row["propensities"])
            assert sorted(row["options"]) == sorted(o.option_id for o in served.options)
    logged = {r["decision_id"]: r for r in sink.rows()}
    for row in ranked:
        record = logged[row["decision_id"]]
        assert record["propensities"] == row["propensities"]
        assert (record["logging_policy"] is not None) == (row["propensities"] is not None)
        assert record["returned_order"] == row["options"]
