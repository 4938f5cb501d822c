"""The Ray Tune sweep of XGBoost rankers.

:func:`run_sweep` puts the train and validation arrays (and the validation split's
candidate rows and logged slates) into the object store once
(``tune.with_parameters``), samples :func:`~attune.training.search_space.search_space`
with Optuna (seeded, behind a ``ConcurrencyLimiter``), and runs every trial as a Ray
task with the resources of :meth:`TuneConfig.trial_resources`; XGBoost's ``nthread``
is the CPU count the trial was given, so trials pack onto nodes without
oversubscribing them and a multi-node cluster runs more of them at once. Each boosting
round is reported through Ray's XGBoost Tune callback with two validation metrics:
NDCG@3 on the logged slates and the off-policy estimate of the value of the policy the
model induces at serving (all options at position 1, top three shown;
:mod:`attune.training.policy_value`). ``TuneConfig.select_by`` names the one that
drives Optuna, ASHA (which can stop weak trials after ``grace_period`` rounds), early
stopping, each trial's best round and the winner (default: the estimated policy
value). The final checkpoint holds every round trained and :func:`load_checkpoint`
cuts it to the best one. At the end of training each trial also reports its best
round's estimate with a bootstrap interval.

Every report also carries the node id and thread count of the trial, the boosting
round it belongs to, and whether it is the end-of-training report (which repeats the
last round's metrics along with the checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from attune import storage
from attune.data.spec import FeatureSpec
from attune.training.config import TuneConfig
from attune.training.dataset import RankingSplit
from attune.training.objective import training_matrix
from attune.training.policy_value import (
    EVAL_NAME,
    METRIC_NAME,
    LoggedSlates,
    estimate_value,
    logged_slates,
    serving_eval,
)
from attune.training.search_space import (
    EVAL_METRICS,
    SWEEP_METRIC,
    SWEEP_METRIC_SOURCE,
    RankerParams,
    search_space,
    xgb_params,
)

_MODE = "max"
#: The Tune metric of the estimated policy value (validation, serving semantics).
VALUE_METRIC = "valid_value"
#: Tune metric per selection rule of :class:`TuneConfig`.
SELECTION_METRICS: dict[str, str] = {"policy_value": VALUE_METRIC, "ndcg": SWEEP_METRIC}


@dataclass(frozen=True)
class _SweepData:
    """What every trial reads from the object store: the two splits as arrays."""

    train_X: np.ndarray
    train_label: np.ndarray
    train_qid: np.ndarray
    train_position: np.ndarray
    train_propensity: np.ndarray
    valid_X: np.ndarray
    valid_label: np.ndarray
    valid_qid: np.ndarray
    valid_log: LoggedSlates


@dataclass(frozen=True)
class TrialSummary:
    """One trial of a sweep: its point, its validation curve and where it ran."""

    trial_id: str
    params: dict[str, Any]
    curve: tuple[float, ...]  # validation NDCG after each boosting round
    node_id: str
    nthread: int
    checkpoint: str | None  # path of the trial's final checkpoint (every round trained)
    error: str | None = None
    device: str = ""  # the device XGBoost trained on ("cpu", "cuda:0", ...)
    value_curve: tuple[float, ...] = ()  # estimated policy value after each round
    selected_by: str = "policy_value"  # which curve picks the best round
    # The best round's estimate with its interval (value, ci_low, ci_high, estimator,
    # n, std_err), when the trial trained to its end (ASHA-stopped trials have none).
    value_estimate: dict[str, Any] | None = None

    @property
    def rounds(self) -> int:
        """Boosting rounds this trial trained (its compute, in trial-iterations)."""
        return len(self.curve)

    @property
    def selection_curve(self) -> tuple[float, ...]:
        return self.value_curve if self.selected_by == "policy_value" else self.curve

    @property
    def best_round(self) -> int:
        """1-based boosting round with the best selection metric (first one on ties)."""
        curve = self.selection_curve
        return int(np.argmax(curve)) + 1 if curve else 0

    @property
    def best_score(self) -> float:
        """The selection metric at :attr:`best_round` (what the winner is picked by)."""
        curve = self.selection_curve
        return max(curve) if curve else -math.inf

    @property
    def best_ndcg(self) -> float:
        """Validation NDCG@3 at :attr:`best_round`."""
        return self.curve[self.best_round - 1] if self.curve else -math.inf

    @property
    def best_value(self) -> float:
        """Estimated policy value (point) at :attr:`best_round`; NaN without a value curve."""
        if not self.value_curve or not self.curve:
            return math.nan
        return self.value_curve[min(self.best_round, len(self.value_curve)) - 1]


@dataclass(frozen=True)
class SweepResult:
    """Every trial of a sweep, the winner (best selection metric) and where state lives."""

    trials: tuple[TrialSummary, ...]
    best: TrialSummary
    experiment_path: str
    scheduler: str
    max_rounds: int
    selected_by: str = "policy_value"

    @property
    def total_rounds(self) -> int:
        """Trial-iterations the sweep spent (boosting rounds summed over trials)."""
        return sum(t.rounds for t in self.trials)

    @property
    def node_ids(self) -> frozenset[str]:
        return frozenset(t.node_id for t in self.trials if t.node_id)


def run_sweep(
    train: RankingSplit,
    valid: RankingSplit,
    *,
    spec: FeatureSpec,
    config: TuneConfig,
    name: str,
    storage_uri: str,
) -> SweepResult:
    """Run ``config.trials`` trials on the connected Ray cluster and summarize them.

    ``spec`` is the dataset's feature spec (the validation candidates are built with
    it). ``storage_uri`` (local dir or s3://) holds Tune's experiment state and checkpoints
    under ``name``; it must be reachable from every node. Ray must already be
    initialized. Raises :class:`~attune.errors.Unavailable` when no trial finished a
    single round.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
    from ray.tune.search import ConcurrencyLimiter, Searcher
    from ray.tune.search.optuna import OptunaSearch

    from attune.errors import Unavailable

    data = _SweepData(
        train_X=train.X,
        train_label=train.label,
        train_qid=train.qid,
        train_position=train.position,
        train_propensity=train.propensity,
        valid_X=valid.X,
        valid_label=valid.label,
        valid_qid=valid.qid,
        valid_log=logged_slates(valid, spec),
    )
    metric = SELECTION_METRICS[config.select_by]
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            data=data,
            device=config.device,
            seed=config.seed,
            max_rounds=config.max_rounds,
            early_stopping_rounds=config.early_stopping_rounds,
            select_by=config.select_by,
            weighting=config.weighting,
        ),
        config.trial_resources(),
    )
    searcher: Searcher = OptunaSearch(metric=metric, mode=_MODE, seed=config.seed)
    if config.max_concurrent is not None:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=config.max_concurrent)
    scheduler: TrialScheduler
    if config.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            # One past the budget: a trial that trains every round still gets its
            # end-of-training report (checkpoint, interval) before ASHA's cut-off.
            max_t=config.max_rounds + 1,
            grace_period=config.grace_period,
            reduction_factor=config.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    fs, path = storage.pyarrow_filesystem(storage_uri)
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=_MODE,
            num_samples=config.trials,
            search_alg=searcher,
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    trials = tuple(_summarize(grid[i], config.select_by) for i in range(len(grid)))
    finished = [t for t in trials if t.curve]
    if not finished:
        errors = [t.error for t in trials if t.error]
        raise Unavailable(
            f"no trial of sweep {name!r} finished a boosting round", name=name, errors=errors
        )
    best = max(finished, key=lambda t: t.best_score)
    return SweepResult(
        trials=trials,
        best=best,
        experiment_path=grid.experiment_path,
        scheduler=config.scheduler,
        max_rounds=config.max_rounds,
        selected_by=config.select_by,
    )


