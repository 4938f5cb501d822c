"""The model registry on ``s3://`` against moto's standalone S3 server over HTTP (no Ray)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from attune import storage
from attune.cli import main
from attune.errors import (
    AliasNotFound,
    ArtifactCorrupted,
    GateRefused,
    VersionExists,
    VersionNotFound,
)
from attune.governance.gates.decision import GateDecision
from attune.registry import Registry
from attune.registry.models import MANIFEST, VERSION_ID

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 1, 22, 33, tzinfo=UTC)
FILES = {
    "model.onnx": b"onnx-bytes" * 100,
    "model.ubj": b"native-bytes",
    "fairness.json": json.dumps({"max_gap": 0.01}).encode(),
    "metrics.json": json.dumps({"ndcg@3": 0.7}).encode(),
}


def _step_clock() -> Any:
    ticks = iter(range(10_000))
    lock = threading.Lock()

    def _now() -> datetime:
        with lock:
            return T0 + timedelta(seconds=next(ticks))

    return _now


def _gate(passed: bool, seen: list[Mapping[str, Any]] | None = None) -> Any:
    def _check(report: Mapping[str, Any]) -> GateDecision:
        if seen is not None:
            seen.append(report)
        reasons = () if passed else ("gap 0.3 > 0.1",)
        return GateDecision(gate="fairness", passed=passed, reasons=reasons)

    return _check


def _key(uri: str) -> tuple[str, str]:
    return storage.split_s3(uri)


@pytest.fixture
def registry(s3_bucket: str) -> Registry:
    return Registry(f"{s3_bucket}/models/registry", clock=_step_clock())


@pytest.fixture
def frozen(s3_bucket: str) -> Registry:
    return Registry(f"{s3_bucket}/models/registry", clock=lambda: T0)


def test_versions_round_trip_through_s3_with_the_contract_layout(registry: Registry) -> None:
    version = registry.register(FILES, metadata={"objective": "rank:ndcg"})
    assert VERSION_ID.fullmatch(version)
    bucket, prefix = _key(registry.uri)
    listed = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    keys = {obj["Key"][len(prefix) + 1 :] for obj in listed}
    assert keys == {f"versions/{version}/{name}" for name in [*FILES, MANIFEST]}
    assert [v.version for v in registry.versions()] == [version]
    assert registry.get(version).metadata == {"objective": "rank:ndcg"}
    for name, data in FILES.items():
        assert registry.read(version, name) == data


def test_existing_version_is_refused(frozen: Registry) -> None:
    version = frozen.register(FILES, metadata={})
    with pytest.raises(VersionExists) as caught:
        frozen.register(FILES, metadata={})
    assert caught.value.version == version


def test_register_never_overwrites_an_object_another_writer_created(
    s3_bucket: str, tmp_path: Path
) -> None:
    version = Registry(str(tmp_path / "probe"), clock=lambda: T0).register(FILES, metadata={})
    target = Registry(f"{s3_bucket}/reg", clock=lambda: T0)
    squatter = storage.join(target.uri, "versions", version, "fairness.json")
    storage.write_bytes(squatter, b"someone else's")
    with pytest.raises(VersionExists):
        target.register(FILES, metadata={})
    assert storage.read_bytes(squatter) == b"someone else's"
    assert target.versions() == []


@pytest.mark.parametrize("same_content", [True, False], ids=["same-content", "distinct-content"])
def test_concurrent_writers_never_corrupt_a_version(frozen: Registry, same_content: bool) -> None:
    """Two threads registering at once: distinct ids, or exactly one VersionExists."""
    results: dict[int, str | Exception] = {}
    barrier = threading.Barrier(2)

    def _writer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = frozen.register(FILES, metadata={} if same_content else {"writer": i})
        except VersionExists as exc:
            results[i] = exc

    threads = [threading.Thread(target=_writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = sorted(r for r in results.values() if isinstance(r, str))
    refused = [r for r in results.values() if isinstance(r, VersionExists)]
    assert (len(set(ids)), len(refused)) == ((1, 1) if same_content else (2, 0))
    assert sorted(info.version for info in frozen.versions()) == ids
    for version in ids:
        for name, data in FILES.items():
            assert frozen.read(version, name) == data


def test_version_without_manifest_is_invisible(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    bucket, key = _key(storage.join(registry.uri, "versions", version, MANIFEST))
    storage.s3_client().delete_object(Bucket=bucket, Key=key)
    assert registry.versions() == []
    with pytest.raises(VersionNotFound):
        registry.read(version, "model.onnx")


def test_writer_dying_before_the_manifest_leaves_nothing_visible(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = storage.write_bytes

    def _dying_write(uri: str, data: bytes, *, overwrite: bool = True) -> None:
        if uri.endswith(MANIFEST):
            raise OSError("connection reset")
        real_write(uri, data, overwrite=overwrite)

    monkeypatch.setattr(storage, "write_bytes", _dying_write)
    with pytest.raises(OSError):
        registry.register(FILES, metadata={})
    assert len(storage.list_uris(registry.uri)) == len(FILES)
    assert registry.versions() == []


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[:-5], "bytes"),
        (lambda data: b"X" + data[1:], "bytes"),
        (None, "missing"),
    ],
    ids=["truncated", "altered-same-size", "missing"],
)
def test_read_detects_a_corrupted_object(registry: Registry, damage: Any, problem: str) -> None:
    version = registry.register(FILES, metadata={})
    uri = storage.join(registry.uri, "versions", version, "model.onnx")
    bucket, key = _key(uri)
    if damage is None:
        storage.s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        storage.write_bytes(uri, damage(storage.read_bytes(uri)))
    with pytest.raises(ArtifactCorrupted) as caught:
        registry.read(version, "model.onnx")
    assert caught.value.uri == uri and problem in caught.value.problem
    assert registry.read(version, "model.ubj") == FILES["model.ubj"]


def test_download_from_s3_to_a_local_directory(registry: Registry, tmp_path: Path) -> None:
    version = registry.register(FILES, metadata={})
    dest = registry.download(version, tmp_path / version)
    assert {p.name for p in dest.iterdir()} == {*FILES, MANIFEST}
    assert (dest / "model.onnx").read_bytes() == FILES["model.onnx"]


def test_aliases_move_with_gate_override_and_history(registry: Registry) -> None:
    a = registry.register(FILES, metadata={"run": 1})
    b = registry.register(FILES, metadata={"run": 2})
    with pytest.raises(AliasNotFound):
        registry.resolve("champion")
    seen: list[Mapping[str, Any]] = []
    registry.set_alias("champion", a, by="ana", gate=_gate(True, seen))
    assert seen == [{"max_gap": 0.01}] and registry.resolve("champion") == a
    with pytest.raises(GateRefused):
        registry.set_alias("champion", b, by="bo", gate=_gate(False))
    assert registry.resolve("champion") == a
    move = registry.set_alias(
        "champion", b, by="bo", override=True, justification="signed off", gate=_gate(False)
    )
    assert move.override and move.previous == a
    assert registry.aliases() == {"champion": b}
    bucket, key = _key(storage.join(registry.uri, "aliases", "champion.json"))
    stored = json.loads(storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert stored["version"] == b and stored["justification"] == "signed off"
    history = registry.history(alias="champion")
    assert [(m.version, m.override) for m in history] == [(a, False), (b, True)]


def test_cli_lists_and_shows_an_s3_registry(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    version = registry.register(FILES, metadata={})
    assert main(["registry", "alias", "shadow", version, "--registry", registry.uri]) == 0
    capsys.readouterr()
    assert main(["registry", "list", "--registry", registry.uri, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["version"], row["aliases"]) == (version, ["shadow"])
    assert main(["registry", "show", "shadow", "--registry", registry.uri]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"ndcg@3": 0.7}
