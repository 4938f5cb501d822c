"""Rollout steps without Ray: a canary ramp keeps its borrowers, a new version draws new
ones, and a guardrail rollback leaves its actor and reasons in the alias history."""

from __future__ import annotations

from typing import Any

import pytest

from attune.registry import Registry
from attune.serving.config import RolloutConfig
from attune.serving.rollout import GUARDRAIL_ACTOR, RolloutRequest, plan
from attune.serving.traffic_split import TrafficSplit
from tests.integration.serving_fixtures import ranker_files

BORROWERS = range(20_000)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, dict[str, str]]:
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    versions = {
        name: registry.register(ranker_files(seed=seed), metadata={"name": name})
        for name, seed in (("champ", 1), ("cand", 2), ("next", 3))
    }
    registry.set_alias("champion", versions["champ"], by="t", justification="t", override=True)
    return registry, versions


def _canary(registry: Registry, current: RolloutConfig, version: str, percent: float) -> Any:
    step = RolloutRequest(
        step="canary", version=version, percent=percent, override=True, justification="test"
    )
    return plan(step, registry, current)


def _on_canary(rollout: RolloutConfig) -> set[int]:
    split = TrafficSplit(salt=rollout.salt, canary_share=rollout.canary_percent / 100)
    return {b for b in BORROWERS if split.arm(b) == "canary"}


def test_a_canary_ramp_keeps_its_borrowers_and_a_new_version_draws_new_ones(
    registry: tuple[Registry, dict[str, str]],
) -> None:
    reg, versions = registry
    start = RolloutConfig(champion=versions["champ"])
    five = _canary(reg, start, versions["cand"], 5)
    twenty = _canary(reg, five, versions["cand"], 20)
    assert five.salt == twenty.salt != start.salt
    at_five, at_twenty = _on_canary(five), _on_canary(twenty)
    assert 0.04 < len(at_five) / len(BORROWERS) < 0.06
    assert 0.18 < len(at_twenty) / len(BORROWERS) < 0.22
    assert at_five <= at_twenty  # ramping up never moves a borrower back to the champion
    fresh = _canary(reg, twenty, versions["next"], 20)
    assert fresh.salt != twenty.salt
    # the salt cannot be guessed from the version: the same step twice draws two salts
    again = _canary(reg, twenty, versions["next"], 20)
    assert again.salt != fresh.salt and again.salt.startswith(f"canary-{versions['next']}-")
    overlap = len(_on_canary(fresh) & at_twenty) / len(at_twenty)
    assert overlap < 0.3  # a fresh draw: about 20 % overlap by chance, not the same people


def test_a_guardrail_rollback_records_its_actor_and_reasons_in_the_alias_history(
    registry: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """persist_guardrail_rollback moves the canary alias back with who and why; the app
    config change it asks for closes only the breached rollout."""
    from attune.serving import rollout as rollout_module

    reg, versions = registry
    reg.set_alias("canary", versions["cand"], by="t", justification="t", override=True)
    breached = RolloutConfig(
        champion=versions["champ"], canary=versions["cand"], canary_percent=20, salt="s"
    )
    edits: list[Any] = []
    monkeypatch.setattr(rollout_module, "update_rollout", lambda app, edit: edits.append(edit))
    reasons = ("score drift 3.2 > max_score_drift 1 over 40 paired requests",)
    rollout_module.persist_guardrail_rollback(
        registry_uri=reg.uri, app_name="attune", version=versions["cand"], reasons=reasons,
        breached=breached,
    )  # fmt: skip
    entry = reg.history(alias="canary")[-1]
    assert (entry.version, entry.previous) == (versions["champ"], versions["cand"])
    assert entry.by == GUARDRAIL_ACTOR and entry.override
    assert entry.justification is not None
    assert versions["cand"] in entry.justification and reasons[0] in entry.justification
    (edit,) = edits
    closed = edit(breached)
    assert closed.canary is None and closed.canary_percent == 0
    other = breached.model_copy(update={"salt": "another rollout"})
    assert edit(other) == other  # a rollout that changed meanwhile is left alone
