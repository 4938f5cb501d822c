"""The model registry on a local directory: versions, integrity, aliases, gate, CLI."""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from attune.cli import main
from attune.errors import (
    AliasNotFound,
    ArtifactCorrupted,
    ConfigError,
    GateRefused,
    StoreNotFound,
    VersionExists,
    VersionNotFound,
)
from attune.governance.gates.decision import GateDecision
from attune.governance.gates.promotion import check_promotion, fairness_gate
from attune.registry import Registry
from attune.registry.models import MANIFEST, VERSION_ID

T0 = datetime(2026, 11, 28, 1, 22, 33, tzinfo=UTC)
FILES = {
    "model.onnx": b"onnx-bytes",
    "model.ubj": b"native-bytes",
    "fairness.json": json.dumps({"max_gap": 0.01}).encode(),
    "metrics.json": json.dumps({"ndcg@3": 0.71, "policy_value": {"model": 0.4}}).encode(),
    "reports/ndcg.png": b"\x89PNG",
}


class StepClock:
    """A clock that returns ``start``, then one second later on every call."""

    def __init__(self, start: datetime = T0, *, step: timedelta = timedelta(seconds=1)) -> None:
        self._now = start - step
        self._step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += self._step
            return self._now


@dataclass
class FakeGate:
    """A promotion gate that records the reports it saw and answers ``passed``."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    seen: list[Mapping[str, Any]] = field(default_factory=list)

    def __call__(self, fairness_report: Mapping[str, Any]) -> GateDecision:
        self.seen.append(fairness_report)
        return GateDecision(gate="fairness", passed=self.passed, reasons=tuple(self.reasons))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"), clock=StepClock())


@pytest.fixture
def frozen(tmp_path: Path) -> Registry:
    """A registry whose clock never moves: every registration lands in the same second."""
    return Registry(str(tmp_path / "registry"), clock=lambda: T0)


# --------------------------------------------------------------------------- versions


def test_register_round_trips_files_and_metadata(registry: Registry) -> None:
    version = registry.register(FILES, metadata={"objective": "rank:ndcg"})
    assert VERSION_ID.fullmatch(version) and version.startswith("v20261128-012233-")
    info = registry.get(version)
    assert info.metadata == {"objective": "rank:ndcg"}
    assert set(info.files) == set(FILES)
    assert info.size == sum(len(v) for v in FILES.values())
    for name, data in FILES.items():
        assert registry.read(version, name) == data
    assert [v.version for v in registry.versions()] == [version]


def test_version_ids_sort_by_time_and_differ_by_content(frozen: Registry, tmp_path: Path) -> None:
    a = frozen.register(FILES, metadata={"run": 1})
    b = frozen.register(FILES, metadata={"run": 2})
    assert a != b and a[:-6] == b[:-6]
    later = Registry(frozen.uri, clock=lambda: T0 + timedelta(days=1))
    c = later.register(FILES, metadata={"run": 1})
    assert [v.version for v in frozen.versions()] == sorted([a, b, c])
    assert frozen.versions()[-1].version == c


def test_same_content_in_the_same_second_is_refused(frozen: Registry) -> None:
    version = frozen.register(FILES, metadata={})
    with pytest.raises(VersionExists) as caught:
        frozen.register(FILES, metadata={})
    assert caught.value.version == version
    assert frozen.read(version, "model.onnx") == FILES["model.onnx"]


def test_register_never_overwrites_a_file_another_writer_created(tmp_path: Path) -> None:
    """A half-written version at the same id (another writer) is refused, not clobbered."""
    probe = Registry(str(tmp_path / "probe"), clock=lambda: T0)
    version = probe.register(FILES, metadata={})
    target = Registry(str(tmp_path / "registry"), clock=lambda: T0)
    squatter = Path(target.uri) / "versions" / version / "fairness.json"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's")
    with pytest.raises(VersionExists):
        target.register(FILES, metadata={})
    assert squatter.read_bytes() == b"someone else's"
    assert target.versions() == []


def test_version_without_manifest_is_invisible(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    (Path(registry.uri) / "versions" / version / MANIFEST).unlink()
    assert registry.versions() == []
    with pytest.raises(VersionNotFound):
        registry.get(version)
    with pytest.raises(VersionNotFound):
        registry.read(version, "model.onnx")


@pytest.mark.parametrize("fail_at", [1, len(FILES)], ids=["first-file", "last-file"])
def test_writer_dying_mid_version_leaves_nothing_visible(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """The manifest is written last: a crash before it leaves no version behind."""
    from attune import storage

    real_write = storage.write_bytes
    writes: list[str] = []

    def _dying_write(uri: str, data: bytes, *, overwrite: bool = True) -> None:
        writes.append(uri)
        if len(writes) > fail_at:
            raise OSError("disk gone")
        real_write(uri, data, overwrite=overwrite)

    monkeypatch.setattr(storage, "write_bytes", _dying_write)
    with pytest.raises(OSError):
        registry.register(FILES, metadata={})
    assert writes[-1].endswith(MANIFEST) == (fail_at == len(FILES))
    assert registry.versions() == []


@pytest.mark.parametrize("same_content", [True, False], ids=["same-content", "distinct-content"])
def test_concurrent_writers_never_corrupt_a_version(frozen: Registry, same_content: bool) -> None:
    """Two threads registering at once: distinct ids, or exactly one VersionExists."""
    results: dict[int, str | Exception] = {}
    barrier = threading.Barrier(2)
    big = {name: data * 20_000 for name, data in FILES.items()}

    def _writer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = frozen.register(big, metadata={} if same_content else {"writer": i})
        except VersionExists as exc:
            results[i] = exc

    threads = [threading.Thread(target=_writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = [r for r in results.values() if isinstance(r, str)]
    refused = [r for r in results.values() if isinstance(r, VersionExists)]
    if same_content:
        assert len(ids) == 1 and len(refused) == 1
    else:
        assert len(set(ids)) == 2 and not refused
    for info in frozen.versions():
        for name in info.files:
            assert frozen.read(info.version, name) == big[name]
    assert sorted(info.version for info in frozen.versions()) == sorted(ids)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-3]), "bytes"),
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "bytes"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "altered-same-size", "missing"],
)
def test_read_detects_a_corrupted_file(registry: Registry, damage: Any, problem: str) -> None:
    version = registry.register(FILES, metadata={})
    path = Path(registry.uri) / "versions" / version / "model.onnx"
    damage(path)
    with pytest.raises(ArtifactCorrupted) as caught:
        registry.read(version, "model.onnx")
    assert caught.value.uri.endswith(f"{version}/model.onnx")
    assert problem in caught.value.problem
    assert registry.read(version, "model.ubj") == FILES["model.ubj"]
    with pytest.raises(ArtifactCorrupted):
        registry.download(version, path.parent.parent.parent / "dl")


def test_unreadable_manifest_is_reported_and_hidden(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    (Path(registry.uri) / "versions" / version / MANIFEST).write_text('{"version": ')
    with pytest.raises(ArtifactCorrupted) as caught:
        registry.get(version)
    assert caught.value.uri.endswith(f"{version}/{MANIFEST}")
    assert registry.versions() == []


def test_read_of_a_file_not_in_the_version_names_it(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    with pytest.raises(StoreNotFound) as caught:
        registry.read(version, "nope.json")
    assert caught.value.uri.endswith(f"{version}/nope.json")


def test_download_copies_verified_files_and_manifest(registry: Registry, tmp_path: Path) -> None:
    version = registry.register(FILES, metadata={})
    dest = registry.download(version, tmp_path / "cache" / version)
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["version"] == version
    (dest / "model.onnx").write_bytes(b"stale")
    registry.download(version, dest)
    assert (dest / "model.onnx").read_bytes() == FILES["model.onnx"]


@pytest.mark.parametrize(
    ("files", "metadata", "field"),
    [
        ({"../escape": b"x"}, {}, "files"),
        ({"/abs": b"x"}, {}, "files"),
        ({"a/../b": b"x"}, {}, "files"),
        ({".hidden": b"x"}, {}, "files"),
        ({"": b"x"}, {}, "files"),
        ({MANIFEST: b"x"}, {}, "files"),
        ({}, {}, "files"),
        ({"model.onnx": "not bytes"}, {}, "model.onnx"),
        ({"model.onnx": b"x"}, {"when": object()}, "metadata"),
        ({"model.onnx": b"x"}, {"auc": float("nan")}, "metadata"),
    ],
)
def test_register_rejects_bad_input(
    registry: Registry, files: dict[str, Any], metadata: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        registry.register(files, metadata=metadata)
    assert caught.value.field == field
    assert registry.versions() == []


# --------------------------------------------------------------------------- aliases


def test_alias_moves_atomically_and_logs_history(registry: Registry) -> None:
    a = registry.register(FILES, metadata={"run": 1})
    b = registry.register(FILES, metadata={"run": 2})
    first = registry.set_alias("shadow", a, by="ana")
    assert first.previous is None and first.gate is None
    assert registry.resolve("shadow") == a
    second = registry.set_alias("shadow", b, by="bo", justification="newer")
    assert second.previous == a
    assert registry.resolve("shadow") == b
    assert registry.aliases() == {"shadow": b}
    history = registry.history(alias="shadow")
    assert [(m.version, m.by) for m in history] == [(a, "ana"), (b, "bo")]
    assert [m.version for m in registry.history(version=a)] == [a, b]
    assert registry.get("shadow").version == b


def test_alias_can_copy_another_alias(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    registry.set_alias("canary", version, by="ana", gate=FakeGate(passed=True))
    move = registry.set_alias("champion", "canary", by="ana", gate=FakeGate(passed=True))
    assert move.version == version and registry.resolve("champion") == version


@pytest.mark.parametrize("alias", ["prod", "Champion", "", "champion "])
def test_bad_alias_names_are_refused(registry: Registry, alias: str) -> None:
    version = registry.register(FILES, metadata={})
    with pytest.raises(ConfigError) as caught:
        registry.set_alias(alias, version, by="ana")
    assert caught.value.field == "alias" and caught.value.value == alias
    assert registry.aliases() == {}


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("champion", AliasNotFound),
        ("v20990101-000000-abcdef", VersionNotFound),
        ("prod", VersionNotFound),
        ("../../etc", VersionNotFound),
    ],
)
def test_resolve_refuses_unknown_refs(registry: Registry, ref: str, error: type) -> None:
    registry.register(FILES, metadata={})
    with pytest.raises(error):
        registry.resolve(ref)


def test_promotion_runs_the_gate_on_the_versions_fairness_report(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    gate = FakeGate(passed=True)
    move = registry.set_alias("champion", version, by="ana", gate=gate)
    assert gate.seen == [{"max_gap": 0.01}]
    assert move.gate is not None and move.gate.passed and not move.override
    assert registry.alias("champion").gate == move.gate


@pytest.mark.parametrize("alias", ["champion", "canary"])
def test_gate_refusal_blocks_the_move(registry: Registry, alias: str) -> None:
    version = registry.register(FILES, metadata={})
    with pytest.raises(GateRefused) as caught:
        registry.set_alias(alias, version, by="ana", gate=FakeGate(False, ["gap 0.3 > 0.1"]))
    assert caught.value.reasons == ["gap 0.3 > 0.1"] and caught.value.version == version
    assert registry.aliases() == {} and registry.history() == []


def test_override_with_justification_is_recorded(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    move = registry.set_alias(
        "champion",
        version,
        by="ana",
        override=True,
        justification="incident 42: roll forward",
        gate=FakeGate(False, ["gap 0.3 > 0.1"]),
    )
    assert move.override and move.gate is not None and not move.gate.passed
    (logged,) = registry.history(version=version)
    assert logged.override and logged.justification == "incident 42: roll forward"
    assert logged.gate is not None and logged.gate.reasons == ("gap 0.3 > 0.1",)


@pytest.mark.parametrize("justification", [None, "", "   "])
def test_override_without_justification_is_refused(
    registry: Registry, justification: str | None
) -> None:
    version = registry.register(FILES, metadata={})
    with pytest.raises(ConfigError) as caught:
        registry.set_alias(
            "champion",
            version,
            by="ana",
            override=True,
            justification=justification,
            gate=FakeGate(False),
        )
    assert "justification" in caught.value.problem
    assert registry.aliases() == {}


def test_promotion_without_fairness_report_is_refused(registry: Registry) -> None:
    bare = registry.register({"model.onnx": b"x"}, metadata={})
    with pytest.raises(GateRefused, match=r"has no fairness\.json"):
        registry.set_alias("canary", bare, by="ana", gate=FakeGate(passed=True))


def test_shadow_is_never_gated(registry: Registry) -> None:
    version = registry.register({"model.onnx": b"x"}, metadata={})
    gate = FakeGate(passed=False)
    assert registry.set_alias("shadow", version, by="ana", gate=gate).gate is None
    assert gate.seen == []


def _fairness_report(b_share: float) -> dict[str, Any]:
    """A real fairness report: group a always sees payment_plan first, group b in ``b_share``."""
    import numpy as np
    import pandas as pd

    from attune.governance.fairness import fairness_report

    n = 120
    qid = np.repeat(np.arange(n), 2)
    group = np.where(np.arange(n) % 2 == 0, "a", "b")
    flipped = np.zeros(n, dtype=bool)
    b_rows = np.flatnonzero(group == "b")
    flipped[b_rows[round(b_share * len(b_rows)) :]] = True
    scores = np.where(np.repeat(flipped, 2), np.tile([0.0, 1.0], n), np.tile([1.0, 0.0], n))
    return fairness_report(
        scores=scores,
        qid=qid,
        option_ids=np.tile(["payment_plan", "pay_now"], n),
        labels=np.tile([1, 0], n),
        borrower_ids=qid,
        protected=pd.DataFrame({"borrower_id": np.arange(n), "gender": group}),
        n_bootstrap=0,
    )


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    """Fairness reports that the governance gate's default bounds pass / refuse."""
    return {share: _fairness_report(value) for share, value in REPORT_SHARES.items()}


