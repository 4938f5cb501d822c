"""The Ray Tune sweep on the session's two-node cluster, and ``attune tune`` end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attune import storage
from attune.training.config import TuneConfig
from attune.training.dataset import load_dataset
from attune.training.tune import load_checkpoint, run_sweep
from tests.ranking_data import SyntheticRanking, write_synthetic_ranking

pytestmark = pytest.mark.integration

#: Every file a registered version holds (contracts §4), plots aside.
VERSION_FILES = {
    "model.onnx",
    "model.ubj",
    "feature_spec.json",
    "params.json",
    "metrics.json",
    "parity.json",
    "lineage.json",
    "model_card.md",
    "fairness.json",
    "explanations.json",
    "drift_reference.json",
    "governance.json",
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRanking:
    root = tmp_path_factory.mktemp("ranking")
    return write_synthetic_ranking(str(root), presentations=900, seed=5)


def _config(data: SyntheticRanking, tmp: Path, **overrides: Any) -> TuneConfig:
    values: dict[str, Any] = {
        "features": data.features,
        "registry": str(tmp / "registry"),
        "trials": 6,
        "max_rounds": 12,
        "early_stopping_rounds": 11,
        "grace_period": 2,
        "reduction_factor": 2.0,
        "seed": 3,
    }
    return TuneConfig(**(values | overrides))


def test_sweep_runs_trials_on_both_nodes_with_one_thread_per_cpu(
    ray_cluster: Any, synthetic: SyntheticRanking, tmp_path: Path
) -> None:
    """Trials land on both nodes of the cluster; each trains with nthread = its CPUs."""
    import ray

    ds = load_dataset(synthetic.features, splits=("train", "valid"))
    config = _config(synthetic, tmp_path)
    sweep = run_sweep(
        ds["train"],
        ds["valid"],
        spec=ds.spec,
        config=config,
        name="spread",
        storage_uri=str(tmp_path / "t"),
    )
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2
    assert sweep.node_ids == alive
    assert len(sweep.trials) == config.trials
    assert all(t.nthread == config.cpus_per_trial for t in sweep.trials)
    assert all(t.rounds >= config.grace_period for t in sweep.trials)
    # Selected by the estimated policy value (the default); NDCG is still reported.
    assert sweep.selected_by == "policy_value"
    assert sweep.best.best_value == max(t.best_value for t in sweep.trials)
    assert all(len(t.value_curve) == len(t.curve) == t.rounds for t in sweep.trials)
    full = [t for t in sweep.trials if t.rounds == config.max_rounds]
    assert full, "some trial should train its whole budget"
    for t in full:  # end-of-training report: the best round's estimate with its interval
        assert t.value_estimate is not None
        assert (
            t.value_estimate["ci_low"] <= t.value_estimate["value"] <= t.value_estimate["ci_high"]
        )
        assert t.value_estimate["value"] == pytest.approx(t.best_value, abs=1e-6)


def test_asha_stops_weak_trials_fifo_runs_every_trial_to_the_budget(
    ray_cluster: Any, synthetic: SyntheticRanking, tmp_path: Path
) -> None:
    """Early stopping cannot fire within the budget here, so short trials were ASHA's doing."""
    ds = load_dataset(synthetic.features, splits=("train", "valid"))
    rounds = {}
    for scheduler in ("asha", "fifo"):
        config = _config(synthetic, tmp_path, scheduler=scheduler)
        sweep = run_sweep(
            ds["train"],
            ds["valid"],
            spec=ds.spec,
            config=config,
            name=scheduler,
            storage_uri=str(tmp_path),
        )
        rounds[scheduler] = [t.rounds for t in sweep.trials]
    assert rounds["fifo"] == [12] * 6
    assert min(rounds["asha"]) < 12
    assert sum(rounds["asha"]) < sum(rounds["fifo"])


