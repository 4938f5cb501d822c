"""The ranking service without Ray: real ONNX models, in-memory store and log sink."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from attune.data.features import feature_matrix, option_rows
from attune.data.schema import OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.errors import FeatureSpecMismatch, InvalidInput
from attune.serving.api import RankRequest, RankResponse
from attune.serving.config import RolloutConfig
from attune.serving.decision_log import DecisionLog, MemorySink
from attune.serving.guardrails import GuardrailBounds
from attune.serving.service import RankingService
from tests.integration.serving_fixtures import (
    DictStore,
    garbage_onnx,
    model_files,
    nan_onnx,
    offline_borrower_features,
    rank_body,
    ranker_files,
    ranker_onnx,
)

FAST_GUARDRAILS = GuardrailBounds(min_requests=20, min_paired=10, window_s=600)


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {
        "champ": ranker_onnx(seed=1),
        "cand": ranker_onnx(seed=2),
        "garbage": garbage_onnx(),
        "nan": nan_onnx(),
    }


@pytest.fixture
def store(models: dict[str, bytes]) -> DictStore:
    versions = {name: model_files(data) for name, data in models.items()}
    versions["truncated"] = model_files(models["cand"][: len(models["cand"]) // 2])
    return DictStore(versions, {"champion": "champ"})


class Harness:
    def __init__(self, store: DictStore, rollout: RolloutConfig | None = None) -> None:
        self.sink = MemorySink()
        self.log = DecisionLog(sink=self.sink, writer_id="t", max_batch=10_000)
        self.rollbacks: list[tuple[str, tuple[str, ...]]] = []
        self.service = RankingService(
            store=store,
            rollout=rollout or RolloutConfig(),
            decision_log=self.log,
            borrower_salt="salt",
            on_rollback=lambda version, reasons, _: self.rollbacks.append((version, reasons)),
        )

    def rank(self, body: dict[str, Any]) -> RankResponse:
        return asyncio.run(self.service.rank(RankRequest.model_validate(body)))

    def logged(self, role: str | None = None) -> list[dict[str, Any]]:
        self.log.flush()
        return [r for r in self.sink.rows() if role is None or r["role"] == role]


@pytest.fixture
def harness(store: DictStore) -> Iterator[Harness]:
    yield Harness(store)


def _onnx_scores(model: bytes, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"features": X})[0]).reshape(-1)


def test_candidates_are_ranked_by_the_champion_scores(
    harness: Harness, models: dict[str, bytes]
) -> None:
    body = rank_body(7)
    response = harness.rank(body)
    X = np.asarray([c["features"] for c in body["candidates"]], dtype=np.float32)
    expected = _onnx_scores(models["champ"], X)
    by_option = {o.option_id: o.score for o in response.options}
    assert [by_option[o] for o in OPTION_IDS] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [o.score for o in response.options] == sorted(by_option.values(), reverse=True)
    assert [o.rank for o in response.options] == list(range(1, 9))
    assert (response.arm, response.model_version) == ("champion", "champ")


def test_borrower_state_gives_the_same_vectors_as_the_training_feature_code(
    harness: Harness,
) -> None:
    """Features served from borrower state equal preprocess's rows, value for value."""
    offline = offline_borrower_features(seed=3)
    row = offline.iloc[[1]]
    expected = feature_matrix(
        option_rows(row, options=list(OPTION_IDS[:5]), touchpoint="email"), default_spec()
    )
    state = json.loads(json.dumps({n: float(row[n].iloc[0]) for n in BORROWER_FEATURES}))
    body = {
        "borrower_id": 1,
        "context": {"touchpoint": "email"},
        "candidates": [{"option_id": o} for o in OPTION_IDS[:5]],
        "borrower": state,
    }
    harness.rank(body)
    (record,) = harness.logged()
    assert record["feature_source"] == "borrower"
    np.testing.assert_array_equal(np.asarray(record["features"], dtype=np.float32), expected)


def test_wrong_feature_count_is_refused_before_any_model_call(harness: Harness) -> None:
    body = rank_body(1)
    body["candidates"][4]["features"] = body["candidates"][4]["features"][:-1]
    with pytest.raises(FeatureSpecMismatch, match=r"candidates\[4\]\.features"):
        harness.rank(body)
    assert harness.service.model_calls() == 0 and harness.logged() == []


