"""Security hardening without Ray: numbers, times, ids that become paths, error bodies,
protected names, the salt check of the ingress, explain off the event loop, guardrail
robustness, and the serving limits of non-local configs."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from attune.data.schema import PROTECTED_COLUMNS, is_protected
from attune.data.spec import FEATURE_NAMES, FeatureSpec
from attune.errors import ConfigError, StoreUnavailable
from attune.online.events import EventsRequest
from attune.serving.api import RankRequest
from attune.serving.guardrails import Guardrail, GuardrailBounds
from attune.settings import get_settings
from tests.integration.serving_fixtures import rank_body

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "raw",
    ["1e300", "-1e39", '"1e300"', '" 1 "', '"1"', "true", "false", "3.5e38"],
    ids=["1e300", "-1e39", "string 1e300", "padded string", "string", "true", "false", "3.5e38"],
)
@pytest.mark.parametrize("where", ["candidate features", "borrower state"])
def test_numbers_must_be_json_numbers_within_float32_range(raw: str, where: str) -> None:
    """Beyond float32 a value becomes ±inf in the model; strings and booleans are not numbers."""
    if where == "candidate features":
        body = rank_body(1)
        body["candidates"][0]["features"][3] = "__X__"
    else:
        body = rank_body(1, features=False)
        body["borrower"][sorted(body["borrower"])[0]] = "__X__"
    text = json.dumps(body).replace('"__X__"', raw)
    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate_json(text)
    loc = err.value.errors()[0]["loc"]
    assert loc[0] == ("candidates" if where == "candidate features" else "borrower")


def test_float32_extremes_and_integers_are_still_numbers() -> None:
    body = rank_body(1)
    body["candidates"][0]["features"][:3] = [3.4028234663852886e38, -3.4028234663852886e38, 7]
    request = RankRequest.model_validate_json(json.dumps(body))
    assert np.isfinite(np.asarray(request.candidates[0].features, dtype=np.float32)).all()


def _event(**change: Any) -> dict[str, Any]:
    event = {
        "event_id": "e1",
        "borrower_id": 1,
        "ts": "2025-03-01T10:00:00+00:00",
        "event_type": "payment_on_time",
        "amount": 10.0,
    }
    return event | change


@pytest.mark.parametrize(
    "change",
    [
        {"ts": "9999-12-31T23:30:00-05:00"},
        {"ts": "1900-01-01T00:00:00+00:00"},
        {"ts": "2200-01-01T00:00:00Z"},
        {"amount": "1e300"},
        {"amount": 1e300},
        {"amount": True},
    ],
    ids=["year 9999 with offset", "1900", "2200", "amount string", "amount 1e300", "amount bool"],
)
def test_posted_events_with_bad_times_or_amounts_are_422_naming_the_field(
    change: dict[str, Any],
) -> None:
    """Year 9999 with an offset overflowed into a 503 with an internal message."""
    with pytest.raises(ValidationError) as err:
        EventsRequest.model_validate_json(json.dumps({"events": [_event(**change)]}))
    (field,) = change
    assert err.value.errors()[0]["loc"][:3] == ("events", 0, field)


def test_events_within_the_range_parse() -> None:
    parsed = EventsRequest.model_validate_json(
        json.dumps({"events": [_event(ts="2099-12-31T23:59:59+00:00")]})
    )
    assert parsed.events[0].ts.year == 2099


# --------------------------------------------------------------------------- ids → paths


@pytest.mark.parametrize(
    "version", ["../../../../tmp/x", "v20250101-000000-abcdef/../x", "champion/..", "", "latest"]
)
def test_monitor_drift_refuses_a_version_that_is_not_an_id_or_alias(version: str) -> None:
    from attune.monitoring.drift_monitor import DriftMonitorConfig

    with pytest.raises(ValidationError) as err:
        DriftMonitorConfig(registry="/r", version=version, decisions="/d")
    assert err.value.errors()[0]["loc"] == ("version",)


def test_monitor_drift_refuses_an_alias_file_naming_a_path(tmp_path: Path) -> None:
    """The monitor reads the alias through the registry, which refuses a path in it."""
    from attune.errors import ArtifactCorrupted
    from attune.monitoring.drift_monitor import drift_config, run_drift_monitor

    (tmp_path / "aliases").mkdir()
    (tmp_path / "aliases/champion.json").write_text(json.dumps({"version": "../../../tmp/x"}))
    config = drift_config(registry=str(tmp_path), version="champion", decisions=str(tmp_path))
    with pytest.raises(ArtifactCorrupted, match="unreadable alias"):
        run_drift_monitor(config)


def test_monitor_drift_cli_exits_with_an_error_for_a_path_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is read or written outside the registry: the command refuses the version."""
    from attune.cli import main

    outside = tmp_path / "outside"
    (tmp_path / "registry").mkdir()  # exists: the version is what is refused
    (tmp_path / "decisions").mkdir()
    argv = ["monitor", "drift", "--registry", str(tmp_path / "registry"), "--decisions"]
    argv += [str(tmp_path / "decisions"), "--version", f"../../../../{outside}"]
    assert main(argv) != 0  # exit codes per category are the CLI's own (not pinned here)
    assert "version" in capsys.readouterr().err
    assert not outside.exists()


