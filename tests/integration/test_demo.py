"""`attune demo` runs the whole flow end to end (tiny sizes) and writes its report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_then_serve_run_local_yaml_serves_its_state(
    tmp_path: Path,
) -> None:
    """The demo exits 0, every served decision is logged, the report embeds its plots; then
    ``serve run serve_configs/local.yaml`` in the same checkout serves the demo's champion
    and online state: an id-only rank answers, and a posted payment shows at once."""
    workdir = tmp_path / ".attune"
    attune = Path(sys.executable).with_name("attune")
    from tests.integration.serving_fixtures import serve_isolation_env

    # the demo's own Ray: Serve ports of its own, not the session cluster's (inherited)
    inherited = ("AWS_", "RAY_ADDRESS", "RAY_SERVE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(serve_isolation_env())
    proc = subprocess.run(
        [
            str(attune),
            "demo",
            "--workdir",
            str(workdir),
            "--borrowers",
            "300",
            "--months",
            "4",
            "--trials",
            "1",
            "--requests",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    answered = re.search(r"decisions answered\s*│\s*(\d+)", out)
    logged = re.search(r"primary decisions logged\s*│\s*(\d+)", out)
    assert answered and logged, out[-4000:]
    # 60 + 60 + 2 x 60 traffic requests and the 2 rankings by id of the real-time step
    assert int(answered.group(1)) == 242, out[-6000:]
    assert logged.group(1) == answered.group(1)
    report = (workdir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3
    assert "lift over time" in report
    assert re.search(r"pay_on_time_30 before → after\s*│\s*(\d+) → (\d+)", out), out[-4000:]
    before, after = map(
        int, re.findall(r"pay_on_time_30 before → after\s*│\s*(\d+) → (\d+)", out)[0]
    )
    assert after == before + 1
    _check_loop(workdir, report)
    borrower = re.search(r"│ borrower\s*│\s*(\d+)", out)
    assert borrower, out[-4000:]
    _serve_run_local_yaml_answers_by_id(tmp_path, env, int(borrower.group(1)))


def _check_loop(workdir: Path, report: str) -> None:
    """The learning loop ran twice and summary.json says what each turn did."""
    import json

    summary = json.loads((workdir / "demo" / "summary.json").read_text())
    loop = summary["loop"]
    assert len(loop) == 2, loop
    for turn in loop:
        assert {"candidate", "ope", "realized", "true_value", "champion_true_value"} <= set(turn)
        assert {"oracle_share", "promoted"} <= set(turn)
        assert turn["ope"] is None or {"estimator", "value", "ci_low", "ci_high", "n"} <= set(
            turn["ope"]
        )
        assert turn["ope"] is None or turn["ope"]["ci_low"] <= turn["ope"]["value"]
        refs = turn["references"]  # no ranking beats the oracle on the same presentations
        assert refs["random"] < refs["oracle"]
        assert max(turn["true_value"], turn["champion_true_value"]) <= refs["oracle"] + 1e-9
        assert turn["promoted"] in (True, False)
    assert all(turn["ope"] is not None for turn in loop), loop  # exploring decisions were served
    assert "learning loop: true policy value per iteration" in report


def _serve_run_local_yaml_answers_by_id(checkout: Path, env: dict[str, str], borrower: int) -> None:
    from datetime import UTC, datetime

    import yaml

    from tests.conftest import free_port
    from tests.docs_examples import run_readme_requests
    from tests.integration.serving_fixtures import http, serve_run

    config = yaml.safe_load((Path(__file__).parents[2] / "serve_configs/local.yaml").read_text())
    config_port = free_port()
    config["http_options"]["port"] = config_port
    # its own Ray ("-a local") and Serve's defaults, as a newcomer would run it
    clean = {k: v for k, v in env.items() if not k.startswith(("RAY_SERVE_", "ATTUNE_REDIS"))}
    with serve_run(checkout, config, clean) as base:
        ask = {
            "borrower_id": borrower,
            "context": {"touchpoint": "app"},
            "candidates": [{"option_id": "autopay_enroll"}, {"option_id": "pay_now"}],
        }
        ranked = http("POST", f"{base}/v1/rank", ask)
        assert ranked.status == 200, ranked
        assert ranked.body["feature_source"] == "online" and ranked.body["feature_snapshot"]
        before = http("GET", f"{base}/v1/features/{borrower}").body["features"]
        payment = {
            "event_id": "serve-run-payment",
            "borrower_id": borrower,
            "ts": datetime.now(UTC).isoformat(),
            "event_type": "payment_on_time",
            "amount": 80.0,
        }
        assert http("POST", f"{base}/v1/events", {"events": [payment]}).body["applied"] == 1
        after = http("GET", f"{base}/v1/features/{borrower}").body["features"]
        assert after["pay_on_time_30"] == before["pay_on_time_30"] + 1
        # the README's requests, typed as written (borrower 1, port 8000 -> this port)
        ranked, posted, _ = (json.loads(out) for out in run_readme_requests(config_port))
        assert len(ranked["options"]) == 4 and ranked["feature_source"] == "online", ranked
        assert posted["applied"] == 1, posted