def test_missing_features_without_online_view_is_refused_naming_borrower(
    harness: Harness,
) -> None:
    body = {**rank_body(1, features=False), "borrower": None}
    with pytest.raises(InvalidInput) as err:
        harness.rank(body)
    assert err.value.field == "borrower" and harness.service.model_calls() == 0


def test_every_decision_is_logged_with_features_scores_and_order(harness: Harness) -> None:
    response = harness.rank(rank_body(5, n=3))
    (record,) = harness.logged()
    assert record["decision_id"] == response.decision_id and record["role"] == "primary"
    assert record["returned_order"] == [o.option_id for o in response.options]
    assert record["candidates"] == list(OPTION_IDS[:3])
    assert len(record["features"]) == 3 and record["propensities"] is None
    assert record["borrower_hash"] != "5" and record["model_version"] == "champ"


def test_canary_takes_its_sticky_share_of_borrowers(store: DictStore) -> None:
    h = Harness(store, RolloutConfig(canary="cand", canary_percent=20, salt="s1"))
    arms = {b: h.rank(rank_body(b, n=2)).arm for b in range(1_000)}
    assert 0.16 < sum(a == "canary" for a in arms.values()) / 1_000 < 0.24
    assert all(h.rank(rank_body(b, n=2)).arm == arms[b] for b in range(0, 1_000, 50))


def test_shadow_answers_are_logged_under_the_decision_id_and_never_returned(
    store: DictStore,
) -> None:
    h = Harness(store, RolloutConfig(shadow="cand", shadow_percent=100))
    responses = [h.rank(rank_body(b)) for b in range(10)]
    assert all(r.model_version == "champ" and r.arm == "champion" for r in responses)
    assert h.service.pending == 10 and h.logged("shadow") == []
    h.service.run_background(max_jobs=100)
    shadow = h.logged("shadow")
    assert {r["decision_id"] for r in shadow} == {r.decision_id for r in responses}
    assert {r["model_version"] for r in shadow} == {"cand"}


def test_a_full_shadow_queue_drops_and_counts_without_blocking(store: DictStore) -> None:
    h = Harness(store, RolloutConfig(shadow="cand", shadow_percent=100))
    h.service._queue_size = 3
    for b in range(5):
        h.rank(rank_body(b, n=2))
    assert h.service.pending == 3 and h.service.status().shadow_dropped == 2


def test_a_canary_answering_nan_falls_back_and_is_rolled_back(store: DictStore) -> None:
    h = Harness(store, RolloutConfig(canary="nan", canary_percent=50, guardrails=FAST_GUARDRAILS))
    responses = [h.rank(rank_body(b, n=2)) for b in range(100)]
    assert {r.model_version for r in responses} == {"champ"}  # clients never see the NaNs
    h.service.check_guardrail(force=True)
    assert [v for v, _ in h.rollbacks] == ["nan"]
    assert "error rate" in h.rollbacks[0][1][0]
    assert h.service.canary_version is None
    status = h.service.status()
    assert status.rollbacks[0].version == "nan" and [m.role for m in status.models] == ["champion"]


def test_a_canary_with_garbage_scores_is_rolled_back_on_score_drift(store: DictStore) -> None:
    h = Harness(
        store, RolloutConfig(canary="garbage", canary_percent=50, guardrails=FAST_GUARDRAILS)
    )
    served = [h.rank(rank_body(b, n=3)) for b in range(60)]
    assert any(r.arm == "canary" for r in served)
    h.service.run_background(max_jobs=1_000)
    assert [v for v, _ in h.rollbacks] == ["garbage"]
    # Any position: on a busy host the p99 latency bound may breach too.
    assert any("score drift" in reason for reason in h.rollbacks[0][1])
    assert {h.rank(rank_body(b, n=3)).arm for b in range(60)} == {"champion"}


def test_a_healthy_canary_is_not_rolled_back(store: DictStore) -> None:
    h = Harness(
        store,
        RolloutConfig(
            canary="cand",
            canary_percent=50,
            # no latency bound: on a loaded host a model call may take long; this test is
            # about a canary whose answers are healthy
            guardrails=FAST_GUARDRAILS.model_copy(
                update={"max_score_drift": 100, "max_p99_latency_ms": 60_000}
            ),
        ),
    )
    for b in range(100):
        h.rank(rank_body(b, n=3))
    h.service.run_background(max_jobs=1_000)
    assert h.rollbacks == [] and h.service.canary_version == "cand"


