"""``attune rank-batch``: rank every borrower of a feature snapshot for one touchpoint, on Ray Data.

The job, streaming end to end (memory per node is set by the batch size and the
number of actors, not by the number of borrowers)::

    snapshot features/*.parquet ──read_parquet──► blocks of borrowers
      ──map_batches(BatchRanker, actor pool: one ONNX Runtime session per model and actor)──►
            eligibility rules, sticky arm, candidate rows, scores, order, decision log
      ──write_parquet──► <out>/ranked/    one row per ranked borrower
                         <out>/excluded/  one row per excluded borrower, with the rule
                         <out>/summary.json  counts per arm and per rule, versions, timing

``--features`` is a committed snapshot directory (``attune features materialize``) or
a store root (its latest snapshot for this code's feature spec). With ``--as-of`` it is
a history root instead: the features are materialized as of that time first (a
features-only snapshot under the store), with the same code.

Model versions are resolved from the registry once, in the driver, so every actor
scores with the same versions even if an alias moves during the run. The rollout
(champion, canary and its share, salt) is the serving app's :class:`RolloutConfig`, so
a borrower is on the same arm in the app and in the campaign.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from attune import storage
from attune.batch.eligibility import NO_OPTIONS_LEFT, EligibilityConfig
from attune.batch.scoring import MODEL_FAILED, OUTPUT_SCHEMA, STATUS, BatchRanker, RankPlan
from attune.data.materialize import (
    MaterializeConfig,
    SnapshotInfo,
    latest_snapshot,
    materialize,
)
from attune.data.spec import BORROWER_FEATURES
from attune.errors import ConfigError, FeatureSpecMismatch, StoreNotFound
from attune.experiments.exploration import ExplorationConfig
from attune.experiments.policy_config import LinearThompsonConfig
from attune.serving.config import RolloutConfig
from attune.settings import borrower_salt

#: Borrowers per batch: large enough that ONNX Runtime's per-call cost vanishes, small
#: enough that a batch's candidate rows (batch x options x features float32) stay ~10 MB.
DEFAULT_BATCH_SIZE = 8192
_PARTS = ("ranked", "excluded")
#: Logical CPUs an actor reserves (see rank_batch).
ACTOR_CPUS = 0.5


class RankBatchConfig(BaseModel):
    """What ``attune rank-batch`` ranks, with which models, and where it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: str = Field(
        min_length=1,
        description="Snapshot directory or store root; with as_of: a history root.",
    )
    registry: str = Field(min_length=1, description="Model registry URI.")
    touchpoint: Literal["app", "email", "sms"] = Field(description="Campaign touchpoint.")
    out: str = Field(min_length=1, description="Output directory (local or s3://).")
    as_of: AwareDatetime | None = Field(
        default=None, description="Compute features as of this time from the histories."
    )
    store: str | None = Field(
        default=None,
        description="Store root of the decision log (and of an --as-of snapshot); "
        "default ATTUNE_STORE.",
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Champion / canary / salt, as served."
    )
    eligibility: EligibilityConfig = Field(
        default_factory=EligibilityConfig, description="Eligibility rules per touchpoint."
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, ge=1, le=1_000_000, description="Borrowers per batch."
    )
    actors: int | None = Field(
        default=None, ge=1, le=1024, description="Scoring actors (default: the cluster's CPUs)."
    )
    decision_log: bool = Field(default=True, description="Append decisions to the log.")


@dataclass(frozen=True)
class RankBatchResult:
    """What a run wrote: where, how many borrowers, and the summary (``summary.json``)."""

    uri: str
    summary: dict[str, Any]


