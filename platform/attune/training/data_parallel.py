"""Data-parallel training of one ranker with Ray Train's ``XGBoostTrainer``.

For datasets too large for one trial. Ray Train's default ingest splits a dataset's
*rows* evenly across workers without regard to ``qid``, which would cut ranking groups
in two (each half then ranks against a partial group, and XGBoost's group pointers no
longer match the data). So the splits are partitioned by group before Ray Train sees
them: worker ``r`` of ``n`` gets exactly the groups with ``_worker_of(qid, n) == r`` (a
multiplicative hash of the qid, so consecutive presentation ids spread evenly), as its
own dataset ``train_r`` / ``valid_r``, which Ray Train hands over unsplit. Each worker
sorts its rows by ``(qid, position)`` and checks the order before building its
``DMatrix``; XGBoost's collective (set up by ``XGBoostConfig``) then trains one model
over all workers' groups.

Reading goes through Ray Data straight from the dataset's parquet (local or s3://): the
driver never holds the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from attune import storage
from attune.data.spec import FeatureSpec
from attune.errors import ConfigError, Unavailable
from attune.training.search_space import (
    EVAL_METRICS,
    RankerParams,
    training_labels,
    xgb_params,
)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class DataParallelResult:
    """The trained booster, the rounds it ran and the per-worker shard audits (if kept)."""

    booster: Any
    rounds: int
    metrics: dict[str, Any]
    shard_audits: tuple[dict[str, Any], ...]


def _worker_of(qid: np.ndarray, num_workers: int) -> np.ndarray:
    """The worker rank (0..num_workers-1) that owns each qid; a pure function of the qid."""
    hashed = (np.asarray(qid).astype(np.uint64) * _GOLDEN) >> np.uint64(33)
    return (hashed % np.uint64(num_workers)).astype(np.int64)


def _select_groups(batch: Any, *, rank: int, num_workers: int) -> Any:
    """Keep the rows of ``batch`` (a pyarrow Table) whose group belongs to ``rank``."""
    import pyarrow as pa

    qid = batch.column("qid").to_numpy()
    mask = _worker_of(qid, num_workers) == rank
    return batch.filter(pa.array(mask))


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train loop: build this worker's DMatrix from its own groups and train."""
    import ray.train
    import xgboost as xgb
    from ray.train.xgboost import RayTrainReportCallback

    from attune.training.dataset import check_sorted

    context = ray.train.get_context()
    rank = context.get_world_rank()
    names: list[str] = loop_config["features"]
    params: dict[str, Any] = loop_config["params"]

    def _matrix(split: str) -> tuple[xgb.DMatrix, np.ndarray]:
        shard = ray.train.get_dataset_shard(f"{split}_{rank}")
        df = shard.materialize().to_pandas()
        # Blocks arrive in no particular order; groups must be contiguous and sorted.
        df = df.sort_values(["qid", "position"], kind="stable").reset_index(drop=True)
        qid = df["qid"].to_numpy(np.int64)
        check_sorted(qid, source=f"{split} shard of worker {rank}")
        label = df["label"].to_numpy()
        if split == "train":
            label = training_labels(label, params["objective"])
        matrix = xgb.DMatrix(
            df[names].to_numpy(np.float32),
            label=np.asarray(label, dtype=np.float32),
            qid=qid,
            nthread=params["nthread"],
        )
        return matrix, qid

    dtrain, train_qid = _matrix("train")
    dvalid, valid_qid = _matrix("valid")
    audit_uri = loop_config.get("audit_uri")
    if audit_uri:
        storage.write_json(
            storage.join(audit_uri, f"rank-{rank}.json"),
            {
                "rank": rank,
                "train_qids": np.unique(train_qid).tolist(),
                "valid_qids": np.unique(valid_qid).tolist(),
                "train_sorted": bool(np.all(np.diff(train_qid) >= 0)),
                "valid_sorted": bool(np.all(np.diff(valid_qid) >= 0)),
                "train_rows": len(train_qid),
            },
        )
    xgb.train(
        params,
        dtrain,
        num_boost_round=loop_config["num_boost_round"],
        evals=[(dvalid, "valid")],
        verbose_eval=False,
        callbacks=[
            RayTrainReportCallback(
                metrics={"valid_ndcg": f"valid-{EVAL_METRICS[-1]}"},
                frequency=0,
                checkpoint_at_end=True,
            )
        ],
    )


def train_data_parallel(
    features_uri: str,
    *,
    spec: FeatureSpec,
    params: RankerParams,
    num_boost_round: int,
    num_workers: int,
    storage_uri: str,
    name: str,
    cpus_per_worker: int = 1,
    gpu: bool = False,
    seed: int = 0,
    audit_uri: str | None = None,
) -> DataParallelResult:
    """Train ``params`` for ``num_boost_round`` rounds on ``num_workers`` Ray Train workers.

    Reads ``train/`` and ``valid/`` of the dataset at ``features_uri`` with Ray Data and
    gives each worker whole ranking groups only. With ``audit_uri`` every worker writes
    ``rank-<r>.json`` there (its qids and whether its rows were sorted). Ray must be
    initialized. Raises :class:`ConfigError` for a non-positive worker or round count.
    """
    if num_workers < 1:
        raise ConfigError(field="num_workers", value=num_workers, problem="must be >= 1")
    if num_boost_round < 1:
        raise ConfigError(field="num_boost_round", value=num_boost_round, problem="must be >= 1")
    import ray.data
    import ray.train
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    columns = list(dict.fromkeys(("qid", "position", "label", *spec.names)))
    datasets: dict[str, Any] = {}
    for split in ("train", "valid"):
        source = ray.data.read_parquet(
            **storage.ray_read_args(storage.join(features_uri, split)), columns=columns
        )
        for rank in range(num_workers):
            select: Callable[[Any], Any] = partial(
                _select_groups, rank=rank, num_workers=num_workers
            )
            datasets[f"{split}_{rank}"] = source.map_batches(select, batch_format="pyarrow")
    fs, path = storage.pyarrow_filesystem(storage_uri)
    trainer = XGBoostTrainer(
        _train_worker,
        train_loop_config={
            "features": list(spec.names),
            "params": xgb_params(
                params, nthread=cpus_per_worker, device="cuda" if gpu else "cpu", seed=seed
            ),
            "num_boost_round": num_boost_round,
            "audit_uri": audit_uri,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": float(cpus_per_worker)},
        ),
        run_config=ray.train.RunConfig(name=name, storage_path=path, storage_filesystem=fs),
        datasets=datasets,
        # Every worker reads only its own group partition, so Ray Train must not re-split.
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise Unavailable(f"data-parallel run {name!r} reported no checkpoint", name=name)
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    audits: tuple[dict[str, Any], ...] = ()
    if audit_uri:
        audits = tuple(
            storage.read_json(storage.join(audit_uri, f"rank-{r}.json")) for r in range(num_workers)
        )
    return DataParallelResult(
        booster=booster,
        rounds=booster.num_boosted_rounds(),
        metrics=dict(result.metrics or {}),
        shard_audits=audits,
    )
