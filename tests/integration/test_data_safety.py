"""Data safety: writers killed half-way leave nothing that a reader would take as complete.

* Registry: a process registering a version is frozen as soon as its first file lands,
  inspected, then killed: the version's files are there, its manifest is not, and no
  reader lists, resolves or reads it (a version exists iff its ``MANIFEST.json`` does).
* ``attune preprocess``: the CLI is frozen as soon as the first output file lands, then
  killed: no split is ever readable (locally nothing is at the output path, the run was
  staged beside it; on S3 the files are there but no split was committed with
  ``_SUCCESS``, so ``load_dataset`` refuses them).

The third data-safety property, the decision log's loss window across a replica killed
with ``ray.kill``, is measured under load by the fault suite
(``tests/faults/test_replica_kill.py``; figures in docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from attune import storage
from attune.errors import NotFound
from tests.conftest import wait_for
from tests.histories import make_history, write_history

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

_REGISTER = """
import sys
from attune.registry import Registry
files = {f"part-{i:05d}.bin": bytes([i % 251]) * 4096 for i in range(int(sys.argv[2]))}
Registry(sys.argv[1]).register(files, metadata={"name": "killed mid-write"})
"""


@contextmanager
def _frozen_when(
    command: list[str], landed: Callable[[], object], *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command``; SIGSTOP it once ``landed()`` is truthy; SIGKILL it on exit."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def caught() -> bool:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"the writer ended before it was caught mid-write: {stderr[-2000:]}")
            return bool(landed())

        wait_for(caught, timeout=240, interval=0.005, what="the writer's first file")
        os.kill(process.pid, signal.SIGSTOP)
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("ray_cluster")  # the session's S3 server and cluster
    return request.getfixturevalue("s3_bucket")


def test_a_registry_writer_killed_mid_version_leaves_no_version(root: str) -> None:
    from attune.registry import Registry

    uri = storage.join(root, "registry")
    registry = Registry(uri)
    kept = registry.register({"model.onnx": b"kept"}, metadata={"name": "before"})
    versions_dir = storage.join(uri, "versions")

    def partial() -> list[str]:
        return [u for u in storage.list_uris(versions_dir) if kept not in u]

    n_files = 400 if storage.is_s3(root) else 4000
    command = [sys.executable, "-c", _REGISTER, uri, str(n_files)]
    with _frozen_when(command, partial):
        written = partial()
        version = written[0][len(versions_dir) + 1 :].split("/")[0]
        assert len(written) < n_files and not any(u.endswith("MANIFEST.json") for u in written)
        assert [v.version for v in registry.versions()] == [kept]  # while the writer is frozen
    left = partial()  # after the kill
    assert left and not any(u.endswith("MANIFEST.json") for u in left)
    assert [v.version for v in registry.versions()] == [kept]
    with pytest.raises(NotFound):
        registry.resolve(version)
    with pytest.raises(NotFound):
        registry.read(version, "part-00000.bin")
    assert registry.read(kept, "model.onnx") == b"kept"


def test_preprocess_killed_mid_write_leaves_no_readable_split(
    root: str, ray_cluster: object, tmp_path: Path
) -> None:
    from attune.training.dataset import load_dataset

    histories = write_history(make_history(borrowers=120, months=6, seed=3), str(tmp_path / "h"))
    out = storage.join(root, "dataset")
    parent = out.rsplit("/", 1)[0]

    def output_files() -> list[str]:
        if storage.is_s3(out):
            return [u for u in storage.list_uris(out) if u.endswith(".parquet")]
        staged = Path(parent).glob(".dataset.staging-*/**/*.parquet")
        return [str(p) for p in staged] + [str(p) for p in Path(out).rglob("*.parquet")]

    command = [sys.executable, "-m", "attune.cli", "preprocess", "--histories", histories,
               "--out", out, "--buckets", "4", "--partitions", "2"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}  # type: ignore[attr-defined]
    with _frozen_when(command, output_files, env=env):
        assert output_files()
        _assert_unreadable(out, load_dataset)  # while the writer is frozen mid-write
    _assert_unreadable(out, load_dataset)  # after the kill
    if storage.is_s3(out):
        assert output_files()  # the files are there, uncommitted
    else:
        assert not Path(out).exists()  # staged beside, never moved into place


def _assert_unreadable(out: str, load_dataset: Callable[..., object]) -> None:
    with pytest.raises(NotFound):
        load_dataset(out)
    for split in ("train", "valid", "test"):
        assert not storage.is_complete(storage.join(out, split)), split