@pytest.mark.parametrize("spec_hash", ["../../x", "ABCDEF12", "abc", "a" * 65])
def test_online_spec_hash_must_be_hex(spec_hash: str) -> None:
    from attune.online.config import OnlineConfig

    with pytest.raises(ValidationError):
        OnlineConfig(spec_hash=spec_hash)


# --------------------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    "uri",
    [
        "s3://attune-prod/registry/versions/v1/model.onnx",
        "/var/lib/attune/store/decisions",
        "redis://:pw@redis.internal:6379/0",
    ],
)
def test_error_bodies_name_the_failure_but_not_the_store_location(uri: str) -> None:
    from attune.serving.ingress import _attune_error

    error = StoreUnavailable(uri=uri, attempts=5, cause=f"read of {uri} failed: timed out")
    response = asyncio.run(_attune_error(None, error))  # type: ignore[arg-type]
    body = json.loads(bytes(response.body))
    assert response.status_code == 503 and body["error"] == "StoreUnavailable"
    assert "timed out" in body["details"]["cause"] and "timed out" in body["message"]
    text = json.dumps(body)
    assert uri not in text and uri.split("/")[2] not in text, text


def test_redaction_keeps_api_routes_and_plain_words() -> None:
    from attune.serving.redact import redact_locations

    message = "POST /v1/events failed: field amount is 1e300 (see /v1/healthz)"
    assert redact_locations({"message": message}) == {"message": message}


# --------------------------------------------------------------------------- protected


@pytest.mark.parametrize(
    "name",
    ["Age_Band", "borrower-gender", "raceCode", "ageband", "ETHNICITY", "sex", "marital_status"],
)
def test_protected_attributes_are_refused_beyond_exact_names(name: str) -> None:
    assert is_protected(name)
    with pytest.raises(ValidationError, match="protected attributes"):
        FeatureSpec(names=(*FEATURE_NAMES, name), dtypes=("float32",) * (len(FEATURE_NAMES) + 1))


def test_ordinary_features_are_not_taken_for_protected_ones() -> None:
    """Whole words only: average_balance, page_views and usage are not 'age'."""
    assert not [n for n in FEATURE_NAMES if is_protected(n)]
    assert not any(is_protected(n) for n in ("average_balance", "page_views", "usage", "stage"))
    assert all(is_protected(c) for c in PROTECTED_COLUMNS)


# --------------------------------------------------------------------------- the salt