def test_reapplying_the_rollout_that_tripped_keeps_its_canary_off(store: DictStore) -> None:
    rollout = RolloutConfig(canary="nan", canary_percent=50, guardrails=FAST_GUARDRAILS)
    h = Harness(store, rollout)
    for b in range(100):
        h.rank(rank_body(b, n=2))
    h.service.check_guardrail(force=True)
    h.service.apply(rollout)
    assert h.service.canary_version is None
    h.service.apply(rollout.model_copy(update={"canary": "cand"}))
    assert h.service.canary_version == "cand"


@pytest.mark.parametrize("role", ["canary", "shadow"])
def test_an_unloadable_version_is_refused_and_the_champion_keeps_serving(
    store: DictStore, role: str
) -> None:
    h = Harness(store)
    h.service.apply(RolloutConfig(**{role: "truncated", f"{role}_percent": 50}))
    status = h.service.status()
    assert [m.role for m in status.models] == ["champion"]
    assert status.refused and "truncated" in status.refused[0]
    assert h.rank(rank_body(1)).model_version == "champ"


class _HeldOnline:
    """Online features whose look-ups wait until released: a request held in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def lookup(self, borrower_id: int, *, spec_hash: str | None = None) -> Any:
        from datetime import UTC, datetime

        from attune.online.redis_store import OnlineLookup

        self.entered.set()
        await self.release.wait()
        state = np.asarray(
            [offline_borrower_features(seed=3).iloc[0][n] for n in BORROWER_FEATURES],
            dtype=np.float32,
        )
        return OnlineLookup(borrower_id, datetime.now(UTC), "s1", spec_hash or "", None, state)


def test_promotion_switches_versions_without_touching_requests_in_flight(
    store: DictStore,
) -> None:
    """A request suspended mid-way (waiting for its online features) when the champion
    changes finishes on the champion it started with; the next one gets the new one."""
    online = _HeldOnline()
    service = RankingService(
        store=store, rollout=RolloutConfig(), decision_log=None, borrower_salt="salt",
        online=online,
    )  # fmt: skip
    body = {
        "borrower_id": 3,
        "context": {"touchpoint": "app"},
        "candidates": [{"option_id": o} for o in OPTION_IDS[:4]],
    }

    async def scenario() -> tuple[RankResponse, RankResponse]:
        in_flight = asyncio.create_task(service.rank(RankRequest.model_validate(body)))
        await asyncio.wait_for(online.entered.wait(), 10)
        service.apply(RolloutConfig(champion="cand"))  # while the request is in flight
        assert not in_flight.done()
        online.release.set()
        before = await asyncio.wait_for(in_flight, 10)
        after = await service.rank(RankRequest.model_validate(body))
        return before, after

    before, after = asyncio.run(scenario())
    assert (before.model_version, after.model_version) == ("champ", "cand")
    assert before.options != after.options


def test_explain_returns_reason_codes_from_the_native_booster(models: dict[str, bytes]) -> None:
    from attune.serving.registry_explainer import RegistryExplainer

    store = DictStore({"champ": ranker_files(seed=1), "bare": model_files(models["cand"])}, {})
    for version, explained in (("champ", True), ("bare", False)):
        sink = MemorySink()
        service = RankingService(
            store=store,
            rollout=RolloutConfig(champion=version),
            decision_log=DecisionLog(sink=sink, writer_id="t"),
            borrower_salt="salt",
            explainer=RegistryExplainer(store, top_k=2),
        )
        body = {**rank_body(3, n=4), "explain": True}
        response = asyncio.run(service.rank(RankRequest.model_validate(body)))
        if not explained:  # no model.ubj: no reasons, still a ranking
            assert all(o.reasons is None for o in response.options)
            continue
        assert all(o.reasons is not None and len(o.reasons) == 2 for o in response.options)
        first = response.options[0].reasons
        assert first is not None and first[0].code and first[0].statement
        plain = asyncio.run(service.rank(RankRequest.model_validate(rank_body(3, n=4))))
        assert all(o.reasons is None for o in plain.options)


def test_a_failing_shadow_is_counted_and_never_touches_answers(store: DictStore) -> None:
    h = Harness(store, RolloutConfig(shadow="nan", shadow_percent=100))
    answers = [h.rank(rank_body(b, n=3)) for b in range(12)]
    h.service.run_background()
    assert {a.model_version for a in answers} == {"champ"}
    assert h.logged("shadow") == [] and len(h.logged("primary")) == 12
    shadow = next(m for m in h.service.status().models if m.role == "shadow")
    assert (shadow.calls, shadow.errors) == (12, 12)
