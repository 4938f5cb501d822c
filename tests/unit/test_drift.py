"""Drift: quantile reference bins, PSI per feature with flags, Prometheus export, monitor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from attune.errors import FeatureSpecMismatch, InvalidInput
from attune.governance.drift import (
    drift_reference,
    export_ray_gauges,
    prometheus_text,
    psi_report,
)

NAMES = ("days_past_due", "autopay_on", "contacts_30d", "apr", "balance")


def _population(n: int, seed: int, shift: str | None = None) -> np.ndarray:
    """Borrower-like features; ``shift`` moves one feature's distribution."""
    rng = np.random.default_rng(seed)
    days = rng.exponential(10.0, n)
    autopay = (rng.uniform(size=n) < 0.3).astype(float)
    contacts = rng.poisson(2.0, n).astype(float)
    apr = rng.normal(0.18, 0.04, n)
    balance = rng.lognormal(8.0, 0.5, n)
    if shift == "days_past_due":
        days = rng.exponential(25.0, n)
    elif shift == "autopay_on":
        autopay = (rng.uniform(size=n) < 0.6).astype(float)
    elif shift == "contacts_30d":
        contacts = rng.poisson(4.0, n).astype(float)
    elif shift == "apr":
        apr = rng.normal(0.22, 0.04, n)  # one standard deviation up
    elif shift == "balance":
        balance = rng.lognormal(8.0, 1.0, n)  # same median, twice the spread
    return np.column_stack([days, autopay, contacts, apr, balance])


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return drift_reference(_population(20_000, seed=0), NAMES, bins=10, spec_hash="abc123")


def test_reference_bins_are_quantiles_with_one_bin_per_discrete_value(
    reference: dict[str, Any],
) -> None:
    days = reference["features"]["days_past_due"]
    assert len(days["edges"]) == 9
    np.testing.assert_allclose(days["proportions"][:-1], 0.1, atol=1e-3)
    autopay = reference["features"]["autopay_on"]
    assert autopay["edges"] == [0.0, 1.0]  # bins: <=0, (0, 1], >1
    assert autopay["proportions"][0] == pytest.approx(0.7, abs=0.02)
    for entry in reference["features"].values():
        assert sum(entry["proportions"]) == pytest.approx(1.0)
        assert entry["proportions"][-1] == 0.0  # no missing values in training
    assert reference["spec_hash"] == "abc123"
    json.dumps(reference)  # stored as drift_reference.json


def test_unshifted_traffic_stays_below_the_warn_threshold(reference: dict[str, Any]) -> None:
    report = psi_report(reference, _population(3_000, seed=1))
    assert report["status"] == "ok"
    assert report["max_psi"] < 0.1
    assert report["flagged"] == {"warn": [], "alert": []}


@pytest.mark.parametrize("shifted", NAMES)
def test_a_shifted_feature_is_flagged_above_the_alert_threshold(
    reference: dict[str, Any], shifted: str
) -> None:
    report = psi_report(reference, _population(3_000, seed=2, shift=shifted))
    assert report["features"][shifted]["psi"] > 0.25
    assert report["flagged"]["alert"] == [shifted]
    assert report["status"] == "alert"
    for name in NAMES:
        if name != shifted:
            assert report["features"][name]["psi"] < 0.1


def test_psi_matches_the_formula_on_a_hand_example() -> None:
    ref = drift_reference(np.array([[0.0], [0.0], [1.0], [1.0]]), ["x"], bins=2)
    assert ref["features"]["x"]["edges"] == [0.5]
    report = psi_report(ref, np.array([[0.0], [1.0], [1.0], [1.0]]), min_rows=1)
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert report["features"]["x"]["psi"] == pytest.approx(expected, rel=1e-6)
    assert report["features"]["x"]["status"] == "alert"  # 0.275


def test_missing_values_have_their_own_bin(reference: dict[str, Any]) -> None:
    served = _population(3_000, seed=1)
    served[: len(served) // 2, 3] = np.nan  # half the APRs are missing
    report = psi_report(reference, served)
    assert report["features"]["apr"]["served"][-1] == pytest.approx(0.5)
    assert report["flagged"]["alert"] == ["apr"]


def test_few_rows_make_the_report_insufficient(reference: dict[str, Any]) -> None:
    report = psi_report(reference, _population(50, seed=1), min_rows=100)
    assert report["status"] == "insufficient"
    assert report["n_rows"] == 50


def test_a_dataframe_is_read_by_column_name(reference: dict[str, Any]) -> None:
    frame = pd.DataFrame(_population(2_000, seed=1), columns=NAMES)
    shuffled = frame[list(reversed(NAMES))]
    by_array = psi_report(reference, frame.to_numpy())
    by_frame = psi_report(reference, shuffled)
    assert by_frame["features"] == by_array["features"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda ref: psi_report(ref, np.zeros((10, 4))), FeatureSpecMismatch),
        (lambda ref: psi_report(ref, pd.DataFrame({"apr": [0.1]})), FeatureSpecMismatch),
        (lambda ref: psi_report(ref, np.zeros((10, 5)), warn=0.3, alert=0.2), InvalidInput),
        (lambda ref: psi_report({"features": {}}, np.zeros((10, 5))), InvalidInput),
        (
            lambda ref: psi_report(
                {
                    **ref,
                    "features": {**ref["features"], "apr": {"edges": [1.0], "proportions": [1]}},
                },
                np.zeros((10, 5)),
            ),
            InvalidInput,
        ),
        (lambda ref: drift_reference(np.zeros((10, 5)), NAMES, bins=1), InvalidInput),
        (lambda ref: drift_reference(np.zeros((0, 5)), NAMES), InvalidInput),
    ],
    ids=[
        "width",
        "missing-columns",
        "warn-above-alert",
        "no-feature-names",
        "edges-vs-proportions",
        "one-bin",
        "no-rows",
    ],
)
def test_bad_input_is_refused(reference: dict[str, Any], call: Any, error: type) -> None:
    with pytest.raises(error):
        call(reference)