def test_the_ingress_refuses_the_default_salt_with_auth_required_or_an_s3_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deploy fails naming ATTUNE_BORROWER_SALT before any model or store is touched."""
    from attune.serving.config import AppArgs
    from attune.serving.ingress import _default_collaborators

    monkeypatch.delenv("ATTUNE_BORROWER_SALT", raising=False)
    get_settings.cache_clear()
    try:
        local = {"registry": str(tmp_path / "r"), "store": str(tmp_path / "s")}
        for args in (
            AppArgs.model_validate({**local, "auth": {"required": True}}),
            AppArgs.model_validate({**local, "store": "s3://bucket/store"}),
        ):
            with pytest.raises(ConfigError) as err:
                _default_collaborators(args, "replica-1")
            assert err.value.details["field"] == "ATTUNE_BORROWER_SALT"
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("name", ["prod", "staging"])
def test_non_local_serve_configs_require_auth_and_bound_queue_and_time(name: str) -> None:
    config = yaml.safe_load((ROOT / f"serve_configs/{name}.yaml").read_text())
    assert 0 < config["http_options"]["request_timeout_s"] <= 60
    (app,) = config["applications"]
    assert app["args"]["auth"]["required"] is True
    (ingress,) = app["deployments"]
    assert 0 < ingress["max_queued_requests"] <= 1024


def test_the_ingress_deployment_bounds_its_queue() -> None:
    from attune.serving.ingress import MAX_QUEUED_REQUESTS, RankingIngress

    config: Any = RankingIngress
    assert config._deployment_config.max_queued_requests == MAX_QUEUED_REQUESTS > 0


# --------------------------------------------------------------------------- guardrail


def test_a_minority_of_crafted_requests_cannot_push_the_drift_guardrail_over() -> None:
    """A caller who picks canary borrowers and crafts their vectors controls some requests'
    drift: with a healthy majority the median stays put (a mean would breach)."""
    bounds = GuardrailBounds(min_requests=1, min_paired=20, max_score_drift=0.5)
    guard = Guardrail(bounds, clock=lambda: 0.0)
    healthy, crafted = [0.05] * 70, [40.0] * 30
    for drift in healthy + crafted:
        guard.record_drift(drift)
    verdict = guard.check()
    assert float(np.mean(healthy + crafted)) > bounds.max_score_drift  # a mean would breach
    assert not verdict.breached and verdict.score_drift == pytest.approx(0.05)
    for drift in [40.0] * 50:  # a canary that really drifts on most traffic still breaches
        guard.record_drift(drift)
    assert guard.check().breached


# --------------------------------------------------------------------------- explain


class _SlowExplainer:
    """Explains on whatever thread calls it; records threads and preloads."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.preloaded: list[str] = []
        self.release = threading.Event()

    def preload(self, version: str, names: tuple[str, ...]) -> None:
        self.preloaded.append(version)

    def explain(self, version: str, X: np.ndarray, names: tuple[str, ...]) -> None:
        self.threads.append(threading.get_ident())
        assert self.release.wait(10), "the event loop was blocked"
        return None


def test_explain_runs_off_the_event_loop_and_explainers_preload_on_reconfigure() -> None:
    """While one explained request computes, the replica's loop keeps serving others."""
    from attune.serving.config import RolloutConfig
    from attune.serving.service import RankingService
    from tests.integration.serving_fixtures import DictStore, model_files, ranker_onnx

    explainer = _SlowExplainer()
    store = DictStore(
        {"champ": model_files(ranker_onnx(seed=1)), "cand": model_files(ranker_onnx(seed=2))},
        {"champion": "champ"},
    )
    service = RankingService(
        store=store,
        rollout=RolloutConfig(),
        decision_log=None,
        borrower_salt="salt",
        explainer=explainer,
    )
    assert explainer.preloaded == ["champ"]
    service.apply(RolloutConfig(canary="cand", canary_percent=50))
    assert explainer.preloaded == ["champ", "champ", "cand"]

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        explained = asyncio.create_task(service.rank(_request(explain=True)))
        plain = await asyncio.wait_for(service.rank(_request(explain=False)), 10)
        assert plain.options and not explained.done()  # served while the explain ran
        explainer.release.set()
        await asyncio.wait_for(explained, 10)
        assert explainer.threads and loop_thread not in explainer.threads

    asyncio.run(scenario())


def _request(*, explain: bool) -> RankRequest:
    return RankRequest.model_validate(rank_body(5) | {"explain": explain})
