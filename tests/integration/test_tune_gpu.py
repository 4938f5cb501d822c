"""``--gpu``: every trial trains with ``device="cuda"`` on one GPU (skips without a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attune.training.config import TuneConfig
from attune.training.dataset import load_dataset
from attune.training.tune import load_checkpoint, run_sweep
from tests.ranking_data import write_synthetic_ranking

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_gpu_sweep_trains_every_trial_on_cuda(ray_cluster: Any, tmp_path: Path) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the cluster offers no GPU")
    data = write_synthetic_ranking(str(tmp_path / "data"), presentations=600, seed=2)
    ds = load_dataset(data.features, splits=("train", "valid"))
    config = TuneConfig(
        features=data.features,
        registry=str(tmp_path / "registry"),
        trials=2,
        gpu=True,
        max_rounds=8,
        early_stopping_rounds=7,
        grace_period=2,
        scheduler="fifo",
    )
    sweep = run_sweep(
        ds["train"],
        ds["valid"],
        spec=ds.spec,
        config=config,
        name="gpu",
        storage_uri=str(tmp_path / "t"),
    )
    assert all(t.rounds == 8 for t in sweep.trials)
    assert all(t.device.startswith("cuda") for t in sweep.trials)
    assert load_checkpoint(sweep.best, storage_uri=str(tmp_path / "t")) is not None
