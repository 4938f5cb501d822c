"""Feature drift: reference bins at training time, PSI against served traffic.

:func:`drift_reference` cuts every feature at the quantiles of the training data (the
reference is stored in the model artifact as ``drift_reference.json``).
:func:`psi_report` bins served feature vectors the same way and computes the
population stability index per feature::

    PSI = sum over bins (served% - reference%) * ln(served% / reference%)

Conventional reading: below 0.1 stable, 0.1-0.25 a shift worth a look (``warn``),
above 0.25 a shift that needs action (``alert``). Bins are right-closed intervals
between distinct quantile edges, so a discrete feature (a one-hot, a count) gets one
bin per value rather than many empty ones; missing values have a bin of their own.
Empty bins are floored at :data:`EPSILON` so PSI stays finite.

PSI grows with sampling noise (roughly (bins - 1) / rows for unshifted data), so
reports below ``min_rows`` served rows are marked ``insufficient``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from attune.errors import FeatureSpecMismatch, InvalidInput

WARN = 0.1
ALERT = 0.25
EPSILON = 1e-4
Status = Literal["ok", "warn", "alert"]


def drift_reference(
    X: Any,
    feature_names: Sequence[str],
    bins: int = 10,
    *,
    spec_hash: str | None = None,
) -> dict[str, Any]:
    """Quantile bins and reference proportions per feature, as a JSON-ready dict.

    ``X`` is (rows, features) in ``feature_names`` order (an array, or a DataFrame
    holding those columns). Raises InvalidInput for fewer than two bins or no rows, and
    FeatureSpecMismatch when ``X`` does not match ``feature_names``.
    """
    if bins < 2:
        raise InvalidInput(f"bins must be >= 2, got {bins}", field="bins", value=bins)
    names = list(feature_names)
    matrix = _matrix(X, names)
    if len(matrix) == 0:
        raise InvalidInput("drift reference needs at least one row", field="X", value=0)
    features: dict[str, Any] = {}
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    for j, name in enumerate(names):
        column = matrix[:, j]
        present = column[~np.isnan(column)]
        edges = np.unique(np.quantile(present, inner)) if present.size else np.array([])
        features[name] = {
            "edges": [float(e) for e in edges],
            "proportions": _proportions(column, edges).tolist(),
        }
    return {
        "schema_version": "1",
        "method": "quantile bins, right-closed; last proportion is the missing-value bin",
        "bins": bins,
        "n_rows": len(matrix),
        "spec_hash": spec_hash,
        "feature_names": names,
        "features": features,
    }


def psi_report(
    reference: dict[str, Any],
    X_served: Any,
    *,
    warn: float = WARN,
    alert: float = ALERT,
    min_rows: int = 100,
) -> dict[str, Any]:
    """PSI per feature between ``reference`` and served rows, with flags.

    ``X_served`` is (rows, features) in the reference's feature order, or a DataFrame
    with those columns. Returns ``{"features": {name: {"psi", "status", ...}},
    "max_psi", "status", "flagged": {"warn": [...], "alert": [...]}, ...}`` where a
    feature's status is ``alert`` above ``alert``, ``warn`` above ``warn``, else ``ok``;
    the overall status is the worst one, or ``insufficient`` below ``min_rows`` rows.
    Raises InvalidInput for bad thresholds or a malformed reference, and
    FeatureSpecMismatch when the served columns differ from the reference's.
    """
    if not 0 < warn < alert:
        raise InvalidInput(
            f"warn ({warn}) must be > 0 and below alert ({alert})",
            field="warn",
            value=warn,
            alert=alert,
        )
    try:
        names = list(reference["feature_names"])
        bins = {n: reference["features"][n] for n in names}
    except (KeyError, TypeError) as exc:
        raise InvalidInput(
            f"not a drift reference: missing {exc}", field="reference", problem=str(exc)
        ) from exc
    matrix = _matrix(X_served, names)
    features: dict[str, Any] = {}
    flagged: dict[str, list[str]] = {"warn": [], "alert": []}
    for j, name in enumerate(names):
        expected = np.asarray(bins[name]["proportions"], dtype=np.float64)
        edges = np.asarray(bins[name]["edges"], dtype=np.float64)
        if len(expected) != len(edges) + 2:
            raise InvalidInput(
                f"drift reference of {name!r} has {len(edges)} edges but "
                f"{len(expected)} proportions (expected {len(edges) + 2})",
                field=f"features.{name}",
                value=len(expected),
            )
        actual = _proportions(matrix[:, j], edges) if len(matrix) else np.zeros_like(expected)
        psi = _psi(expected, actual)
        status: Status = "alert" if psi > alert else "warn" if psi > warn else "ok"
        if status != "ok":
            flagged[status].append(name)
        features[name] = {
            "psi": psi,
            "status": status,
            "reference": expected.tolist(),
            "served": actual.tolist(),
        }
    max_psi = max((f["psi"] for f in features.values()), default=0.0)
    overall = "alert" if flagged["alert"] else "warn" if flagged["warn"] else "ok"
    return {
        "schema_version": "1",
        "n_rows": len(matrix),
        "reference_rows": reference.get("n_rows"),
        "thresholds": {"warn": warn, "alert": alert},
        "min_rows": min_rows,
        "status": overall if len(matrix) >= min_rows else "insufficient",
        "max_psi": max_psi,
        "flagged": flagged,
        "features": features,
    }


def prometheus_text(report: dict[str, Any], *, model_version: str) -> str:
    """The report as Prometheus text exposition (for a textfile collector or push).

    Gauges: ``attune_feature_psi{model_version, feature}``,
    ``attune_drift_max_psi{model_version}`` and ``attune_drift_rows{model_version}``.
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    psi = Gauge(
        "attune_feature_psi",
        "Population stability index of a feature, served vs training reference.",
        ["model_version", "feature"],
        registry=registry,
    )
    for name, entry in report["features"].items():
        psi.labels(model_version=model_version, feature=name).set(entry["psi"])
    for metric, help_text, key in (
        ("attune_drift_max_psi", "Largest feature PSI of the latest drift report.", "max_psi"),
        ("attune_drift_rows", "Served candidate rows the latest drift report compared.", "n_rows"),
    ):
        gauge = Gauge(metric, help_text, ["model_version"], registry=registry)
        gauge.labels(model_version=model_version).set(report[key])
    return generate_latest(registry).decode()