def _run_trial(
    config: dict[str, Any],
    *,
    data: _SweepData,
    device: str,
    seed: int,
    max_rounds: int,
    early_stopping_rounds: int,
    select_by: str = "policy_value",
    weighting: str = "none",
) -> None:
    """One trial: train a ranker on the shared arrays, reporting every round to Tune."""
    import ray
    from ray import tune
    from ray.tune.integration.xgboost import TuneReportCheckpointCallback

    resources = tune.get_context().get_trial_resources().required_resources
    nthread = max(1, int(resources.get("CPU", 1)))
    params = xgb_params(config, nthread=nthread, device=device, seed=seed)  # type: ignore[arg-type]
    dtrain = training_matrix(
        data.train_X,
        label=data.train_label,
        qid=data.train_qid,
        position=data.train_position,
        propensity=data.train_propensity,
        objective=params["objective"],
        weighting=weighting,  # type: ignore[arg-type]
        nthread=nthread,
    )
    dvalid = xgb.DMatrix(
        data.valid_X, label=data.valid_label.astype(np.float32), qid=data.valid_qid, nthread=nthread
    )
    dserve, value_metric = serving_eval(data.valid_log, nthread=nthread)
    tracker = _RoundTracker(
        node_id=ray.get_runtime_context().get_node_id(),
        nthread=nthread,
        log=data.valid_log,
        select_by=select_by,
        seed=seed,
    )
    if select_by == "policy_value":
        stop_on, stop_data = METRIC_NAME, EVAL_NAME
    else:
        stop_on, stop_data = EVAL_METRICS[-1], "valid"
    xgb.train(
        params,
        dtrain,
        num_boost_round=max_rounds,
        evals=[(dvalid, "valid"), (dserve, EVAL_NAME)],
        custom_metric=value_metric,
        verbose_eval=False,
        callbacks=[
            # Ordered: XGBoost stops asking callbacks after the first one that ends
            # training, so early stopping goes last and every round is reported; the
            # tracker marks the end-of-training report that carries the checkpoint.
            tracker,
            TuneReportCheckpointCallback(
                metrics={
                    SWEEP_METRIC: SWEEP_METRIC_SOURCE,
                    "valid_ndcg1": "valid-ndcg@1",
                    VALUE_METRIC: f"{EVAL_NAME}-{METRIC_NAME}",
                },
                frequency=0,
                checkpoint_at_end=True,
                results_postprocessing_fn=tracker.tag,
            ),
            xgb.callback.EarlyStopping(
                rounds=early_stopping_rounds,
                metric_name=stop_on,
                data_name=stop_data,
                maximize=True,
            ),
        ],
    )