def resolve_snapshot(config: RankBatchConfig, store: str) -> SnapshotInfo:
    """The snapshot to rank: the one at ``features``, the store's latest, or a new one."""
    uri = config.features
    is_snapshot = storage.exists(storage.join(uri, "manifest.json")) and storage.exists(
        storage.join(uri, "features")
    )
    if config.as_of is not None:
        if is_snapshot:
            raise ConfigError(
                field="as_of",
                value=config.as_of.isoformat(),
                problem=f"{uri} is a snapshot already; --as-of needs a history root",
            )
        return materialize(
            uri,
            store,
            config=MaterializeConfig(as_of=config.as_of, parts=("features",), online_events=False),
        )
    if is_snapshot:
        if not storage.is_complete(uri):
            raise StoreNotFound(uri=uri, problem="snapshot was never committed")
        manifest = storage.read_json(storage.join(uri, "manifest.json"))
        return SnapshotInfo.from_dict({**manifest, "uri": uri})
    return latest_snapshot(uri)


def _plan(config: RankBatchConfig, store: str, run_id: str, decided_at: datetime) -> RankPlan:
    from attune.registry import Registry
    from attune.serving.model import OnnxScorer

    registry = Registry(config.registry)
    rollout = config.rollout
    champion = registry.resolve(rollout.champion)
    canary = registry.resolve(rollout.canary) if rollout.canary else None
    if canary == champion:
        canary = None  # a rolled-back canary alias points at the champion (as served)
    # refuse a bad model before any work starts
    scorers = [OnnxScorer.load(registry, v) for v in filter(None, (champion, canary))]
    champion_spec = scorers[0].spec.n_features
    return RankPlan(
        registry_uri=registry.uri,
        champion=champion,
        canary=canary,
        canary_share=rollout.canary_percent / 100 if canary else 0.0,
        salt=rollout.salt,
        touchpoint=config.touchpoint,
        rules=config.eligibility.for_touchpoint(config.touchpoint),
        borrower_salt=borrower_salt(strict=storage.is_s3(store) or storage.is_s3(registry.uri)),
        run_id=run_id,
        decided_at=decided_at,
        decision_store=store if config.decision_log else None,
        exploration=_exploration(rollout, champion_spec),
    )


def _exploration(rollout: RolloutConfig, n_features: int) -> ExplorationConfig | None:
    """The rollout's exploration when active; refuses a posterior of another width."""
    config = rollout.exploration
    if not config.active:
        return None
    policy = config.state.config if config.state is not None else None
    dim = policy.dim if isinstance(policy, LinearThompsonConfig) else None
    if dim is not None and dim != n_features:
        raise ConfigError(
            field="rollout.exploration.state.config.dim",
            value=dim,
            problem=f"the champion's candidate rows have {n_features} features",
        )
    return config


def _check_columns(snapshot: SnapshotInfo) -> None:
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(storage.join(snapshot.uri, "features"))
    names = pads.dataset(path, filesystem=fs, format="parquet").schema.names
    missing = [n for n in ("borrower_id", "as_of", *BORROWER_FEATURES) if n not in names]
    if missing:
        raise FeatureSpecMismatch(
            expected=missing, actual=names, problem=f"snapshot {snapshot.uri} lacks features"
        )


def rank_batch(config: RankBatchConfig) -> RankBatchResult:
    """Rank every borrower of the snapshot ``config`` names; see the module docstring.

    Raises ConfigError / StoreNotFound / the registry's errors before any work starts,
    FeatureSpecMismatch for a snapshot without this code's borrower features.
    """
    import ray

    from attune.settings import get_settings

    started = time.perf_counter()
    store = config.store or get_settings().store
    decided_at = datetime.now(timezone.utc)
    run_id = f"{decided_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    plan = _plan(config, store, run_id, decided_at)
    snapshot = resolve_snapshot(config, store)
    _check_columns(snapshot)
    ready = time.perf_counter()
    fs, path = storage.pyarrow_filesystem(storage.join(snapshot.uri, "features"))
    ds = ray.data.read_parquet(
        path, filesystem=fs, columns=["borrower_id", "as_of", *BORROWER_FEATURES]
    ).repartition(
        # streaming: one batch per block, so that every actor of the pool has work (a
        # snapshot file is one block, and one block goes to one actor)
        target_num_rows_per_block=config.batch_size
    )
    actors = config.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ranked = ds.map_batches(
        BatchRanker,
        fn_constructor_kwargs={"plan": plan},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        # Logical CPUs: each actor runs one ONNX Runtime thread, but an actor pool holding
        # every CPU would leave none for the read and write tasks (the job would stall).
        num_cpus=ACTOR_CPUS,
    )
    with storage.write_dir_atomically(config.out) as stage:
        out_fs, out_path = storage.pyarrow_filesystem(stage)
        ranked.write_parquet(
            out_path, filesystem=out_fs, partition_cols=[STATUS], partitioning_flavor=None
        )
        for part in _PARTS:
            _ensure_part(stage, part)
        summary = _summary(stage, config, plan, snapshot)
        summary["seconds"] = {
            "plan": round(ready - started, 3),
            "rank": round(time.perf_counter() - ready, 3),
        }
        storage.write_json(storage.join(stage, "summary.json"), summary)
    return RankBatchResult(uri=config.out, summary=summary)


