"""Broken registry versions under load: ``attune rollout`` refuses them, the champion serves.

Three versions that must never take traffic: one whose ``model.onnx`` was truncated in
the store after registration (its sha256 no longer matches the manifest), one
registered with a truncated ``model.onnx`` (ONNX Runtime cannot load it) and one whose
feature spec disagrees with the model's input width. Each is offered as a canary with
the real CLI (``--override``, so no promotion gate stands in the way): the command
fails with the reason, no alias moves, the app's rollout is unchanged and every
request is answered by the champion.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.faults.harness import APP, REPO, FaultApp, Report, request_counts

pytestmark = pytest.mark.faults

#: version name -> what the refusal must say
BROKEN = {
    "corrupted": "expected sha256",
    "truncated": "ONNX Runtime cannot load it",
    "mismatch": "feature spec mismatch",
}
#: version name -> exit status (attune.cli: 8 unavailable (corrupted artifact), 4 invalid input)
STATUS = {"corrupted": 8, "truncated": 4, "mismatch": 4}


def _rollout_canary(app: FaultApp, version: str, ray_address: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "attune.cli", "rollout", "canary", version, "--percent", "50",
        "--app", APP, "--registry", app.registry.uri, "--override",
        "--justification", "fault suite: must be refused before any gate",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_broken_versions_are_refused_and_the_champion_keeps_serving(
    fault_app: FaultApp, fault_report: Report, ray_cluster: object
) -> None:
    from attune.serving.rollout import deployed_config, rollout_of

    app = fault_app
    address = ray_cluster.address  # type: ignore[attr-defined]
    aliases = app.registry.aliases()
    rollout = rollout_of(deployed_config(), APP)
    refusals: dict[str, str] = {}
    with app.load("bad-versions", rate=20, seed=2) as load:
        load.wait_ok(40)
        for name in BROKEN:
            result = _rollout_canary(app, app.versions[name], address)
            assert result.returncode == STATUS[name], (name, result.stdout, result.stderr[-2000:])
            refusals[name] = next(
                line for line in result.stderr.splitlines() if line.startswith("attune: error: ")
            )
        load.wait_ok(40)
        final = load.stop()
    counts = request_counts(final)
    fault_report.add(
        "bad-versions",
        injected="attune rollout canary of 3 broken versions: "
        + "; ".join(f"{name}: {line[:100]}" for name, line in refusals.items()),
        counted={**counts, "versions_refused": len(refusals), "served_by": final["models"]},
    )
    for name, reason in BROKEN.items():
        assert reason in refusals[name] and app.versions[name] in refusals[name], refusals[name]
    assert app.registry.aliases() == aliases
    assert rollout_of(deployed_config(), APP) == rollout
    assert counts["failed"] == 0 and counts["failed_first_attempt"] == 0, final["first_failed"]
    assert set(final["models"]) == {app.versions["champ"]}
