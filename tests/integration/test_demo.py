"""`attune demo` runs the whole flow end to end (tiny sizes) and writes its report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_writes_the_report(tmp_path: Path) -> None:
    """The demo exits 0, every served decision is logged, and the report embeds its plots."""
    workdir = tmp_path / "demo"
    attune = Path(sys.executable).with_name("attune")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
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
    assert int(answered.group(1)) == 240, out[-6000:]  # 60 + 60 + 2 x 60, none failed
    assert logged.group(1) == answered.group(1)
    report = (workdir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3
    assert "lift over time" in report