def _ensure_part(stage: str, part: str) -> None:
    import pyarrow.parquet as pq

    target = storage.join(stage, part)
    if any(u.endswith(".parquet") for u in storage.list_uris(target)):
        return
    fs, path = storage.pyarrow_filesystem(storage.join(target, "part-empty.parquet"))
    if not storage.is_s3(stage):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(OUTPUT_SCHEMA.remove(OUTPUT_SCHEMA.get_field_index(STATUS)).empty_table(), path)


def read_part(uri: str, part: str, columns: list[str] | None = None) -> Any:
    """One part (``ranked`` or ``excluded``) of a rank-batch output as an Arrow table."""
    import pyarrow.dataset as pads

    schema = OUTPUT_SCHEMA.remove(OUTPUT_SCHEMA.get_field_index(STATUS))
    fs, path = storage.pyarrow_filesystem(storage.join(uri, part))
    data = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
    return data.to_table(columns=columns)


def _summary(
    stage: str, config: RankBatchConfig, plan: RankPlan, snapshot: SnapshotInfo
) -> dict[str, Any]:
    import pyarrow.compute as pc

    ranked = read_part(stage, "ranked", ["arm", "model_version", "withheld_by", "propensities"])
    exploring = ranked.num_rows - ranked.column("propensities").null_count
    excluded = read_part(stage, "excluded", ["excluded_by"])
    rules = plan.rules
    by_rule = {r.name: 0 for r in rules.rules if r.options is None}
    by_rule.update({NO_OPTIONS_LEFT: 0, MODEL_FAILED: 0})
    for row in pc.value_counts(excluded.column("excluded_by")).to_pylist():
        by_rule[row["values"]] = row["counts"]
    withheld = {r.name: 0 for r in rules.rules if r.options is not None}
    flat = pc.list_flatten(ranked.column("withheld_by"))
    for row in pc.value_counts(flat).to_pylist():
        withheld[row["values"]] = row["counts"]
    arms = {a: 0 for a in ("champion", "canary")}
    for row in pc.value_counts(ranked.column("arm")).to_pylist():
        arms[row["values"]] = row["counts"]
    versions = {
        row["values"]: row["counts"]
        for row in pc.value_counts(ranked.column("model_version")).to_pylist()
    }
    return {
        "run_id": plan.run_id,
        "decided_at": plan.decided_at.isoformat(),
        "touchpoint": config.touchpoint,
        "snapshot": snapshot.to_dict(),
        "borrowers": ranked.num_rows + excluded.num_rows,
        "ranked": ranked.num_rows,
        "excluded": excluded.num_rows,
        "excluded_by_rule": by_rule,
        "ranked_with_options_withheld_by_rule": withheld,
        "arms": arms,
        "model_versions": versions,
        "rollout": {
            "champion": plan.champion,
            "canary": plan.canary,
            "canary_share": plan.canary_share,
            "salt": plan.salt,
        },
        "decision_log": (
            storage.join(plan.decision_store, "decisions") if plan.decision_store else None
        ),
        "exploration": plan.exploration.describe() if plan.exploration else None,
        "exploring": exploring,
    }