def export_ray_gauges(report: dict[str, Any], *, model_version: str) -> bool:
    """Set the PSI gauges through Ray's metrics agent when Ray is up; True if it was."""
    import ray

    if not ray.is_initialized():
        return False
    from ray.util.metrics import Gauge

    gauge = Gauge(
        "attune_feature_psi",
        description="Population stability index of a feature, served vs training reference.",
        tag_keys=("model_version", "feature"),
    )
    for name, entry in report["features"].items():
        gauge.set(entry["psi"], tags={"model_version": model_version, "feature": name})
    return True


def _matrix(X: Any, names: list[str]) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        missing = [n for n in names if n not in X.columns]
        if missing:
            raise FeatureSpecMismatch(
                expected=names, actual=list(X.columns), problem=f"columns {missing} are missing"
            )
        X = X[names].to_numpy()
    matrix = np.asarray(X, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise FeatureSpecMismatch(
            expected=len(names),
            actual=list(matrix.shape),
            problem=f"expected (rows, {len(names)}) feature values",
        )
    return matrix


def _proportions(column: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of ``column`` per right-closed bin between ``edges``, plus a missing bin."""
    missing = np.isnan(column)
    index = np.searchsorted(edges, column[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    counts = np.append(counts, missing.sum())
    return counts / max(len(column), 1)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected, EPSILON)
    a = np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))