def test_winner_checkpoint_is_cut_to_its_best_round(
    ray_cluster: Any, synthetic: SyntheticRanking, tmp_path: Path
) -> None:
    """The winner's booster has its best round count and scores its best NDCG; 2 CPUs, 2 threads."""
    ds = load_dataset(synthetic.features, splits=("train", "valid"))
    config = _config(
        synthetic, tmp_path, trials=2, early_stopping_rounds=3, scheduler="fifo", cpus_per_trial=2
    )
    sweep = run_sweep(
        ds["train"],
        ds["valid"],
        spec=ds.spec,
        config=config,
        name="ckpt",
        storage_uri=str(tmp_path),
    )
    assert [t.nthread for t in sweep.trials] == [2, 2]
    booster = load_checkpoint(sweep.best, storage_uri=str(tmp_path))
    assert booster.num_boosted_rounds() == sweep.best.best_round
    import xgboost as xgb

    valid = ds["valid"]
    dvalid = xgb.DMatrix(valid.X, label=valid.label.astype(np.float32), qid=valid.qid)
    booster.set_param({"eval_metric": "ndcg@3"})
    score = float(booster.eval(dvalid, "valid").split("valid-ndcg@3:")[1])
    assert score == pytest.approx(sweep.best.best_ndcg, abs=1e-6)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_attune_tune_registers_one_complete_version(
    ray_cluster: Any,
    synthetic: SyntheticRanking,
    tmp_path: Path,
    where: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`attune tune --trials 8` registers a version with every file and prints its id."""
    from attune.cli import main
    from attune.registry import Registry

    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        data = write_synthetic_ranking(f"{bucket}/data", presentations=900, seed=5)
        registry, tune_storage = f"{bucket}/registry", f"{bucket}/tune"
    else:
        data, registry, tune_storage = synthetic, str(tmp_path / "registry"), str(tmp_path / "t")
    argv = ["tune", "--features", data.features, "--registry", registry, "--trials", "8"]
    argv += ["--max-concurrent", "4", "--max-rounds", "10", "--early-stopping-rounds", "4"]
    argv += ["--grace-period", "2", "--tune-storage", tune_storage, "--name", f"e2e-{where}"]
    argv += ["--report-dir", str(tmp_path / "report")]
    assert main(argv) == 0

    versions = Registry(registry).versions()
    assert len(versions) == 1
    version = versions[0].version
    assert version in capsys.readouterr().out.splitlines()
    base = storage.join(registry, "versions", version)
    names = set(versions[0].files)
    assert names >= VERSION_FILES
    assert {"plots/sweep_ndcg.png", "plots/policy_values.png"} <= names
    metrics = storage.read_json(storage.join(base, "metrics.json"))
    assert set(metrics["policy_values"]) == {"model", "random", "legacy", "best_fixed", "oracle"}
    assert metrics["share_of_oracle_lift"]["oracle"] == pytest.approx(1.0)
    assert metrics["sweep"]["trials"] == 8
    # The winner was selected by the estimated policy value; both splits report the
    # estimate with its interval and the ground truth's value of the same policy.
    assert metrics["validation"]["selected_by"] == "policy_value"
    for split in ("valid", "test"):
        estimate = metrics["policy_value_estimate"][split]
        assert estimate["estimator"] == "snips"
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
        assert estimate["covers_true"] == (
            estimate["ci_low"] <= estimate["true"] <= estimate["ci_high"]
        )
    assert metrics["policy_value_estimate"]["test"]["true"] == pytest.approx(
        metrics["policy_values"]["model"]
    )
    parity = storage.read_json(storage.join(base, "parity.json"))
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    lineage = storage.read_json(storage.join(base, "lineage.json"))
    manifest = storage.read_json(storage.join(data.features, "manifest.json"))
    assert lineage["dataset"]["content_hash"] == manifest["content_hash"]
    assert lineage["dataset"]["uri"] == data.features
    assert set(lineage["versions"]) >= {"ray", "xgboost", "onnxruntime"}
    params = json.loads(storage.read_bytes(storage.join(base, "params.json")))
    assert params["ranker"]["objective"] in {"rank:ndcg", "rank:pairwise", "rank:map"}


def test_a_model_failing_the_parity_gate_is_never_registered(
    ray_cluster: Any, synthetic: SyntheticRanking, tmp_path: Path
) -> None:
    """The naive conversion (a logistic classifier) goes through the gate: nothing registered."""
    from attune.errors import ParityError
    from attune.registry import Registry
    from attune.training.export import naive_export
    from attune.training.pipeline import train_and_register

    config = _config(
        synthetic,
        tmp_path,
        trials=2,
        max_rounds=5,
        early_stopping_rounds=4,
        scheduler="fifo",
        tune_storage=str(tmp_path / "t"),
        report_dir=str(tmp_path / "report"),
        name="gate",
    )
    with pytest.raises(ParityError) as info:
        train_and_register(config, exporter=naive_export)
    assert info.value.max_abs_diff > 1e-4
    assert Registry(config.registry).versions() == []
    assert not Path(config.registry, "versions").exists() or not any(
        Path(config.registry, "versions").iterdir()
    )


def test_extra_params_reach_every_trial(
    ray_cluster: Any, synthetic: SyntheticRanking, tmp_path: Path
) -> None:
    """A served-data correction's parameters (lambdarank_unbiased) are in the trials' boosters."""
    ds = load_dataset(synthetic.features, splits=("train", "valid"))
    config = _config(synthetic, tmp_path, trials=2, max_rounds=4, early_stopping_rounds=3,
                     grace_period=2, scheduler="fifo")  # fmt: skip
    sweep = run_sweep(
        ds["train"],
        ds["valid"],
        spec=ds.spec,
        config=config,
        name="extra",
        storage_uri=str(tmp_path),
        extra_params={"lambdarank_unbiased": True},
    )
    booster = load_checkpoint(sweep.best, storage_uri=str(tmp_path))
    learner = json.loads(booster.save_config())["learner"]
    assert learner["objective"]["lambdarank_param"]["lambdarank_unbiased"] == "1"
