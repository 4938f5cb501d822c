"""The ranking API's pydantic models and published schema (attune.serving.api)."""

from __future__ import annotations

import copy
import json
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from attune.data.schema import OPTION_IDS, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES
from attune.serving.api import MAX_CANDIDATES, OptionId, RankRequest, Touchpoint
from tests.integration.serving_fixtures import N_FEATURES, rank_body


def test_literals_match_the_catalog_and_touchpoints() -> None:
    """The OpenAPI enums are the data contract's option ids and touchpoints, in order."""
    assert get_args(OptionId) == OPTION_IDS
    assert get_args(Touchpoint) == TOUCHPOINTS
    assert len(OPTION_IDS) == MAX_CANDIDATES


@pytest.mark.parametrize(
    ("body", "source"),
    [
        (rank_body(1), "request"),
        (rank_body(1, features=False), "borrower"),
        ({**rank_body(1, features=False), "borrower": None}, "online"),
        (rank_body(1, n=1), "request"),
    ],
)
def test_valid_requests_parse_and_name_their_feature_source(body: dict, source: str) -> None:
    request = RankRequest.model_validate_json(json.dumps(body))
    assert request.feature_source == source
    assert request.option_ids == tuple(c["option_id"] for c in body["candidates"])


def _mutate(path: str, value: Any) -> dict[str, Any]:
    body = rank_body(1)
    target: Any = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


_INVALID = [
    # (case, body, field named by the error)
    ("unknown option", _mutate("candidates.0.option_id", "free_money"), "candidates.0.option_id"),
    ("unknown touchpoint", _mutate("context.touchpoint", "fax"), "context.touchpoint"),
    ("unknown top-level field", {**rank_body(1), "debug": True}, "debug"),
    ("unknown candidate field", _mutate("candidates.0.weight", 2), "candidates.0.weight"),
    ("unknown context field", _mutate("context.channel", "sms"), "context.channel"),
    ("string borrower id", _mutate("borrower_id", "42"), "borrower_id"),
    ("negative borrower id", _mutate("borrower_id", -1), "borrower_id"),
    ("huge borrower id", _mutate("borrower_id", 2**64), "borrower_id"),
    ("missing context", {k: v for k, v in rank_body(1).items() if k != "context"}, "context"),
    ("no candidates", _mutate("candidates", []), "candidates"),
    (
        "too many candidates",
        _mutate("candidates", rank_body(1)["candidates"] * 2),
        "candidates",
    ),
    ("features not a list", _mutate("candidates.0.features", "1,2"), "candidates.0.features"),
    ("empty features", _mutate("candidates.0.features", []), "candidates.0.features"),
    (
        "too many features",
        _mutate("candidates.0.features", [0.0] * 600),
        "candidates.0.features",
    ),
    ("explain not a bool", {**rank_body(1), "explain": "yes"}, "explain"),
]


@pytest.mark.parametrize(("case", "body", "field"), _INVALID, ids=[c[0] for c in _INVALID])
def test_malformed_requests_are_refused_naming_the_field(case: str, body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate_json(json.dumps(body))
    locs = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}
    assert any(loc == field or loc.startswith(field + ".") for loc in locs), locs


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_features_are_refused(token: str) -> None:
    text = json.dumps(rank_body(1)).replace(
        json.dumps(rank_body(1)["candidates"][2]["features"][5]), token, 1
    )
    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate_json(text)
    assert err.value.errors()[0]["loc"][:3] == ("candidates", 2, "features")


def _cross_field(case: str) -> dict[str, Any]:
    body = rank_body(1)
    if case == "duplicate option":
        body["candidates"][1]["option_id"] = body["candidates"][0]["option_id"]
    elif case == "features on some candidates":
        del body["candidates"][3]["features"]
    elif case == "features and borrower":
        body["borrower"] = rank_body(1, features=False)["borrower"]
    return body


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("duplicate option", "candidates[1].option_id"),
        ("features on some candidates", "candidates[3].features"),
        ("features and borrower", "borrower"),
    ],
)
def test_inconsistent_requests_are_refused_naming_the_field(case: str, named: str) -> None:
    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate_json(json.dumps(_cross_field(case)))
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("drop", f"borrower.{BORROWER_FEATURES[3]}"),
        ("unknown", "borrower.shoe_size"),
        ("nan", f"borrower.{BORROWER_FEATURES[0]}"),
    ],
)
def test_borrower_state_must_name_every_borrower_feature_once(change: str, field: str) -> None:
    body = rank_body(1, features=False)
    state = copy.deepcopy(body["borrower"])
    if change == "drop":
        del state[BORROWER_FEATURES[3]]
    elif change == "unknown":
        state["shoe_size"] = 44.0
    else:
        state[BORROWER_FEATURES[0]] = float("nan")
    body["borrower"] = state
    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate(body)
    locs = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}
    assert field in locs


def test_openapi_publishes_the_routes_and_models() -> None:
    from attune.serving.ingress import api

    schema = api.openapi()
    assert {"/v1/rank", "/v1/healthz", "/v1/models"} <= set(schema["paths"])
    rank = schema["components"]["schemas"]["RankRequest"]
    assert rank["additionalProperties"] is False
    candidate = schema["components"]["schemas"]["Candidate"]
    assert candidate["properties"]["option_id"]["enum"] == list(OPTION_IDS)
    assert schema["paths"]["/v1/rank"]["post"]["responses"]["422"]["content"]


def test_validation_error_body_names_every_offending_field() -> None:
    from attune.serving.ingress import validation_error_body

    with pytest.raises(ValidationError) as err:
        RankRequest.model_validate(_mutate("candidates.0.option_id", "x") | {"extra": 1})
    body = validation_error_body(err.value.errors())
    assert body["error"] == "RequestValidationError"
    assert set(body["details"]["fields"]) == {"candidates.0.option_id", "extra"}
    assert "candidates.0.option_id" in body["message"]


def test_feature_vectors_of_spec_length_parse() -> None:
    request = RankRequest.model_validate(rank_body(1))
    assert all(len(c.features or []) == N_FEATURES for c in request.candidates)
