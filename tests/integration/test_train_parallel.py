"""Data-parallel training with Ray Train: whole ranking groups per worker, sorted by qid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attune.training.data_parallel import _worker_of, train_data_parallel
from attune.training.dataset import load_dataset
from attune.training.search_space import RankerParams
from tests.ranking_data import write_synthetic_ranking

pytestmark = pytest.mark.integration

PARAMS = RankerParams(
    objective="rank:ndcg",
    lambdarank_pair_method="topk",
    lambdarank_num_pair_per_sample=3,
    max_depth=3,
    eta=0.2,
    min_child_weight=1.0,
    subsample=1.0,
    colsample_bytree=1.0,
    reg_lambda=1.0,
    reg_alpha=0.0,
)


def test_two_workers_get_disjoint_whole_groups_sorted_by_qid(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """No qid is in two workers' shards, every train qid is in one, and each shard is sorted."""
    data = write_synthetic_ranking(str(tmp_path / "data"), presentations=600, seed=8)
    ds = load_dataset(data.features, splits=("train", "valid"))
    result = train_data_parallel(
        data.features,
        spec=ds.spec,
        params=PARAMS,
        num_boost_round=5,
        num_workers=2,
        storage_uri=str(tmp_path / "train"),
        name="dp",
        audit_uri=str(tmp_path / "audit"),
    )
    audits = sorted(result.shard_audits, key=lambda a: a["rank"])
    assert [a["rank"] for a in audits] == [0, 1]
    for split in ("train", "valid"):
        shards = [set(a[f"{split}_qids"]) for a in audits]
        assert shards[0] and shards[1]
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] == set(ds[split].qid.tolist())
        for rank, qids in enumerate(shards):
            owners = _worker_of(np.fromiter(qids, dtype=np.int64), 2)
            assert (owners == rank).all()
        assert all(a[f"{split}_sorted"] for a in audits)
    # Every row of a group went with it: rows per worker = 3 per group here.
    assert sum(a["train_rows"] for a in audits) == len(ds["train"])
    assert result.rounds == 5
    assert "valid_ndcg" in result.metrics