REPORT_SHARES = {"fair": 1.0, "mild": 0.95, "biased": 0.0}


def _with_report(report: dict[str, Any]) -> dict[str, bytes]:
    return {**FILES, "fairness.json": json.dumps(report).encode()}


def test_default_gate_is_the_governance_fairness_gate(
    registry: Registry, reports: dict[str, dict[str, Any]]
) -> None:
    fair = registry.register(_with_report(reports["fair"]), metadata={})
    move = registry.set_alias("canary", fair, by="ana")
    assert move.gate is not None and move.gate.passed
    biased = registry.register(_with_report(reports["biased"]), metadata={})
    with pytest.raises(GateRefused, match="exposure of payment_plan") as caught:
        registry.set_alias("champion", biased, by="ana")
    assert caught.value.gate == "fairness" and caught.value.version == biased
    assert registry.aliases() == {"canary": fair}


def test_invalid_fairness_report_is_a_refusal_that_can_be_overridden(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    with pytest.raises(GateRefused, match=r"invalid fairness\.json"):
        registry.set_alias("champion", version, by="ana")
    move = registry.set_alias(
        "champion", version, by="ana", override=True, justification="report rebuilt offline"
    )
    assert move.override and move.gate is not None
    assert "invalid fairness.json" in move.gate.reasons[0]


def test_gate_bounds_come_from_the_gate_config(
    registry: Registry, reports: dict[str, dict[str, Any]]
) -> None:
    version = registry.register(_with_report(reports["mild"]), metadata={})
    strict = fairness_gate({"min_exposure_ratio": 0.97, "warn_exposure_ratio": 0.99})
    with pytest.raises(GateRefused, match=r"below 0\.97"):
        registry.set_alias("canary", version, by="ana", gate=strict)
    assert registry.set_alias("canary", version, by="ana").version == version
    with pytest.raises(ConfigError) as caught:
        fairness_gate({"min_exposure_ratio": 2})
    assert caught.value.field == "min_exposure_ratio"


def test_a_missing_fairness_report_is_a_refusal(registry: Registry) -> None:
    version = registry.register(FILES, metadata={})
    decision = check_promotion(version=version, fairness_report=None)
    assert decision == GateDecision(
        gate="fairness", passed=False, reasons=(f"version {version} has no fairness.json",)
    )


@pytest.mark.parametrize(
    "returned", [types.SimpleNamespace(passed=True, reasons=()), {"passed": True}, True]
)
def test_a_gate_must_return_a_gate_decision(returned: Any) -> None:
    with pytest.raises(TypeError):
        check_promotion(version="v1", fairness_report=b"{}", gate=lambda report: returned)


def test_an_alias_file_keeps_gate_passed_and_reasons(
    registry: Registry, reports: dict[str, dict[str, Any]]
) -> None:
    fair = registry.register(_with_report(reports["fair"]), metadata={})
    registry.set_alias("canary", fair, by="ana")
    stored = json.loads((Path(registry.uri) / "aliases" / "canary.json").read_text())
    assert set(stored["gate"]) == {"gate", "passed", "reasons"}
    assert registry.alias("canary").gate == GateDecision.model_validate(stored["gate"])


# --------------------------------------------------------------------------- CLI


def test_cli_list_show_and_alias(
    registry: Registry, reports: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    version = registry.register(_with_report(reports["fair"]), metadata={"objective": "x"})
    assert main(["registry", "alias", "canary", version, "--registry", registry.uri]) == 0
    move = json.loads(capsys.readouterr().out)
    assert move["version"] == version and move["by"]
    assert main(["registry", "list", "--registry", registry.uri, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["version"] == version and row["aliases"] == ["canary"]
    assert main(["registry", "show", "canary", "--registry", registry.uri]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == {"ndcg@3": 0.71, "policy_value.model": 0.4}
    assert shown["aliases"] == ["canary"] and len(shown["alias_history"]) == 1
    assert main(["registry", "list", "--registry", registry.uri]) == 0
    assert version in capsys.readouterr().out


def test_cli_refusal_and_override(
    registry: Registry, reports: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    version = registry.register(_with_report(reports["biased"]), metadata={})
    args = ["registry", "alias", "champion", version, "--registry", registry.uri, "--by", "ana"]
    assert main(["--json-errors", *args]) == 6  # refused by a gate
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["error"] == "GateRefused"
    assert main([*args, "--override"]) == 4  # invalid input: no justification
    assert "justification" in capsys.readouterr().err
    assert main([*args, "--override", "--justification", "board sign-off"]) == 0
    assert json.loads(capsys.readouterr().out)["override"] is True
    assert registry.alias("champion").by == "ana"


def test_cli_defaults_to_the_store_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from attune.settings import get_settings

    monkeypatch.setenv("ATTUNE_STORE", str(tmp_path / "store"))
    get_settings.cache_clear()
    try:
        version = Registry(str(tmp_path / "store" / "registry")).register(FILES, metadata={})
        assert main(["registry", "list", "--json"]) == 0
        assert [r["version"] for r in json.loads(capsys.readouterr().out)] == [version]
        assert main(["--json-errors", "registry", "show", "champion"]) == 5
        assert "AliasNotFound" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_cli_gate_config_sets_the_bounds(
    registry: Registry,
    reports: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    version = registry.register(_with_report(reports["mild"]), metadata={})
    strict = tmp_path / "strict.yaml"
    strict.write_text("min_exposure_ratio: 0.97\nwarn_exposure_ratio: 0.99\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("min_exposure_ratio: [unclosed\n")
    args = ["registry", "alias", "canary", version, "--registry", registry.uri]
    assert main(["--json-errors", *args, "--gate-config", str(strict)]) == 6
    assert "GateRefused" in capsys.readouterr().err
    assert main(["--json-errors", *args, "--gate-config", str(broken)]) == 4
    assert '"field": "--gate-config"' in capsys.readouterr().err
    assert main(args) == 0
    assert registry.resolve("canary") == version
