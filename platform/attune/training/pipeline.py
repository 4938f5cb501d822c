"""``train_and_register``: load → sweep → evaluate → export (parity gate) → register.

The one entry point behind ``attune tune`` and ``jobs/tune.py``. The winner of the
sweep (by ``TuneConfig.select_by``: the off-policy estimate of the served policy's
value on validation by default, or validation NDCG@3) is loaded from its checkpoint
(or retrained on the driver when its trial kept none, or with Ray Train when
``data_parallel_workers`` is set), evaluated on the test split
(:mod:`attune.training.evaluate`), exported to ONNX and gated on the whole test split
(:func:`attune.training.export.export_and_check`): a model that fails the gate raises
:class:`~attune.errors.ParityError` and nothing is registered. The registered version
holds the model, its spec, params, metrics (with policy values), parity report,
lineage, plots, the governance stage's files (explanations, drift reference and, when
the histories hold a protected table, the fairness report and governance record) and a
model card.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attune import storage
from attune.errors import ConfigError
from attune.settings import get_settings
from attune.simulator.ground_truth import load_ground_truth
from attune.training import evaluate
from attune.training.config import TuneConfig
from attune.training.dataset import RankingDataset, load_dataset
from attune.training.tune import (
    SweepResult,
    TrialSummary,
    load_checkpoint,
    plot_curves,
    print_table,
    retrain,
    run_sweep,
)

if TYPE_CHECKING:
    from attune.training.export import Exporter


@dataclass(frozen=True)
class TrainResult:
    """What a sweep produced: the registered version and the figures behind it."""

    version_id: str
    registry: str
    best_trial: TrialSummary
    metrics: dict[str, Any]
    parity: dict[str, Any]
    report_dir: str
    files: tuple[str, ...]
    sweep_nodes: int
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why it is absent

    @property
    def share_of_oracle_lift(self) -> float:
        return float(self.metrics["share_of_oracle_lift"]["model"])


def train_and_register(config: TuneConfig, *, exporter: Exporter | None = None) -> TrainResult:
    """Run the sweep of ``config`` and register its winner; returns the :class:`TrainResult`.

    Starts a local Ray (or joins ``RAY_ADDRESS``) when none is connected, and shuts
    down only what it started. ``exporter`` replaces the ONNX exporter (tests push a
    bad conversion through the gate with it). Raises :class:`ConfigError` when no
    ground truth is known, :class:`~attune.errors.ParityError` when the export fails
    the gate (nothing is registered then), and the storage errors of
    :mod:`attune.storage` for missing inputs.
    """
    settings = get_settings()
    name = config.name or f"tune-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    report_dir = Path(config.report_dir or _default_report_dir(settings.store, name))
    report_dir.mkdir(parents=True, exist_ok=True)
    tune_storage = config.tune_storage or storage.join(settings.store, "tune")

    dataset = load_dataset(config.features)
    served_params: dict[str, Any] = {}
    if config.served:
        from attune.training.served import with_served

        dataset, served_params = with_served(
            dataset, config.served, correction=config.served_correction, seed=config.seed
        )
        if served_params and config.data_parallel_workers > 0:
            raise ConfigError(
                field="served_correction,data_parallel_workers",
                value=[config.served_correction, config.data_parallel_workers],
                problem="the data-parallel retrain does not take the correction's parameters",
            )
    histories = config.histories or dataset.histories
    if not histories:
        raise ConfigError(
            field="histories",
            value=None,
            problem="not given, and the dataset manifest names no histories",
        )
    test = dataset["test"]
    presentations = evaluate.presentations_from_split(test, dataset.spec)
    # Read the ground truth before the sweep: a missing one should fail in seconds.
    ground_truth = load_ground_truth(histories)
    ground_truth.rows(presentations.qid)

    with _ray_connected(settings.ray_address):
        sweep = run_sweep(
            dataset["train"],
            dataset["valid"],
            spec=dataset.spec,
            config=config,
            name=name,
            storage_uri=tune_storage,
            extra_params=served_params,
        )
        (report_dir / "sweep.txt").write_text(print_table(sweep))
        plot_curves(sweep, report_dir / "sweep_ndcg.png")
        booster = _winner_booster(
            sweep,
            dataset,
            config=config,
            name=name,
            storage_uri=tune_storage,
            extra_params=served_params,
        )

    def score(X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(X, predict_type="margin"))

    ranking = evaluate.ranking_metrics(test.qid, test.label, score(test.X))
    policy = evaluate.policy_evaluation(presentations, score=score, ground_truth=ground_truth)
    metrics: dict[str, Any] = {
        "test": ranking,
        **policy.to_dict(),
        "validation": {
            "ndcg@3": sweep.best.best_ndcg,
            "best_round": sweep.best.best_round,
            "trial_id": sweep.best.trial_id,
            "selected_by": sweep.selected_by,
        },
        "policy_value_estimate": _policy_value_estimates(
            dataset, score=score, ground_truth=ground_truth, seed=config.seed
        ),
        "sweep": {
            "trials": len(sweep.trials),
            "scheduler": sweep.scheduler,
            "trial_iterations": sweep.total_rounds,
            "nodes": len(sweep.node_ids),
        },
    }
    evaluate.write_report(metrics, policy, report_dir)

    from attune.training.export import export_and_check, export_onnx

    onnx_bytes, parity = export_and_check(
        booster, test.X, test.qid, exporter=exporter or export_onnx
    )
    files: dict[str, bytes] = {
        "model.onnx": onnx_bytes,
        "model.ubj": bytes(booster.save_raw("ubj")),
        "feature_spec.json": dataset.spec.to_json().encode(),
        "params.json": storage.json_bytes(_params(sweep, config, booster.num_boosted_rounds())),
        "metrics.json": storage.json_bytes(metrics),
        "parity.json": storage.json_bytes(parity.to_dict()),
        "lineage.json": storage.json_bytes(_lineage(dataset, histories, sweep, config, name)),
    }
    for png in sorted(report_dir.glob("*.png")):
        files[f"plots/{png.name}"] = png.read_bytes()
    from attune.governance.version_files import governance_files

    governance, skipped = governance_files(
        booster=booster,
        test=test,
        feature_names=dataset.spec.names,
        spec_hash=dataset.spec.hash,
        served_rows=presentations.candidates,
        score=score,
        histories=histories,
        name=name,
        params=json.loads(files["params.json"]),
        metrics=metrics,
        parity=parity.to_dict(),
        lineage=json.loads(files["lineage.json"]),
    )
    files.update(governance)

    from attune.registry import Registry

    version = Registry(config.registry).register(
        files,
        metadata=storage.to_jsonable(
            {
                "kind": "xgboost-ranker",
                "experiment": name,
                "dataset": config.features,
                "share_of_oracle_lift": policy.share_of_oracle_lift["model"],
                "test_ndcg@3": ranking["ndcg@3"],
            }
        ),
    )
    print(version)
    return TrainResult(
        version_id=version,
        registry=config.registry,
        best_trial=sweep.best,
        metrics=metrics,
        parity=parity.to_dict(),
        report_dir=str(report_dir),
        files=tuple(sorted(files)),
        sweep_nodes=len(sweep.node_ids),
        skipped=skipped,
    )


def _policy_value_estimates(
    dataset: RankingDataset, *, score: evaluate.Scorer, ground_truth: Any, seed: int
) -> dict[str, Any]:
    """Off-policy estimates (with intervals) of the served policy on validation and test.

    Each split also gets its ``true`` value from the ground truth (which is reported
    here and never used to select) and whether the interval covers it.
    """
    from attune.simulator.ground_truth import policy_values
    from attune.training.policy_value import estimate_value, logged_slates

    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        log = logged_slates(dataset[split], dataset.spec)
        scores = score(log.presentations.candidates)
        estimate = estimate_value(log, scores, seed=seed).to_dict()
        true = policy_values(
            ground_truth,
            presentation_ids=log.presentations.qid,
            model_scores=log.scores_matrix(scores),
        )["model"]
        low, high = float(estimate["ci_low"]), float(estimate["ci_high"])
        out[split] = {**estimate, "true": true, "covers_true": low <= true <= high}
    return out


def _default_report_dir(store: str, name: str) -> str:
    base = Path.cwd() / ".attune" if storage.is_s3(store) else Path(store)
    return str(base / "runs" / name)


@contextmanager
def _ray_connected(address: str | None) -> Iterator[None]:
    """Use the connected Ray; else join ``address`` (or start a local one) and stop it after."""
    import ray

    if ray.is_initialized():
        yield
        return
    # "local" rather than None: None would also join any cluster someone `ray start`ed
    # on this host, which is not what "no RAY_ADDRESS" means here.
    from attune.runtime import init_ray

    init_ray(address or "local")
    try:
        yield
    finally:
        ray.shutdown()


def _winner_booster(
    sweep: SweepResult,
    dataset: RankingDataset,
    *,
    config: TuneConfig,
    name: str,
    storage_uri: str,
    extra_params: dict[str, Any] | None = None,
) -> Any:
    """The winner as a booster cut to its best round (see the module docstring)."""
    best = sweep.best
    if config.data_parallel_workers > 0:
        from attune.training.data_parallel import train_data_parallel
        from attune.training.search_space import RankerParams

        return train_data_parallel(
            dataset.uri,
            spec=dataset.spec,
            params=RankerParams.parse(best.params),
            num_boost_round=best.best_round,
            num_workers=config.data_parallel_workers,
            storage_uri=storage_uri,
            name=f"{name}-winner",
            cpus_per_worker=config.cpus_per_trial,
            gpu=config.gpu,
            seed=config.seed,
        ).booster
    booster = load_checkpoint(best, storage_uri=storage_uri)
    if booster is None:
        booster = retrain(
            best,
            dataset["train"],
            config=config,
            nthread=os.cpu_count() or 1,
            extra_params=extra_params,
        )
    return booster


def _params(sweep: SweepResult, config: TuneConfig, rounds: int) -> dict[str, Any]:
    from attune.training.search_space import xgb_params

    return {
        "ranker": sweep.best.params,
        "xgboost": xgb_params(
            sweep.best.params, nthread=config.cpus_per_trial, device=config.device, seed=config.seed
        ),
        "num_boost_round": rounds,
        "trial_id": sweep.best.trial_id,
        "sweep": config.model_dump(mode="json"),
    }


def _code_version() -> str:
    """``git describe`` of the source tree when it is a checkout, else the package version."""
    import attune

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(attune.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or attune.__version__
    except (OSError, subprocess.SubprocessError):
        return attune.__version__


def _lineage(
    dataset: RankingDataset, histories: str, sweep: SweepResult, config: TuneConfig, name: str
) -> dict[str, Any]:
    from importlib.metadata import version

    libraries = ("ray", "xgboost", "onnxruntime", "onnx", "onnxmltools", "numpy", "pyarrow")
    return {
        "dataset": {
            "uri": dataset.uri,
            "content_hash": dataset.content_hash,
            "feature_spec_hash": dataset.spec.hash,
            "rows": {k: len(v) for k, v in dataset.splits.items()},
            "served": dataset.manifest.get("served"),
        },
        "histories": histories,
        "code_version": _code_version(),
        "versions": {"python": platform.python_version(), **{n: version(n) for n in libraries}},
        "experiment": {
            "name": name,
            "path": sweep.experiment_path,
            "trials": len(sweep.trials),
            "seed": config.seed,
        },
        "created_at": datetime.now(UTC).isoformat(),
    }
