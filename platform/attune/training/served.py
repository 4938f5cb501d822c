"""Training on what was served: reward rows (``attune outcomes``) as extra ranking groups.

``attune tune --served <rewards>`` appends the served decisions to the train split: one
group per decision, one row per shown position, with the features the ingress logged
(no recomputation), the ``position`` feature set to the position the option was shown at
(the ranking dataset's contract: serving scores every candidate at 1, training sees
where it was shown) and a graded label from the reward row, on the scale of the history's
labels: 3 accepted and current, 2 accepted (current false or unknown), 0 otherwise (an
engagement without completion leaves no event, so 1 never occurs).

The logging policy chose which options were shown and where, so the served rows are
biased by position and by selection. :data:`CORRECTIONS`:

``none``
    the rows as they are (position is a feature, as in the history);
``lambdarank_unbiased``
    XGBoost's position debiasing (``lambdarank_unbiased``), which estimates the
    examination bias of each position from the data; rows of every group are in shown
    order, as it requires;
``ipw``
    only exploring decisions (logged propensities), each group weighted by the inverse of
    its slate's propensity (product of the per-position propensities, clipped at the 95th
    percentile, normalized to mean 1), applied by systematic resampling of the groups
    (seeded), so the sweep's trials need no weight plumbing.

:data:`DEFAULT_CORRECTION` is ``none``: by the simulator's true policy value it beat both
on every seed of ``bench/served_training.py`` (docs/training.md); position is a feature,
trained at the shown position and served at 1, which already absorbs examination bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from attune.data.spec import FeatureSpec
from attune.errors import FeatureSpecMismatch, InvalidInput
from attune.training.dataset import RankingDataset, RankingSplit

Correction = Literal["none", "lambdarank_unbiased", "ipw"]
CORRECTIONS: tuple[str, ...] = ("none", "lambdarank_unbiased", "ipw")
#: The correction ``attune tune --served`` applies unless told otherwise (docs/training.md).
DEFAULT_CORRECTION: Correction = "none"
#: IPW weights above this quantile of the served groups' weights are clipped to it.
IPW_CLIP_QUANTILE = 0.95
#: Expected copies of a served group under IPW resampling (more: less resampling noise).
IPW_COPIES = 2


@dataclass(frozen=True)
class ServedGroups:
    """Served decisions as ranking groups (rows in shown order) and their propensities."""

    split: RankingSplit  # qid 0..n_groups-1 in decision order; propensity NaN when not exploring
    decision_id: np.ndarray  # (n_groups,) object
    slate_propensity: np.ndarray  # (n_groups,) product of the positions' propensities, NaN

    @property
    def exploring(self) -> np.ndarray:
        return ~np.isnan(self.slate_propensity)


def served_groups(table: pa.Table, spec: FeatureSpec, *, source: str = "served") -> ServedGroups:
    """Ranking groups of a :data:`attune.rewards.attribution.REWARD_SCHEMA` table.

    Raises :class:`FeatureSpecMismatch` naming ``source`` when a row was served under
    another feature spec or its feature vector has the wrong length.
    """
    frame = table.to_pandas()
    if frame.empty:
        empty = RankingSplit(
            name="served",
            X=np.empty((0, len(spec.names)), dtype=np.float32),
            label=np.empty(0, dtype=np.int8),
            qid=np.empty(0, dtype=np.int64),
            option_id=np.empty(0, dtype=object),
            position=np.empty(0, dtype=np.int8),
            borrower_id=np.empty(0, dtype=np.int64),
            propensity=np.empty(0, dtype=np.float64),
            source=source,
        )
        return ServedGroups(empty, np.empty(0, dtype=object), np.empty(0))
    other = frame.loc[frame["feature_spec_hash"] != spec.hash, "feature_spec_hash"]
    if len(other):
        raise FeatureSpecMismatch(
            expected=spec.hash,
            actual=str(other.iloc[0]),
            problem=f"{source}: {len(other)} reward rows were served under another feature spec",
        )
    frame = frame.sort_values(["ts", "decision_id", "position"], kind="stable").reset_index(
        drop=True
    )
    lengths = frame["features"].map(len).to_numpy()
    if (lengths != len(spec.names)).any():
        bad = int(lengths[lengths != len(spec.names)][0])
        raise FeatureSpecMismatch(
            expected=len(spec.names),
            actual=bad,
            problem=f"{source}: a logged feature vector has {bad} values",
        )
    X = np.stack(frame["features"].to_numpy()).astype(np.float32)
    X[:, spec.names.index("position")] = frame["position"].to_numpy(dtype=np.float32)
    decision = frame["decision_id"].to_numpy()
    first = np.r_[True, decision[1:] != decision[:-1]]
    qid = np.cumsum(first) - 1
    accepted = frame["accepted"].to_numpy(dtype=bool)
    current = frame["current"].fillna(False).to_numpy(dtype=bool)
    label = np.where(accepted & current, 3, np.where(accepted, 2, 0)).astype(np.int8)
    propensity = frame["propensity"].astype("float64").to_numpy()
    split = RankingSplit(
        name="served",
        X=X,
        label=label,
        qid=qid.astype(np.int64),
        option_id=frame["option_id"].to_numpy(dtype=object),
        position=frame["position"].to_numpy(dtype=np.int8),
        borrower_id=np.full(len(frame), -1, dtype=np.int64),  # only the hash is logged
        propensity=propensity,
        source=source,
    )
    n_groups = int(qid[-1]) + 1
    slate = np.ones(n_groups)
    np.multiply.at(slate, qid, propensity)  # NaN anywhere in a group makes it NaN
    return ServedGroups(split, decision[first], slate)


def ipw_group_weights(slate_propensity: np.ndarray) -> np.ndarray:
    """Inverse slate propensities, clipped at :data:`IPW_CLIP_QUANTILE`, mean 1."""
    w = 1.0 / np.asarray(slate_propensity, dtype=np.float64)
    if w.size == 0:
        return w
    w = np.minimum(w, np.quantile(w, IPW_CLIP_QUANTILE))
    return w / w.mean()


def _resample(groups: ServedGroups, weights: np.ndarray, *, seed: int) -> np.ndarray:
    """Group copies by systematic resampling: ``IPW_COPIES * weight`` in expectation."""
    expected = IPW_COPIES * weights
    u = np.random.default_rng(seed).random()
    edges = np.floor(np.cumsum(expected) + u)
    return np.diff(np.r_[np.floor(u), edges]).astype(np.int64)


@dataclass(frozen=True)
class TrainingSet:
    """The train split to fit on and the XGBoost parameters the correction adds."""

    train: RankingSplit
    params: dict[str, Any]
    served_groups: int  # served groups in ``train`` (copies included)


def combine(
    train: RankingSplit, groups: ServedGroups, *, correction: Correction, seed: int = 0
) -> TrainingSet:
    """``train`` followed by the served groups under ``correction`` (qid stays sorted)."""
    if correction not in CORRECTIONS:
        raise InvalidInput(
            f"unknown correction {correction!r} (known: {', '.join(CORRECTIONS)})",
            field="served_correction",
            value=correction,
        )
    s = groups.split
    params: dict[str, Any] = {}
    if correction == "ipw":
        keep = np.flatnonzero(groups.exploring)
        copies = np.zeros(len(groups.slate_propensity), dtype=np.int64)
        copies[keep] = _resample(
            groups, ipw_group_weights(groups.slate_propensity[keep]), seed=seed
        )
    else:
        copies = np.ones(len(groups.slate_propensity), dtype=np.int64)
        if correction == "lambdarank_unbiased":
            params = {"lambdarank_unbiased": True}
    group_of_copy = np.repeat(np.arange(copies.size), copies)
    starts = np.searchsorted(s.qid, np.arange(copies.size))
    sizes = np.diff(np.r_[starts, len(s.qid)])
    rows = np.concatenate(
        [np.arange(starts[g], starts[g] + sizes[g]) for g in group_of_copy]
        or [np.empty(0, dtype=np.int64)]
    ).astype(np.int64)
    new_qid = np.repeat(np.arange(group_of_copy.size), sizes[group_of_copy])
    base = int(train.qid.max()) + 1 if len(train.qid) else 0
    served = replace(s.take(rows), qid=(base + new_qid).astype(np.int64))
    merged = RankingSplit(
        name=train.name,
        X=np.concatenate([train.X, served.X]),
        label=np.concatenate([train.label, served.label]),
        qid=np.concatenate([train.qid, served.qid]),
        option_id=np.concatenate([train.option_id, served.option_id]),
        position=np.concatenate([train.position, served.position]),
        borrower_id=np.concatenate([train.borrower_id, served.borrower_id]),
        propensity=np.concatenate([train.propensity, served.propensity]),
        source=train.source,
    )
    return TrainingSet(train=merged, params=params, served_groups=int(group_of_copy.size))


def load_served(uris: Sequence[str], spec: FeatureSpec) -> ServedGroups:
    """The reward datasets at ``uris`` (each a directory of parquet files) as groups."""
    from attune.rewards.job import read_rewards

    tables = [read_rewards(uri) for uri in uris]
    return served_groups(pa.concat_tables(tables), spec, source=", ".join(uris))


def with_served(
    dataset: RankingDataset,
    uris: Sequence[str],
    *,
    correction: Correction = DEFAULT_CORRECTION,
    seed: int = 0,
) -> tuple[RankingDataset, dict[str, Any]]:
    """``dataset`` whose train split also holds the served rewards at ``uris``.

    Returns the dataset and the XGBoost parameters the correction needs (merge them into
    every trial's parameters).
    """
    groups = load_served(uris, dataset.spec)
    result = combine(dataset["train"], groups, correction=correction, seed=seed)
    splits = {**dataset.splits, "train": result.train}
    manifest = {
        **dataset.manifest,
        "served": {
            "uris": list(uris),
            "correction": correction,
            "decisions": len(groups.decision_id),
            "exploring": int(groups.exploring.sum()),
            "groups_added": result.served_groups,
        },
    }
    return replace(dataset, splits=splits, manifest=manifest), result.params