class _RoundTracker(xgb.callback.TrainingCallback):
    """Adds round, node id, thread count and an end-of-training flag to every report.

    At the end of training it also estimates the best round's policy value with its
    bootstrap interval (the final report carries it as ``value_*``).
    """

    def __init__(
        self, *, node_id: str, nthread: int, log: LoggedSlates, select_by: str, seed: int
    ) -> None:
        self.node_id = node_id
        self.nthread = nthread
        self.round = 0
        self.final = False
        self.device = ""
        self.log = log
        self.select_by = select_by
        self.seed = seed
        self.estimate: dict[str, Any] = {}
        self.evals_log: Any = {}

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if epoch == 0:
            # What the booster actually runs on, as XGBoost resolved it.
            self.device = json.loads(model.save_config())["learner"]["generic_param"]["device"]
        self.round = epoch + 1
        self.evals_log = evals_log
        return False

    def after_training(self, model: Any) -> Any:
        self.final = True
        self._estimate_best(model)
        return model

    def _estimate_best(self, model: Any) -> None:
        """The best round's policy value with its bootstrap interval, into the final report."""
        if self.select_by == "policy_value":
            data, metric = EVAL_NAME, METRIC_NAME
        else:
            data, metric = "valid", EVAL_METRICS[-1]
        curve = self.evals_log.get(data, {}).get(metric, [])
        if not curve:
            return
        best = int(np.argmax(curve)) + 1
        scores = model.inplace_predict(
            self.log.presentations.candidates, iteration_range=(0, best), predict_type="margin"
        )
        est = estimate_value(self.log, scores, seed=self.seed)
        self.estimate = {f"value_{k}": v for k, v in est.to_dict().items()}

    def tag(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            **report,
            "round": self.round,
            "final": int(self.final),
            "node_id": self.node_id,
            "nthread": self.nthread,
            "device": self.device,
            **(self.estimate if self.final else {}),
        }


def _summarize(result: Any, select_by: str = "policy_value") -> TrialSummary:
    """A :class:`TrialSummary` from one Tune ``Result``."""
    df = result.metrics_dataframe
    config = dict(result.config or {})
    error = repr(result.error) if result.error is not None else None
    if df is None or df.empty or SWEEP_METRIC not in df:
        return TrialSummary(
            trial_id=str(config.get("trial_id", result.path)),
            params=config,
            curve=(),
            node_id="",
            nthread=0,
            checkpoint=None,
            error=error,
            selected_by=select_by,
        )
    rounds = df[df.get("final", 0) == 0] if "final" in df else df
    rounds = rounds.drop_duplicates(subset="round", keep="first") if "round" in rounds else rounds
    last = df.iloc[-1]
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    estimate = None
    if "value_value" in df and not _isnan(last.get("value_value")):
        estimate = {
            k: last[f"value_{k}"]
            for k in ("estimator", "value", "ci_low", "ci_high", "n", "std_err")
            if f"value_{k}" in df
        }
    return TrialSummary(
        trial_id=str(last.get("trial_id", "")),
        params=RankerParams.parse(config).model_dump(),
        curve=tuple(float(v) for v in rounds[SWEEP_METRIC]),
        node_id=str(last.get("node_id", "")),
        nthread=int(last.get("nthread", 0)),
        checkpoint=checkpoint,
        error=error,
        device=str(last.get("device", "")),
        value_curve=tuple(float(v) for v in rounds[VALUE_METRIC]) if VALUE_METRIC in rounds else (),
        selected_by=select_by,
        value_estimate=estimate,
    )


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_checkpoint(trial: TrialSummary, *, storage_uri: str, rounds: int | None = None) -> Any:
    """The booster of ``trial``'s final checkpoint, cut to its best round; None without one.

    ``rounds`` cuts it elsewhere (e.g. at the best NDCG round of a value-selected sweep).
    """
    if trial.checkpoint is None:
        return None
    from ray.tune import Checkpoint
    from ray.tune.integration.xgboost import TuneReportCheckpointCallback

    fs, _ = storage.pyarrow_filesystem(storage_uri)
    booster: xgb.Booster = TuneReportCheckpointCallback.get_model(
        Checkpoint(trial.checkpoint, filesystem=fs)
    )
    # The checkpoint holds every round trained, up to early stopping's patience past
    # the best one; the model is the best round's prefix of the ensemble.
    return booster[: rounds or trial.best_round]


