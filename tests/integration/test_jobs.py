"""jobs/*.py run unchanged through Ray's job submission against a real head node.

Starts its own head with ``ray start --head --block`` (separate ports, its own temp
dir) so it never touches the session cluster; terminating the blocking process stops
every process of that head.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head_node() -> Iterator[str]:
    """A real Ray head node in a subprocess; yields its dashboard (job API) address."""
    ray_bin = Path(sys.executable).with_name("ray")
    dashboard_port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjobs-")
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--num-cpus=1",
            "--object-store-memory=300000000",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # A throwaway loopback cluster: say so explicitly, rather than inherit token auth
        # from whatever token a developer's machine holds.
        # `python` in an entrypoint is the cluster's interpreter, as in a cluster image.
        env={
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        from ray.job_submission import JobSubmissionClient

        wait_for(lambda: JobSubmissionClient(address), timeout=120, what="the job API")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _finished(client: Any, job_id: str) -> Any:
    """The job's terminal status (SUCCEEDED, FAILED or STOPPED), waited for up to 300 s."""
    from ray.job_submission import JobStatus

    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    return wait_for(
        lambda: (s := client.get_job_status(job_id)) in terminal and s,
        timeout=300,
        interval=1.0,
        what=f"job {job_id} to finish",
    )


def test_generate_job_submitted_to_head_node_succeeds(head_node: str, tmp_path: Path) -> None:
    """`jobs/generate.py` submitted with the repo as working dir SUCCEEDS and writes a history."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node)
    out = tmp_path / "histories"
    job_id = client.submit_job(
        entrypoint=(
            f"python jobs/generate.py --borrowers 40 --months 2 --seed 3 --out {out} "
            "--parallel local --quiet"
        ),
        runtime_env={"working_dir": str(ROOT)},
    )
    status = _finished(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert '"counts"' in logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["borrowers"] == 40
    assert manifest["counts"]["presentations"] > 0


def test_failing_job_reports_failed_with_the_error(head_node: str, tmp_path: Path) -> None:
    """A job given a bad argument ends FAILED and its logs name the field."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node)
    job_id = client.submit_job(
        entrypoint=f"python jobs/generate.py --borrowers 0 --months 2 --seed 3 --out {tmp_path}",
        runtime_env={"working_dir": str(ROOT)},
    )
    status = _finished(client, job_id)
    assert status == JobStatus.FAILED
    assert "borrowers" in client.get_job_logs(job_id)


_PROBE_JOB = '''
"""A job that reports which attune its driver and a worker imported."""
import sys

if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    import ray

    import attune._submitted_probe as probe
    from attune.runtime import init_ray

    init_ray(None)

    @ray.remote
    def on_a_worker() -> str:
        import attune._submitted_probe as worker_probe

        print("worker imported", worker_probe.MARK, flush=True)  # must reach `ray job logs`
        return worker_probe.MARK

    print("driver imported", probe.MARK, "worker returned", ray.get(on_a_worker.remote()))
    sys.exit(0)
'''


def test_a_job_runs_the_submitted_code_on_driver_and_workers(
    head_node: str, tmp_path: Path
) -> None:
    """A module only the submitted tree has is imported by the driver and by a worker task,
    and the worker's own output reaches ``ray job logs``."""
    import uuid

    from ray.job_submission import JobStatus, JobSubmissionClient

    tree = tmp_path / "submitted"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "platform", tree / "platform", ignore=ignore)
    shutil.copytree(ROOT / "jobs", tree / "jobs", ignore=ignore)
    mark = uuid.uuid4().hex
    (tree / "platform" / "attune" / "_submitted_probe.py").write_text(f"MARK = {mark!r}\n")
    (tree / "jobs" / "probe_submitted.py").write_text(_PROBE_JOB)
    with pytest.raises(ModuleNotFoundError):  # the installed package does not have it
        __import__("attune._submitted_probe")

    client = JobSubmissionClient(head_node)
    job_id = client.submit_job(
        entrypoint="python jobs/probe_submitted.py", runtime_env={"working_dir": str(tree)}
    )
    status = _finished(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert f"driver imported {mark} worker returned {mark}" in logs
    assert f"worker imported {mark}" in logs
