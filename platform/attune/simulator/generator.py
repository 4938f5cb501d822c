"""``attune generate``: simulated servicing histories with a hidden ground truth.

:func:`generate` writes, under a history root (local directory or ``s3://``), the
layout of contracts §1 and §2::

    borrowers/part-sNNNNN.parquet   loans/…   protected/…
    events/month=YYYY-MM/part-sNNNNN-cMMM.parquet
    presentations/month=YYYY-MM/part-sNNNNN-cMMM.parquet
    ground_truth/values/part-sNNNNN-cMMM.parquet     ground_truth/position_bias.json
    manifest.json                                    written last: the history is complete

Borrowers are simulated in shards of :data:`SHARD_SIZE`; shard ``s`` draws from
``SeedSequence(seed, spawn_key=(s,))``, so the history depends on the seed alone, not
on how many workers ran the shards. Shards run as Ray tasks when Ray is initialized
or the run is large (>= :data:`RAY_MIN_BORROWERS`), otherwise in-process; each writes
its files month by month, so memory is bounded by one shard-month.

The behaviour model (who responds to which option) lives in
:mod:`attune.simulator._behaviour`, the legacy logging policy in
:mod:`attune.simulator.logging_policy`, the month-by-month dynamics in
:mod:`attune.simulator._shard`. The manifest reports the true value of the reference
policies, including the best fixed ranking's share of the oracle's lift over random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from attune import storage
from attune.data.schema import OPTION_IDS, SCHEMA_VERSION, validate_table
from attune.errors import Conflict
from attune.simulator import ground_truth as gt
from attune.simulator._behaviour import POSITION_BIAS

#: Borrowers per shard. Fixed: changing it changes every history.
SHARD_SIZE = 5_000
#: From this many borrowers on, ``parallel="auto"`` runs shards as Ray tasks.
RAY_MIN_BORROWERS = 20_000
MANIFEST = "manifest.json"
_TABLE_DIRS = ("borrowers", "loans", "protected", "events", "presentations", "ground_truth")


class GenerateConfig(BaseModel):
    """What ``attune generate`` simulates and where it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    borrowers: int = Field(ge=1, le=10_000_000, description="Number of borrowers to simulate.")
    months: int = Field(ge=1, le=120, description="Months of history (one billing cycle each).")
    seed: int = Field(ge=0, lt=2**63, description="Seed of every random draw.")
    out: str = Field(
        min_length=1, description="History root: local directory or s3://bucket/prefix."
    )
    start: date = Field(
        default=date(2025, 1, 1), description="First day of the history (the 1st of a month)."
    )
    epsilon: float = Field(
        default=0.2, gt=0.0, le=1.0, description="Logging policy's share of random slates."
    )
    parallel: Literal["auto", "ray", "local"] = Field(
        default="auto",
        description="Run shards as Ray tasks ('ray'), in-process ('local'), or decide by size.",
    )
    overwrite: bool = Field(default=False, description="Replace a history already at `out`.")

    @field_validator("start")
    @classmethod
    def _first_of_month(cls, value: date) -> date:
        if value.day != 1:
            raise ValueError(f"start ({value}) must be the first day of a month")
        return value

    @property
    def shards(self) -> int:
        return math.ceil(self.borrowers / SHARD_SIZE)

    @property
    def end(self) -> date:
        """First day after the history."""
        month = self.start.month - 1 + self.months
        return date(self.start.year + month // 12, month % 12 + 1, 1)


@dataclass(frozen=True)
class ShardSummary:
    """What a shard reports back: row counts and sums for the policy-value figure."""

    counts: dict[str, int]
    presentations: int
    value_sum: np.ndarray  # (n_options,) sum over presentations of each option's value
    random_sum: float
    oracle_sum: float
    legacy_sum: float


@dataclass
class _Totals:
    counts: dict[str, int] = field(default_factory=dict)
    presentations: int = 0
    value_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(OPTION_IDS)))
    random_sum: float = 0.0
    oracle_sum: float = 0.0
    legacy_sum: float = 0.0

    def add(self, s: ShardSummary) -> None:
        for name, count in s.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        self.presentations += s.presentations
        self.value_sum = self.value_sum + s.value_sum
        self.random_sum += s.random_sum
        self.oracle_sum += s.oracle_sum
        self.legacy_sum += s.legacy_sum


