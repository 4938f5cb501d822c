"""``attune experiment analyze``: decision logs joined with outcomes, read with Ray Data.

Ray Data reads the decision log (``decision_id``, ``ts``, ``arm``, and ``role`` when
present: only primary answers count) and the outcomes (``decision_id``, the metric and
optionally a pre-period covariate), left-joins them on the decision id (a decision
without an outcome row scores ``fill_missing``), and reduces everything to
:class:`~attune.experiments.analysis.Moments` per (day, arm). Only those few numbers
reach the driver, so the same command analyzes a day of logs on a laptop and a quarter
of logs on a cluster. The statistics then run on them: per-arm means, lift with
intervals (CUPED when a covariate is named), the SRM check, and the sequential test
read once per day. Outputs under ``out``: ``report.json`` and ``lift_over_time.png``.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune import storage
from attune.errors import ArgumentError, SchemaError, StoreNotFound
from attune.experiments.analysis import Moments, compare, srm_check
from attune.experiments.sequential import Look, sequential_lift

_SUMS = ("y", "y2", "x", "x2", "xy")


class AnalyzeConfig(BaseModel):
    """Arguments of ``attune experiment analyze``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decisions: str = Field(description="Decision-log parquet root (local path or s3://).")
    outcomes: str = Field(description="Outcomes parquet (decision_id, metric[, covariate]).")
    out: str = Field(description="Where report.json and lift_over_time.png are written.")
    metric: str = Field(default="reward", min_length=1, description="Outcome column analysed.")
    covariate: str | None = Field(
        default=None, description="Pre-period covariate column for CUPED (None: no CUPED)."
    )
    control: str = Field(default="champion", min_length=1, description="The control arm.")
    weights: dict[str, float] | None = Field(
        default=None, description="Planned traffic split per arm for SRM (None: equal)."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Error rate of intervals/tests.")
    fill_missing: float = Field(
        default=0.0, description="Metric of a decision that has no outcome row."
    )
    arm_column: str = Field(default="arm", description="Decision-log column naming the arm.")
    time_column: str = Field(default="ts", description="Decision-log timestamp column.")
    key: str = Field(default="decision_id", description="Join key of decisions and outcomes.")
    partitions: int = Field(default=4, ge=1, le=1024, description="Join/shuffle partitions.")

    @model_validator(mode="after")
    def _check(self) -> AnalyzeConfig:
        if self.weights is not None:
            bad = {arm: w for arm, w in self.weights.items() if w <= 0}
            if bad:
                raise ValueError(f"weights must be > 0, got {bad}")
            if self.control not in self.weights:
                raise ValueError(
                    f"control ({self.control!r}) must be one of weights {sorted(self.weights)}"
                )
        if self.covariate is not None and self.covariate == self.metric:
            raise ValueError(f"covariate ({self.covariate!r}) must differ from metric")
        return self


def _columns(ds: Any, uri: str, wanted: list[str]) -> None:
    names = ds.schema().names
    for column in wanted:
        if column not in names:
            raise SchemaError(file=uri, column=column, problem=f"missing column (has {names})")


def aggregate_logs(config: AnalyzeConfig) -> pd.DataFrame:
    """Per (day, arm) counts ``n`` and sums of y, y^2, x, x^2, x*y, computed with Ray Data.

    Raises :class:`SchemaError` naming the file and column when a column is missing,
    and :class:`attune.errors.StoreNotFound` when an input does not exist.
    """
    import ray.data

    for uri in (config.decisions, config.outcomes):
        # a URI may name one file or a directory (an S3 prefix has no object of its own)
        if not (storage.list_uris(uri) or storage.exists(uri)):
            raise StoreNotFound(uri=uri)
    decisions = ray.data.read_parquet(**storage.ray_read_args(config.decisions))
    _columns(decisions, config.decisions, [config.key, config.arm_column, config.time_column])
    keep = [config.key, config.arm_column, config.time_column]
    if "role" in decisions.schema().names:
        decisions = decisions.filter(lambda row: row["role"] == "primary")
    decisions = decisions.select_columns(keep)
    outcomes = ray.data.read_parquet(**storage.ray_read_args(config.outcomes))
    wanted = [config.key, config.metric] + ([config.covariate] if config.covariate else [])
    _columns(outcomes, config.outcomes, wanted)
    outcomes = outcomes.select_columns(wanted)
    joined = decisions.join(
        outcomes, join_type="left_outer", num_partitions=config.partitions, on=(config.key,)
    )

    def _moments(batch: pd.DataFrame) -> pd.DataFrame:
        y = pd.to_numeric(batch[config.metric], errors="coerce").astype("float64")
        y = y.fillna(config.fill_missing)
        if config.covariate:
            x = pd.to_numeric(batch[config.covariate], errors="coerce").astype("float64")
        else:
            x = pd.Series(0.0, index=batch.index)
        missing_x = x.isna()
        x = x.fillna(0.0)
        rows = pd.DataFrame(
            {
                "day": pd.to_datetime(batch[config.time_column], utc=True).dt.strftime("%Y-%m-%d"),
                "arm": batch[config.arm_column].astype(str),
                "n": 1,
                "y": y,
                "y2": y * y,
                "x": x,
                "x2": x * x,
                "xy": x * y,
                "x_missing": missing_x.astype("int64"),
            }
        )
        return rows.groupby(["day", "arm"], as_index=False).sum()

    # Each block reduces itself to a few (day, arm) rows; the driver adds those up, which
    # spares a second shuffle after the join.
    partial = joined.map_batches(_moments, batch_format="pandas").to_pandas()
    columns = ["day", "arm", "n", *_SUMS, "x_missing"]
    if partial.empty:
        return pd.DataFrame(columns=columns)
    frame = partial.groupby(["day", "arm"], as_index=False)[columns[2:]].sum()
    return frame.sort_values(["day", "arm"]).reset_index(drop=True)


def _moments_of(row: Any) -> Moments:
    return Moments(
        n=int(row.n),
        sum_y=float(row.y),
        sum_y2=float(row.y2),
        sum_x=float(row.x),
        sum_x2=float(row.x2),
        sum_xy=float(row.xy),
    )


def analyze_aggregates(frame: pd.DataFrame, config: AnalyzeConfig) -> dict[str, Any]:
    """The report (JSON-able) from per (day, arm) aggregates; no Ray needed."""
    if frame.empty:
        raise ArgumentError(argument="decisions", value=config.decisions, problem="no decisions")
    arms = sorted(frame["arm"].unique())
    if config.control not in arms:
        raise ArgumentError(argument="control", value=config.control, problem=f"not in {arms}")
    days = sorted(frame["day"].unique())
    zero = Moments(n=0, sum_y=0.0, sum_y2=0.0)
    daily = {(r.day, r.arm): _moments_of(r) for r in frame.itertuples(index=False)}
    totals = {arm: sum((daily.get((d, arm), zero) for d in days), zero) for arm in arms}
    weights = config.weights or {arm: 1.0 for arm in arms}
    unplanned = sorted(set(arms) - set(weights))
    if unplanned:
        raise ArgumentError(
            argument="weights", value=sorted(weights), problem=f"arms {unplanned} were not planned"
        )
    # a planned arm that logged nothing is the most extreme sample-ratio mismatch
    observed = {arm: totals[arm].n if arm in totals else 0 for arm in weights}
    srm = srm_check(observed, weights)
    cuped = config.covariate is not None
    comparisons: dict[str, Any] = {}
    for arm in (a for a in arms if a != config.control):
        lift = compare(
            totals[config.control],
            totals[arm],
            alpha=config.alpha,
            cuped=cuped,
            names=(config.control, arm),
        )
        looks, c_run, t_run = [], zero, zero
        for day in days:
            c_run = c_run + daily.get((day, config.control), zero)
            t_run = t_run + daily.get((day, arm), zero)
            if c_run.n >= 2 and t_run.n >= 2:
                looks.append((day, c_run, t_run))
        sequence = sequential_lift(looks, alpha=config.alpha, cuped=cuped)
        comparisons[arm] = {
            "control": config.control,
            "means": {config.control: lift.control.mean, arm: lift.treatment.mean},
            "std_errs": {config.control: lift.control.std_err, arm: lift.treatment.std_err},
            "absolute_lift": lift.absolute,
            "absolute_ci": list(lift.abs_ci),
            "relative_lift": lift.relative,
            "relative_ci": list(lift.rel_ci),
            "p_value_fixed_horizon": lift.p_value,
            "p_value_always_valid": sequence[-1].p_value,
            "confidence_sequence": [sequence[-1].cs_low, sequence[-1].cs_high],
            "cuped_theta": lift.cuped_theta,
            "variance_reduction": lift.variance_reduction,
            "over_time": [asdict(look) for look in sequence],
        }
    return {
        "metric": config.metric,
        "covariate": config.covariate,
        "alpha": config.alpha,
        "days": days,
        "arms": {arm: {"n": totals[arm].n, "mean": totals[arm].mean_y} for arm in arms},
        "covariate_missing": int(frame["x_missing"].sum()) if cuped else 0,
        "srm": {
            "observed": srm.observed,
            "expected": srm.expected,
            "chi2": srm.chi2,
            "p_value": srm.p_value,
            "flagged": srm.flagged,
        },
        "comparisons": comparisons,
    }


def plot_lift_over_time(report: dict[str, Any]) -> bytes:
    """PNG: cumulative absolute lift per day with its confidence sequence and fixed CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["comparisons"])
    fig, axes = plt.subplots(len(arms) or 1, 1, figsize=(8, 3.2 * max(len(arms), 1)), squeeze=False)
    for ax, arm in zip(axes[:, 0], arms, strict=False):
        looks = [Look(**look) for look in report["comparisons"][arm]["over_time"]]
        x = list(range(len(looks)))
        ax.fill_between(
            x,
            [lk.cs_low for lk in looks],
            [lk.cs_high for lk in looks],
            alpha=0.25,
            label="always-valid (sequential)",
        )
        ax.plot(x, [lk.fixed_low for lk in looks], "k:", lw=1, label="fixed-horizon CI")
        ax.plot(x, [lk.fixed_high for lk in looks], "k:", lw=1)
        ax.plot(x, [lk.absolute for lk in looks], "o-", label="cumulative lift")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, [lk.label for lk in looks], rotation=45, ha="right", fontsize=7)
        control = report["comparisons"][arm]["control"]
        ax.set_title(f"{report['metric']}: {arm} - {control}")
        ax.set_ylabel("absolute lift")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def run_analysis(config: AnalyzeConfig) -> dict[str, Any]:
    """Aggregate with Ray Data, analyse, write ``report.json`` and ``lift_over_time.png``."""
    report = analyze_aggregates(aggregate_logs(config), config)
    report["outputs"] = {
        "report": storage.join(config.out, "report.json"),
        "plot": storage.join(config.out, "lift_over_time.png"),
    }
    storage.write_bytes(report["outputs"]["plot"], plot_lift_over_time(report))
    storage.write_json(report["outputs"]["report"], report)
    return report
