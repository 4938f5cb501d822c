"""The README's walkthrough, typed as written, ends in a 200 ranking from `serve run`.

From an empty directory: the README's "pieces" commands (generate, preprocess,
materialize, tune, alias, list) with the sizes scaled down (``SCALE``: the same commands
at test size), then ``serve run serve_configs/local.yaml`` and the README's requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.docs_examples import ROOT, readme_blocks, run_readme_requests

pytestmark = pytest.mark.integration

#: The only edits made to the README's commands: test-sized data and sweeps.
SCALE = {
    "--borrowers 2000": "--borrowers 300",
    "--months 6": "--months 4",
    "--trials 8": "--trials 1",
}


def _walkthrough() -> list[str]:
    (block,) = [b for b in readme_blocks() if "attune generate" in b.text]
    commands = []
    for command in block.commands():
        for old, new in SCALE.items():
            command = command.replace(old, new)
        commands.append(command)
    return commands


def test_the_readme_walkthrough_serves_a_ranking(tmp_path: Path) -> None:
    from tests.conftest import free_port
    from tests.integration.serving_fixtures import serve_run

    bin_dir = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "RAY_ADDRESS", "ATTUNE_", "RAY_SERVE_"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    commands = _walkthrough()
    serve = [c for c in commands if c.startswith("serve run")]
    assert serve == ["serve run serve_configs/local.yaml"]
    for command in commands:
        if command in serve:
            continue
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        print(f"{time.monotonic() - started:6.1f} s  {command}")  # shown with -s
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / ".attune/features/latest/feature_spec.json").is_file()
    assert list((tmp_path / ".attune/registry/aliases").glob("champion.json"))

    config = yaml.safe_load((ROOT / "serve_configs/local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    shutil.copytree(ROOT / "serve_configs", tmp_path / "serve_configs")
    with serve_run(tmp_path, config, env):
        ranked, posted, features = (json.loads(out) for out in run_readme_requests(port))
    assert [o["option_id"] for o in ranked["options"]], ranked
    assert {o["option_id"] for o in ranked["options"]} == {
        "autopay_enroll",
        "payment_plan",
        "pay_now",
        "reminder_sms",
    }
    assert ranked["feature_source"] == "online"
    assert posted["applied"] == 1, posted
    assert features["features"]["pay_on_time_30"] >= 1, features