def generate(config: GenerateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Simulate the history described by ``config``, write it, and return its manifest.

    Raises :class:`~attune.errors.Conflict` when ``config.out`` already holds files and
    ``overwrite`` is off; store errors (:mod:`attune.errors`) name the URI that failed.
    """
    _prepare(config)
    totals = _Totals()
    for summary in _run_shards(config, progress=progress):
        totals.add(summary)
    storage.write_json(
        storage.join(config.out, gt.GROUND_TRUTH_DIR, gt.POSITION_BIAS_FILE),
        {"position_bias": list(POSITION_BIAS)},
    )
    manifest = _manifest(config, totals)
    storage.write_json(storage.join(config.out, MANIFEST), manifest)
    return manifest


def _prepare(config: GenerateConfig) -> None:
    if not storage.list_uris(config.out):
        return
    if not config.overwrite:
        raise Conflict(
            f"{config.out} is not empty; pass --overwrite to replace the history there",
            uri=config.out,
        )
    # The manifest goes first: a half-deleted history must never look complete.
    storage.delete_prefix(storage.join(config.out, MANIFEST))
    for name in _TABLE_DIRS:
        storage.delete_prefix(storage.join(config.out, name))


def _run_shards(config: GenerateConfig, *, progress: bool) -> list[ShardSummary]:
    from rich.progress import Progress

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(f"simulating {config.borrowers:,} borrowers", total=config.shards)
        if _use_ray(config):
            return _run_on_ray(config, lambda: bar.advance(task))
        out = []
        for shard in range(config.shards):
            out.append(simulate_shard(config, shard))
            bar.advance(task)
        return out


def _use_ray(config: GenerateConfig) -> bool:
    if config.parallel != "auto":
        return config.parallel == "ray"
    return config.borrowers >= RAY_MIN_BORROWERS


def _run_on_ray(config: GenerateConfig, advance: Any) -> list[ShardSummary]:
    import ray

    from attune.settings import get_settings

    started = not ray.is_initialized()
    if started:
        from attune.runtime import init_ray

        init_ray(get_settings().ray_address)
    try:
        task = ray.remote(num_cpus=1)(simulate_shard)
        pending = [task.remote(config, shard) for shard in range(config.shards)]
        done: dict[Any, ShardSummary] = {}
        order = list(pending)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[ready[0]] = ray.get(ready[0])
            advance()
        return [done[ref] for ref in order]
    finally:
        if started:
            ray.shutdown()


def simulate_shard(config: GenerateConfig, shard: int) -> ShardSummary:
    """Simulate shard ``shard`` of ``config`` and write its files; returns its summary."""
    from attune.simulator._population import static_tables
    from attune.simulator._shard import ShardPlan, ShardSimulator

    first = shard * SHARD_SIZE
    plan = ShardPlan(
        shard=shard,
        first_id=first + 1,
        size=min(SHARD_SIZE, config.borrowers - first),
        seed=config.seed,
        months=config.months,
        start_month=np.datetime64(config.start, "M"),
        epsilon=config.epsilon,
    )
    sim = ShardSimulator(plan)
    counts: dict[str, int] = {}
    part = f"part-s{shard:05d}"
    for name, table in static_tables(sim.pop).items():
        _write(config.out, name, f"{part}.parquet", table, counts)
    totals = dict(presentations=0, random=0.0, oracle=0.0, legacy=0.0)
    value_sum = np.zeros(len(OPTION_IDS))
    bias = np.asarray(POSITION_BIAS)
    for cycle in sim.cycles():
        name = f"{part}-c{cycle.month:03d}.parquet"
        _write_by_month(config.out, "events", name, cycle.events, counts)
        _write_by_month(config.out, "presentations", name, cycle.presentations, counts)
        if cycle.values.num_rows:
            _write(config.out, f"{gt.GROUND_TRUTH_DIR}/{gt.VALUES_DIR}", name, cycle.values, counts)
        v = cycle.value_matrix
        totals["presentations"] += v.shape[0]
        totals["random"] += float(gt.random_value(v, bias).sum())
        totals["oracle"] += float(gt.oracle_value(v, bias).sum())
        totals["legacy"] += float(gt.slate_value(v, cycle.slates, bias).sum())
        value_sum += v.sum(axis=0)
    return ShardSummary(
        counts=counts,
        presentations=int(totals["presentations"]),
        value_sum=value_sum,
        random_sum=totals["random"],
        oracle_sum=totals["oracle"],
        legacy_sum=totals["legacy"],
    )


def _write(root: str, folder: str, name: str, table: Any, counts: dict[str, int]) -> None:
    import pyarrow.parquet as pq

    uri = storage.join(root, folder, name)
    table_name = folder.split("/")[0]
    if table_name != gt.GROUND_TRUTH_DIR:
        table = validate_table(table, table_name, source=uri)
    fs, path = storage.pyarrow_filesystem(uri)
    if not storage.is_s3(uri):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)
    key = "ground_truth_values" if table_name == gt.GROUND_TRUTH_DIR else table_name
    counts[key] = counts.get(key, 0) + table.num_rows


def _write_by_month(root: str, folder: str, name: str, table: Any, counts: dict[str, int]) -> None:
    """Write ``table`` split into ``folder/month=YYYY-MM/`` partitions by its ``ts``."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return
    month = pc.strftime(table.column("ts"), format="%Y-%m")
    for value in pc.unique(month).to_pylist():
        part = table.filter(pc.equal(month, value))
        _write(root, f"{folder}/month={value}", name, part, counts)


def _manifest(config: GenerateConfig, totals: _Totals) -> dict[str, Any]:
    n = max(totals.presentations, 1)
    bias = np.asarray(POSITION_BIAS)
    mean_values = totals.value_sum / n
    fixed = gt.best_fixed_slate(mean_values[None, :], bias)
    values = {
        "random": totals.random_sum / n,
        "best_fixed": float(mean_values[fixed] @ bias),
        "legacy": totals.legacy_sum / n,
        "oracle": totals.oracle_sum / n,
    }
    share = {
        name: gt.share_of_oracle_lift(
            values[name], random=values["random"], oracle=values["oracle"]
        )
        if values["oracle"] > values["random"]
        else float("nan")
        for name in ("best_fixed", "legacy")
    }
    counts = dict(totals.counts)
    counts["slates"] = totals.presentations
    return {
        "schema_version": SCHEMA_VERSION,
        "seed": config.seed,
        "borrowers": config.borrowers,
        "months": config.months,
        "start": config.start.isoformat(),
        "end": config.end.isoformat(),
        "counts": dict(sorted(counts.items())),
        "epsilon": config.epsilon,
        "shard_size": SHARD_SIZE,
        "shards": config.shards,
        "position_bias": list(POSITION_BIAS),
        "policy_values": values,
        "best_fixed_slate": [OPTION_IDS[i] for i in fixed],
        "share_of_oracle_lift": share,
    }
