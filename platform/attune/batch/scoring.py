"""Scoring one batch of borrowers for a campaign: eligibility, arms, rows, ONNX, order, log.

:class:`BatchRanker` is the callable class Ray Data runs in an actor pool
(``map_batches``): its constructor loads the ONNX Runtime sessions once per actor, each
call ranks one batch of snapshot rows. It is plain Python, so a single process can
call it in a loop (the benchmark's baseline) and unit tests can call it directly.

What it shares with the online app, so that a borrower gets the same answer in both:

* candidate rows: :func:`attune.data.features.candidate_block`, which is
  :func:`~attune.data.features.candidate_matrix` (the serving path) for many borrowers;
* scores: :class:`attune.serving.model.OnnxScorer` (same session options);
* arm: :meth:`attune.serving.traffic_split.TrafficSplit.arm` with the rollout's salt and
  canary share, the decision the ingress makes per request;
* order: highest score first, ties in candidate order (the ingress's greedy policy);
* decision log: :data:`attune.serving.decision_log.DECISION_SCHEMA` rows through
  :class:`~attune.serving.decision_log.ParquetSink` (``role="primary"``,
  ``feature_source="batch"``, ``borrower_hash`` from
  :func:`~attune.experiments.assignment.hash_borrower` with the same secret salt).

Decision ids are ``blake2b(run_id:borrower_id)``, and each batch's log file is named
after the run and the batch's first borrower, so a retried task rewrites its own file
instead of adding duplicates.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from attune.batch.eligibility import EligibilityVerdict, TouchpointRules, apply_rules
from attune.data.features import candidate_block
from attune.data.schema import TS
from attune.data.spec import BORROWER_FEATURES
from attune.experiments.assignment import hash_borrower
from attune.experiments.exploration import ExplorationConfig, Explorer
from attune.serving.candidate_rows import SERVING_POSITION
from attune.serving.decision_log import DECISION_SCHEMA, DecisionSink, ParquetSink
from attune.serving.model import ModelStore, OnnxScorer
from attune.serving.traffic_split import TrafficSplit

#: Where the decision log says the features came from.
FEATURE_SOURCE = "batch"
#: A borrower whose model answered non-finite scores (never ranked on garbage).
MODEL_FAILED = "model_failed"
#: Output partition of ranked and excluded borrowers (``<out>/ranked``, ``<out>/excluded``).
STATUS = "_status"
_STRINGS = pa.list_(pa.string())
_FLOATS = pa.list_(pa.float64())
#: One row per borrower of the snapshot: ranked ones carry the slate, excluded ones the rule.
OUTPUT_SCHEMA = pa.schema(
    [
        ("borrower_id", pa.int64()),
        ("touchpoint", pa.string()),
        ("as_of", TS),
        ("decided_at", TS),
        ("arm", pa.string()),
        ("model_version", pa.string()),
        ("decision_id", pa.string()),
        ("options", _STRINGS),
        ("scores", _FLOATS),
        ("propensities", _FLOATS),
        ("withheld_by", _STRINGS),
        ("excluded_by", pa.string()),
        (STATUS, pa.string()),
    ]
)


@dataclass(frozen=True)
class RankPlan:
    """Everything an actor needs (picklable); model versions are resolved ids, not aliases."""

    registry_uri: str
    champion: str
    canary: str | None
    canary_share: float
    salt: str
    touchpoint: str
    rules: TouchpointRules
    borrower_salt: str
    run_id: str
    decided_at: datetime
    decision_store: str | None  # store root of the decision log; None: no log
    # the rollout's exploration when active; None ranks greedily (as the app then does)
    exploration: ExplorationConfig | None = None


def decision_id(run_id: str, borrower_id: int) -> str:
    """The decision id of ``borrower_id`` in run ``run_id`` (stable across task retries)."""
    return hashlib.blake2b(f"{run_id}:{borrower_id}".encode(), digest_size=16).hexdigest()


def _list_array(values: npt.NDArray[Any], counts: npt.NDArray[np.int64], kind: pa.DataType) -> Any:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=kind.value_type))


def greedy_order(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Per row, option indices by score (highest first, ties in candidate order);
    ``-inf`` (withheld) options come last."""
    return np.argsort(-scores, axis=1, kind="stable")