def retrain(
    trial: TrialSummary,
    train: RankingSplit,
    *,
    config: TuneConfig,
    nthread: int,
) -> Any:
    """Train ``trial``'s point for its best number of rounds on the driver."""
    params = xgb_params(trial.params, nthread=nthread, device=config.device, seed=config.seed)
    dtrain = training_matrix(
        train.X,
        label=train.label,
        qid=train.qid,
        position=train.position,
        propensity=train.propensity,
        objective=params["objective"],
        weighting=config.weighting,
        nthread=nthread,
    )
    return xgb.train(params, dtrain, num_boost_round=max(1, trial.best_round))


def print_table(sweep: SweepResult) -> str:
    """Print the results table (rich) and return its plain-text rendering."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep: {len(sweep.trials)} trials ({sweep.scheduler})")
    for column in (
        "trial",
        "objective",
        "pairs",
        "depth",
        "eta",
        "mcw",
        "subsample",
        "colsample",
        "rounds",
        "best round",
        "valid NDCG@3",
        "valid value [95% CI]",
        "node",
    ):
        table.add_column(column, justify="left" if column in ("trial", "objective") else "right")
    for t in sorted(sweep.trials, key=lambda t: -t.best_score):
        p = t.params
        mark = " *" if t is sweep.best else ""
        table.add_row(
            t.trial_id + mark,
            str(p.get("objective", "?")),
            f"{p.get('lambdarank_pair_method')}/{p.get('lambdarank_num_pair_per_sample')}",
            str(p.get("max_depth", "?")),
            f"{p.get('eta', math.nan):.3f}",
            f"{p.get('min_child_weight', math.nan):.2f}",
            f"{p.get('subsample', math.nan):.2f}",
            f"{p.get('colsample_bytree', math.nan):.2f}",
            str(t.rounds),
            str(t.best_round),
            f"{t.best_ndcg:.4f}" if t.curve else (t.error or "no result")[:40],
            _value_cell(t),
            t.node_id[:8],
        )
    console = Console(record=True, width=160)
    console.print(table)
    console.print(
        f"best by {sweep.selected_by}: {sweep.best.trial_id} valid NDCG@3 "
        f"{sweep.best.best_ndcg:.4f}, estimated policy value {_value_cell(sweep.best)} at round "
        f"{sweep.best.best_round}; {sweep.total_rounds} trial-iterations in all"
    )
    return console.export_text()


def _value_cell(t: TrialSummary) -> str:
    """The best round's estimated value, with its interval when the trial reported one."""
    if not t.value_curve:
        return "-"
    e = t.value_estimate
    if e is None:
        return f"{t.best_value:.4f}"
    return f"{float(e['value']):.4f} [{float(e['ci_low']):.4f}, {float(e['ci_high']):.4f}]"


def plot_curves(sweep: SweepResult, path: str | Path) -> Path:
    """Write a PNG of validation NDCG and estimated policy value per trial per round.

    The winner is highlighted in both panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, attr, label in (
        (axes[0], "curve", "validation NDCG@3"),
        (axes[1], "value_curve", "estimated policy value (validation, SNIPS)"),
    ):
        for t in sweep.trials:
            curve = getattr(t, attr)
            if not curve:
                continue
            rounds = np.arange(1, len(curve) + 1)
            if t is sweep.best:
                ax.plot(rounds, curve, color="black", linewidth=2.2, label=f"best {t.trial_id}")
            else:
                ax.plot(rounds, curve, linewidth=1.0, alpha=0.6)
        ax.set_xlabel("boosting round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(
        f"{len(sweep.trials)} trials, {sweep.scheduler}: {sweep.total_rounds} rounds; "
        f"winner by {sweep.selected_by}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