def test_prometheus_text_carries_one_psi_gauge_per_feature(reference: dict[str, Any]) -> None:
    report = psi_report(reference, _population(3_000, seed=2, shift="apr"))
    text = prometheus_text(report, model_version="v20250101-000000-abcdef")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.labels["feature"]: s.value for s in families["attune_feature_psi"].samples}
    assert samples == pytest.approx({n: report["features"][n]["psi"] for n in NAMES})
    assert families["attune_drift_rows"].samples[0].value == 3_000
    assert families["attune_drift_max_psi"].samples[0].labels == {
        "model_version": "v20250101-000000-abcdef"
    }


def test_ray_gauges_are_skipped_without_ray(
    reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a connected Ray (whatever ran earlier in this process) no gauge is set."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    report = psi_report(reference, _population(200, seed=1))
    assert export_ray_gauges(report, model_version="v1") is False


# --------------------------------------------------------------------------- the monitor


def _registered(tmp_path: Path, reference: dict[str, Any]) -> tuple[str, str]:
    """A real registry with one version holding ``reference``; shadow points at it."""
    from attune.registry.store import Registry

    registry = Registry(str(tmp_path / "registry"))
    version = registry.register(
        {"drift_reference.json": json.dumps(reference).encode()}, metadata={}
    )
    registry.set_alias("shadow", version, by="test")
    return registry.uri, version


def _log(root: Path, version: str, rows: np.ndarray, *, day: datetime, spec: str) -> None:
    """Decisions of 8 candidates each, written by the serving stage's own writer."""
    from attune.serving.decision_log import DecisionRecord, ParquetSink, records_to_table

    records = []
    for i in range(0, len(rows) - 7, 8):
        vectors = tuple(tuple(float(v) for v in row) for row in rows[i : i + 8])
        records.append(
            DecisionRecord(
                decision_id=f"d{i}",
                ts=day,
                role="primary",
                borrower_hash=f"h{i}",
                arm="champion",
                model_version=version,
                feature_spec_hash=spec,
                touchpoint="app",
                feature_source="request",
                candidates=("pay_now",) * 8,
                features=vectors,
                scores=(0.0,) * 8,
                returned_order=("pay_now",) * 8,
                propensities=None,
                latency_ms=1.0,
            )
        )
    ParquetSink(str(root)).write(
        records_to_table(records), date=f"{day:%Y-%m-%d}", name=f"{version[-6:]}-{day:%d}"
    )


def test_monitor_flags_shifted_traffic_of_the_version_only(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    from attune.cli import main

    registry, version = _registered(tmp_path, reference)
    day1 = datetime(2025, 3, 1, 12, tzinfo=UTC)
    day2 = day1 + timedelta(days=1)
    _log(tmp_path, version, _population(1_600, seed=1), day=day1, spec="abc123")
    _log(tmp_path, version, _population(1_600, seed=2, shift="apr"), day=day2, spec="abc123")
    _log(
        tmp_path,
        "v20990101-000000-ffffff",
        _population(800, seed=3, shift="balance"),
        day=day2,
        spec="abc123",
    )
    decisions = str(tmp_path / "decisions")
    out = tmp_path / "report"

    base = ["monitor", "drift", "--registry", registry, "--decisions", decisions]
    assert (
        main([*base, "--version", "shadow", "--until", "2025-03-01", "--out", str(out / "a")]) == 0
    )
    calm = json.loads((out / "a" / "drift.json").read_text())
    assert calm["version"] == version and calm["n_rows"] == 1_600
    assert calm["status"] == "ok"

    status = main(
        [
            *base,
            "--version",
            version,
            "--since",
            "2025-03-02",
            "--out",
            str(out / "b"),
            "--fail-on-alert",
        ]
    )
    assert status == 3
    shifted = json.loads((out / "b" / "drift.json").read_text())
    assert shifted["flagged"]["alert"] == ["apr"]  # the other version's balance shift is not read
    assert (out / "b" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert "attune_feature_psi" in (out / "b" / "drift.prom").read_text()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--version", "champion"], "AliasNotFound"),
        (["--version", "v20000101-000000-000000"], "VersionNotFound"),
        (["--version", "shadow", "--since", "yesterday"], "ConfigError"),
        (["--version", "shadow", "--since", "2025-03-05", "--until", "2025-03-01"], "ConfigError"),
        (["--version", "shadow", "--warn", "0.3"], "ConfigError"),
        (["--version", "shadow", "--since", "2030-01-01"], "InvalidInput"),
    ],
    ids=[
        "unset-alias",
        "unknown-version",
        "bad-date",
        "until-before-since",
        "warn-above-alert",
        "empty-window",
    ],
)
def test_monitor_errors_name_what_is_wrong(
    tmp_path: Path,
    reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    error: str,
) -> None:
    from attune.cli import main

    registry, version = _registered(tmp_path, reference)
    _log(
        tmp_path,
        version,
        _population(160, seed=1),
        day=datetime(2025, 3, 1, tzinfo=UTC),
        spec="abc123",
    )
    decisions = str(tmp_path / "decisions")
    argv = ["monitor", "drift", "--registry", registry, "--decisions", decisions, *args]
    status = main(["--json-errors", *argv])
    assert status == (5 if error.endswith("NotFound") else 4)
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["error"] == error


def test_monitor_refuses_vectors_of_another_feature_spec(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    from attune.monitoring.drift_monitor import drift_config, run_drift_monitor

    registry, version = _registered(tmp_path, reference)
    _log(
        tmp_path,
        version,
        _population(160, seed=1),
        day=datetime(2025, 3, 1, tzinfo=UTC),
        spec="other",
    )
    config = drift_config(
        registry=registry,
        version=version,
        decisions=str(tmp_path / "decisions"),
        out=str(tmp_path / "o"),
    )
    with pytest.raises(FeatureSpecMismatch, match="other"):
        run_drift_monitor(config)


# --------------------------------------------------------------------------- simulator traffic


def _simulated_features(tmp_path: Path, seed: int) -> pd.DataFrame:
    """Point-in-time borrower features at every presentation of a small simulated history."""
    import pyarrow.dataset as ds

    from attune.data.features import borrower_features
    from attune.simulator.generator import GenerateConfig, generate

    out = tmp_path / f"history-{seed}"
    generate(
        GenerateConfig(borrowers=800, months=4, seed=seed, out=str(out), parallel="local"),
        progress=False,
    )

    def read(table: str) -> pd.DataFrame:
        return ds.dataset(out / table, format="parquet", partitioning="hive").to_table().to_pandas()

    queries = read("presentations")[["borrower_id", "ts"]].drop_duplicates()
    return borrower_features(
        read("events"), queries, borrowers=read("borrowers"), loans=read("loans")
    )


def _poorer_and_less_engaged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shift the simulator's population: half the income, a third of the app engagement."""
    import dataclasses

    from attune.simulator import _shard

    original = _shard.draw_population

    def shifted(*args: Any, **kwargs: Any) -> Any:
        pop = original(*args, **kwargs)
        return dataclasses.replace(pop, income=pop.income * 0.5, engagement=pop.engagement / 3)

    monkeypatch.setattr(_shard, "draw_population", shifted)


def test_simulated_traffic_drifts_only_when_the_simulator_is_shifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attune.data.spec import BORROWER_FEATURES

    reference = drift_reference(_simulated_features(tmp_path, seed=1), BORROWER_FEATURES)
    calm = psi_report(reference, _simulated_features(tmp_path, seed=2))
    assert calm["max_psi"] < 0.1, calm["flagged"]

    _poorer_and_less_engaged(monkeypatch)
    shifted = psi_report(reference, _simulated_features(tmp_path, seed=3))
    for name in ("installment_to_income", "logins_30"):
        assert shifted["features"][name]["psi"] > 0.25
        assert name in shifted["flagged"]["alert"]
    for name in ("apr", "income_volatility"):  # drawn independently of the shift
        assert shifted["features"][name]["psi"] < 0.1


def test_the_drift_job_is_the_cli_command(tmp_path: Path, reference: dict[str, Any]) -> None:
    """jobs/drift.py takes the same arguments and exits 3 on alert, 5 on a missing alias."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "jobs" / "drift.py"
    spec = importlib.util.spec_from_file_location("drift_job", path)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)

    registry, version = _registered(tmp_path, reference)
    day = datetime(2025, 3, 1, tzinfo=UTC)
    _log(tmp_path, version, _population(800, seed=2, shift="contacts_30d"), day=day, spec="abc123")
    args = ["--registry", registry, "--decisions", str(tmp_path / "decisions")]
    out = ["--out", str(tmp_path / "job")]
    assert job.main([*args, "--version", "shadow", *out, "--fail-on-alert"]) == 3
    report = json.loads((tmp_path / "job" / "drift.json").read_text())
    assert report["flagged"]["alert"] == ["contacts_30d"]
    assert job.main([*args, "--version", "canary", *out]) == 5