@dataclass(frozen=True)
class _Drawn:
    """Exploring decisions of a batch: per borrower, the slate's propensities and policy."""

    propensities: list[list[float] | None]
    policy: npt.NDArray[np.object_]


@dataclass(frozen=True)
class _Group:
    """Borrowers (positions in the batch) one model ranked, with their candidate rows."""

    scorer: OnnxScorer
    index: npt.NDArray[np.int64]
    rows: npt.NDArray[np.float32]  # (len(index), n_options, n_features)


class BatchRanker:
    """Ranks batches of snapshot rows (``borrower_id``, ``as_of``, borrower features)."""

    def __init__(
        self,
        plan: RankPlan,
        *,
        store: ModelStore | None = None,
        sink: DecisionSink | None = None,
    ) -> None:
        if store is None:
            from attune.registry import Registry

            store = Registry(plan.registry_uri)
        self.plan = plan
        self.champion = OnnxScorer.load(store, plan.champion)
        self.canary = OnnxScorer.load(store, plan.canary) if plan.canary else None
        self.split = TrafficSplit(
            salt=plan.salt, canary_share=plan.canary_share if self.canary else 0.0
        )
        if sink is None and plan.decision_store is not None:
            sink = ParquetSink(plan.decision_store)
        self.sink = sink
        self._options = np.asarray(plan.rules.options, dtype=object)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        plan = self.plan
        n = batch.num_rows
        ids = batch.column("borrower_id").to_numpy().astype(np.int64)
        columns = {name: batch.column(name).to_numpy() for name in BORROWER_FEATURES}
        verdict = apply_rules(plan.rules, columns, n)
        excluded = verdict.excluded_by.copy()
        borrowers = np.column_stack([columns[name] for name in BORROWER_FEATURES]).astype(
            np.float32
        )
        arms = np.full(n, "champion", dtype=object)
        on_canary = np.fromiter((self.split.arm(int(b)) == "canary" for b in ids), bool, n)
        arms[on_canary] = "canary"
        k = len(self._options)
        scores = np.full((n, k), -np.inf)
        groups: list[_Group] = []
        canary_rows = verdict.eligible & (arms == "canary")
        if self.canary is not None and canary_rows.any():
            group = self._score(self.canary, canary_rows, borrowers, verdict.offered, scores)
            arms[canary_rows] = "champion"  # a failing canary: the champion answers
            arms[group.index] = "canary"
            groups.append(group)
        champion_rows = verdict.eligible & (arms == "champion")
        group = self._score(self.champion, champion_rows, borrowers, verdict.offered, scores)
        failed = champion_rows.copy()
        failed[group.index] = False
        excluded[failed] = MODEL_FAILED
        groups.append(group)
        ranked = np.asarray(excluded == None, dtype=bool)  # noqa: E711
        versions = np.full(n, None, dtype=object)
        for g in groups:
            versions[g.index] = g.scorer.version
        order = greedy_order(scores)
        drawn = self._explore(ids, groups, verdict.offered, scores, order)
        table = self._output(
            batch, ids, ranked, excluded, verdict, arms, versions, scores, order, drawn
        )
        if self.sink is not None and ranked.any():
            latency_ms = (time.perf_counter() - started) * 1000.0 / int(ranked.sum())
            log = pa.concat_tables(
                [
                    self._decisions(g, ids, verdict.offered, arms, scores, order, drawn, latency_ms)
                    for g in groups
                ]
            )
            date = plan.decided_at.strftime("%Y-%m-%d")
            self.sink.write(log, date=date, name=f"batch-{plan.run_id}-{int(ids[0]):019d}")
        return table

    def _explore(
        self,
        ids: npt.NDArray[np.int64],
        groups: list[_Group],
        offered: npt.NDArray[np.bool_],
        scores: npt.NDArray[np.float64],
        order: npt.NDArray[np.int64],
    ) -> _Drawn:
        """Draw the slates of exploring borrowers (in place in ``order``), as the app does:
        who explores is the shared assignment hash, the slate is drawn over the offered
        options from their scores and candidate rows. The draws are seeded by run and
        batch, so a retried task draws (and logs) the same slates."""
        n = len(ids)
        drawn = _Drawn(propensities=[None] * n, policy=np.full(n, None, dtype=object))
        config = self.plan.exploration
        if config is None or not config.active or n == 0:
            return drawn
        key = f"{self.plan.run_id}:{int(ids[0])}:explore".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        explorer = Explorer(config, salt=self.plan.salt, seed=seed)
        for group in groups:
            for k, i in enumerate(group.index.tolist()):
                if not explorer.explores(int(ids[i])):
                    continue
                mine = np.flatnonzero(offered[i])
                slate = explorer.slate(
                    scores[i, mine],
                    features=group.rows[k][mine],
                    option_ids=tuple(self._options[mine]),
                    touchpoint=self.plan.touchpoint,
                )
                order[i] = np.concatenate([mine[slate.order], np.flatnonzero(~offered[i])])
                drawn.propensities[i] = slate.propensities.tolist()
                drawn.policy[i] = slate.policy
        return drawn

    def _score(
        self,
        scorer: OnnxScorer,
        which: npt.NDArray[np.bool_],
        borrowers: npt.NDArray[np.float32],
        offered: npt.NDArray[np.bool_],
        scores: npt.NDArray[np.float64],
    ) -> _Group:
        """Score the offered options of borrowers ``which`` into ``scores``; returns the
        borrowers whose scores are all finite, with their candidate rows."""
        index = np.flatnonzero(which)
        X = candidate_block(
            scorer.spec,
            borrowers=borrowers[index],
            touchpoint=self.plan.touchpoint,
            option_ids=self.plan.rules.options,
            position=SERVING_POSITION,
        )
        mask = offered[index]
        got = np.full(mask.shape, -np.inf)
        if index.size:
            got[mask] = scorer.score(np.ascontiguousarray(X[mask]))
        finite = np.where(mask, np.isfinite(got), True).all(axis=1)
        scores[index[finite]] = got[finite]
        return _Group(scorer=scorer, index=index[finite], rows=X[finite])

    def _output(
        self,
        batch: pa.Table,
        ids: npt.NDArray[np.int64],
        ranked: npt.NDArray[np.bool_],
        excluded: npt.NDArray[np.object_],
        verdict: EligibilityVerdict,
        arms: npt.NDArray[np.object_],
        versions: npt.NDArray[np.object_],
        scores: npt.NDArray[np.float64],
        order_all: npt.NDArray[np.int64],
        drawn: _Drawn,
    ) -> pa.Table:
        plan = self.plan
        n = len(ids)
        index = np.flatnonzero(ranked)
        offered = verdict.offered[index]
        counts = offered.sum(axis=1).astype(np.int64)
        mine = scores[index]
        order = order_all[index]
        slots = np.arange(order.shape[1])[None, :] < counts[:, None]
        ranked_options = self._options[order][slots]
        ranked_scores = np.take_along_axis(mine, order, axis=1)[slots]
        decision_ids = np.full(n, None, dtype=object)
        decision_ids[index] = [decision_id(plan.run_id, int(b)) for b in ids[index]]
        full = np.zeros(n, dtype=np.int64)
        full[index] = counts
        withheld = verdict.withheld
        names = np.asarray(verdict.rule_names, dtype=object)
        status = np.where(ranked, "ranked", "excluded")
        as_of = batch.column("as_of")
        decided = pa.array(np.full(n, np.datetime64(plan.decided_at.replace(tzinfo=None), "us")))
        table = pa.table(
            {
                "borrower_id": pa.array(ids),
                "touchpoint": pa.array([plan.touchpoint] * n, pa.string()),
                "as_of": as_of.cast(TS),
                "decided_at": decided.cast(TS),
                "arm": pa.array(arms, pa.string(), mask=~ranked),
                "model_version": pa.array(versions, pa.string(), mask=~ranked),
                "decision_id": pa.array(decision_ids, pa.string()),
                "options": _list_array(ranked_options, full, _STRINGS),
                "scores": _list_array(ranked_scores, full, _FLOATS),
                "propensities": pa.array(drawn.propensities, _FLOATS),
                "withheld_by": _list_array(
                    names[np.nonzero(withheld)[1]], withheld.sum(axis=1), _STRINGS
                ),
                "excluded_by": pa.array(excluded, pa.string()),
                STATUS: pa.array(status, pa.string()),
            },
            schema=OUTPUT_SCHEMA,
        )
        return table

    def _decisions(
        self,
        group: _Group,
        ids: npt.NDArray[np.int64],
        offered_all: npt.NDArray[np.bool_],
        arms: npt.NDArray[np.object_],
        scores_all: npt.NDArray[np.float64],
        order_all: npt.NDArray[np.int64],
        drawn: _Drawn,
        latency_ms: float,
    ) -> pa.Table:
        """The DECISION_SCHEMA rows of one model's ranked borrowers (candidates offered,
        in the touchpoint's option order; the order returned, as in the output)."""
        plan = self.plan
        index = group.index
        m = len(index)
        offered = offered_all[index]
        counts = offered.sum(axis=1).astype(np.int64)
        scores = scores_all[index]
        order = order_all[index]
        slots = np.arange(order.shape[1])[None, :] < counts[:, None]
        features = group.rows[offered]
        width = group.scorer.spec.n_features
        inner = pa.ListArray.from_arrays(
            pa.array(np.arange(0, features.size + 1, width, dtype=np.int32)),
            pa.array(features.reshape(-1)),
        )
        offsets = np.zeros(m + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        ts = pa.array(np.full(m, np.datetime64(plan.decided_at.replace(tzinfo=None), "us")))
        salt, mine = plan.borrower_salt, ids[index]
        columns = {
            "decision_id": pa.array([decision_id(plan.run_id, int(b)) for b in mine]),
            "ts": ts.cast(DECISION_SCHEMA.field("ts").type),
            "role": pa.array(["primary"] * m, pa.string()),
            "borrower_hash": pa.array([hash_borrower(int(b), salt=salt) for b in mine]),
            "arm": pa.array(arms[index], pa.string()),
            "model_version": pa.array([group.scorer.version] * m, pa.string()),
            "feature_spec_hash": pa.array([group.scorer.spec.hash] * m, pa.string()),
            "touchpoint": pa.array([plan.touchpoint] * m, pa.string()),
            "feature_source": pa.array([FEATURE_SOURCE] * m, pa.string()),
            "candidates": _list_array(
                np.broadcast_to(self._options, offered.shape)[offered], counts, _STRINGS
            ),
            "features": pa.ListArray.from_arrays(pa.array(offsets), inner),
            "scores": _list_array(scores[offered], counts, _FLOATS),
            "returned_order": _list_array(self._options[order][slots], counts, _STRINGS),
            "propensities": pa.array([drawn.propensities[i] for i in index], _FLOATS),
            "latency_ms": pa.array(np.full(m, latency_ms)),
            "logging_policy": pa.array(drawn.policy[index], pa.string()),
        }
        return pa.Table.from_arrays(
            [columns[name] for name in DECISION_SCHEMA.names], schema=DECISION_SCHEMA
        )
