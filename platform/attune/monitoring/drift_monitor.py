"""Drift monitoring of a served model: reference from the registry, traffic from the log.

:func:`run_drift_monitor` is what ``attune monitor drift`` and ``jobs/drift.py`` run:

1. resolve the model version (a version id, or an alias) through
   :class:`attune.registry.Registry` and read its ``drift_reference.json`` with the
   registry's checks (the manifest's size and sha256);
2. read the feature vectors the version actually scored from the decision log
   (``<decisions>/date=YYYY-MM-DD/*.parquet``, column ``features``: one vector per
   candidate, in feature-spec order) with pyarrow, pushing the version and date
   filters down to the scan;
3. compute PSI per feature (:func:`attune.governance.drift.psi_report`) and write
   ``drift.json``, ``drift.png`` and ``drift.prom`` (Prometheus text) under ``out``;
   when Ray is up, the PSI gauges are also set through Ray's metrics agent.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attune import storage
from attune.errors import ConfigError, FeatureSpecMismatch, InvalidInput, StoreNotFound
from attune.governance.drift import ALERT, WARN, export_ray_gauges, prometheus_text, psi_report
from attune.registry import ALIASES, Registry
from attune.registry.models import DRIFT_REFERENCE, VERSION_ID
from attune.settings import get_settings

#: A version reference: a registry version id or one of its aliases (never a path).
VERSION_REF = rf"^(?:{'|'.join(ALIASES)}|{VERSION_ID.pattern.strip('^$')})$"


class DriftMonitorConfig(BaseModel):
    """Arguments of one drift check (CLI ``attune monitor drift`` and ``jobs/drift.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(min_length=1, description="Registry root (local dir or s3://).")
    version: str = Field(
        pattern=VERSION_REF,
        description="Version id (vYYYYMMDD-HHMMSS-xxxxxx), or champion/canary/shadow; it "
        "becomes a path in the registry and the store, so nothing else is accepted.",
    )
    decisions: str = Field(min_length=1, description="Decision-log root (local dir or s3://).")
    out: str | None = Field(
        default=None,
        description="Where to write the report; default <store>/monitoring/drift/<version>/<time>.",
    )
    since: date | None = Field(default=None, description="First decision date (inclusive).")
    until: date | None = Field(default=None, description="Last decision date (inclusive).")
    warn: float = Field(default=WARN, gt=0, description="PSI above which a feature is 'warn'.")
    alert: float = Field(default=ALERT, gt=0, description="PSI above which it is 'alert'.")
    min_rows: int = Field(default=100, ge=1, description="Fewer served rows: 'insufficient'.")

    @model_validator(mode="after")
    def _check(self) -> DriftMonitorConfig:
        if self.alert <= self.warn:
            raise ValueError(f"alert ({self.alert}) must be above warn ({self.warn})")
        if self.since and self.until and self.until < self.since:
            raise ValueError(f"until ({self.until}) must not be before since ({self.since})")
        return self


def drift_config(**values: Any) -> DriftMonitorConfig:
    """A validated :class:`DriftMonitorConfig`; ConfigError names the first bad field."""
    try:
        return DriftMonitorConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(config)"
        raise ConfigError(field=where, value=first.get("input"), problem=first["msg"]) from exc


def run_drift_monitor(config: DriftMonitorConfig) -> dict[str, Any]:
    """Compare a version's served traffic with its training reference; write the report.

    Returns the report (see :func:`psi_report`) with ``version``, ``window`` and
    ``outputs`` (URIs of drift.json, drift.png, drift.prom) added. Raises
    AliasNotFound / VersionNotFound / StoreNotFound for what is missing,
    ArtifactCorrupted for a registry file that fails the registry's checks, InvalidInput
    when the log holds no decision of the version in the window, and
    FeatureSpecMismatch when logged vectors do not fit the reference.
    """
    from attune.governance.plots import drift_png

    registry = Registry(config.registry)
    version = registry.resolve(config.version)
    reference = registry.read_json(version, DRIFT_REFERENCE)
    served = read_served_features(
        config.decisions,
        version=version,
        n_features=len(reference["feature_names"]),
        spec_hash=reference.get("spec_hash"),
        since=config.since,
        until=config.until,
    )
    report = psi_report(
        reference, served, warn=config.warn, alert=config.alert, min_rows=config.min_rows
    )
    now = datetime.now(UTC)
    out = config.out or storage.join(
        get_settings().store, "monitoring", "drift", version, f"{now:%Y%m%dT%H%M%SZ}"
    )
    outputs = {
        "json": storage.join(out, "drift.json"),
        "png": storage.join(out, "drift.png"),
        "prometheus": storage.join(out, "drift.prom"),
    }
    report.update(
        version=version,
        reference=config.version,
        computed_at=now.isoformat(),
        window={
            "since": config.since.isoformat() if config.since else None,
            "until": config.until.isoformat() if config.until else None,
        },
        outputs=outputs,
    )
    storage.write_json(outputs["json"], report)
    storage.write_bytes(outputs["png"], drift_png(report, title=f"Drift of {version}"))
    storage.write_bytes(
        outputs["prometheus"], prometheus_text(report, model_version=version).encode()
    )
    # The latest report per version, where the serving app's drift gauges read it
    # (attune.serving.drift_gauges): the app is the process that lives to be scraped.
    storage.write_json(latest_report_uri(get_settings().store, version), report)
    report["ray_metrics"] = export_ray_gauges(report, model_version=version)
    return report


def latest_report_uri(store: str, version: str) -> str:
    """``<store>/monitoring/drift/<version>/latest.json``: the newest report of a version."""
    return storage.join(store, "monitoring", "drift", version, "latest.json")


def read_served_features(
    decisions: str,
    *,
    version: str,
    n_features: int,
    spec_hash: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> np.ndarray:
    """Every candidate feature vector ``version`` scored, as a (rows, n_features) array."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, path = storage.pyarrow_filesystem(decisions)
    if not storage.list_uris(decisions):
        raise StoreNotFound(uri=decisions, problem="no decision log here")
    dataset = ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        exclude_invalid_files=True,
    )
    missing = {"model_version", "features"} - set(dataset.schema.names)
    if missing:
        raise InvalidInput(
            f"{decisions}: decision log lacks columns {sorted(missing)}",
            field="decisions",
            value=sorted(missing),
        )
    condition = ds.field("model_version") == version
    if since is not None:
        condition = condition & (ds.field("date") >= since.isoformat())
    if until is not None:
        condition = condition & (ds.field("date") <= until.isoformat())
    columns = ["features"] + (
        ["feature_spec_hash"] if "feature_spec_hash" in dataset.schema.names else []
    )
    table = dataset.to_table(columns=columns, filter=condition)
    if table.num_rows == 0:
        raise InvalidInput(
            f"{decisions}: no decisions of version {version} between {since} and {until}",
            field="decisions",
            version=version,
        )
    if spec_hash and "feature_spec_hash" in table.column_names:
        hashes = set(pc.unique(table.column("feature_spec_hash")).to_pylist())
        if hashes - {spec_hash}:
            raise FeatureSpecMismatch(
                expected=spec_hash, actual=sorted(hashes), problem="logged feature spec differs"
            )
    vectors = pc.list_flatten(table.column("features"))
    lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != n_features)
    if bad.size:
        raise FeatureSpecMismatch(
            expected=n_features,
            actual=int(lengths[bad[0]]),
            problem=f"{decisions}: a logged feature vector has the wrong length",
        )
    values = pc.list_flatten(vectors).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64).reshape(-1, n_features)


def summary_line(report: dict[str, Any]) -> str:
    """One human line for the CLI."""
    flagged = report["flagged"]
    return json.dumps(
        {
            "version": report["version"],
            "status": report["status"],
            "rows": report["n_rows"],
            "max_psi": round(report["max_psi"], 4),
            "alert": flagged["alert"],
            "warn": flagged["warn"],
            "report": report["outputs"]["json"],
        }
    )
