"""The ranking service: champion, sticky canary, mirrored shadow, guardrails, decision log.

Plain Python with injected collaborators (model store, decision log, metrics, online
features, explainer, rollback hook), so unit tests drive it without Ray and the
Serve ingress (:mod:`attune.serving.ingress`) is a thin HTTP shell around it.

Request path (:meth:`RankingService.rank`, all inside the ingress replica): pick the
borrower's sticky arm, build the candidate rows in the model's feature-spec order,
check them, score with ONNX Runtime, order (greedy, or a slate drawn by the exploration
policy with its propensities when the borrower explores), log, answer. A canary that
fails or answers non-finite scores is counted against its guardrail and the champion
answers instead, so a broken canary never turns into an error for the client.

After the answer (:meth:`RankingService.run_background`, driven by the ingress's
background task, never awaited by a request): the shadow model scores mirrored requests
and its answers are logged under the primary decision id; the champion re-scores canary
requests (paired traffic) for the score-drift guardrail. Both wait in one bounded queue;
when it is full new work is dropped and counted, never blocking a request.

Live knobs (:meth:`RankingService.apply`) swap one immutable :class:`_State` reference,
so a request in flight finishes on the state it started with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from attune.errors import AttuneError, FeatureSpecMismatch, InvalidInput, Unavailable
from attune.experiments.assignment import hash_borrower
from attune.experiments.exploration import Explorer
from attune.experiments.policy_config import LinearThompsonConfig
from attune.online.redis_store import OnlineLookup
from attune.serving.api import (
    ArmStatus,
    FeatureSource,
    ModelsResponse,
    RankRequest,
    RankResponse,
    Reason,
    Rollback,
)
from attune.serving.candidate_rows import candidate_matrix
from attune.serving.config import RolloutConfig
from attune.serving.decision_log import DecisionLog, DecisionRecord
from attune.serving.guardrails import Guardrail, GuardrailVerdict
from attune.serving.metrics import NullMetrics, ServingMetrics
from attune.serving.model import ModelStore, OnnxScorer
from attune.serving.traffic_split import Arm, TrafficSplit

log = logging.getLogger(__name__)


class OnlineFeatures(Protocol):
    """A borrower's features as of now by id (the online store, attune.online).

    An unknown borrower gets population defaults flagged ``fallback``; a store of another
    feature spec than ``spec_hash`` raises Unavailable.
    """

    async def lookup(self, borrower_id: int, *, spec_hash: str | None = None) -> OnlineLookup: ...


class Explainer(Protocol):
    """Reason codes per candidate row for one model version."""

    def explain(
        self, version: str, X: np.ndarray, names: tuple[str, ...]
    ) -> list[list[Reason]] | None: ...


def greedy(scores: np.ndarray) -> np.ndarray:
    """Highest score first (stable for ties)."""
    return np.argsort(-scores, kind="stable")


#: Called with (canary version, reasons, rollout config it breached under).
RollbackHook = Callable[[str, tuple[str, ...], RolloutConfig], None]


@dataclass
class _Counters:
    calls: int = 0
    errors: int = 0


@dataclass(frozen=True, kw_only=True)
class _State:
    config: RolloutConfig
    champion: OnnxScorer
    canary: OnnxScorer | None
    shadow: OnnxScorer | None
    split: TrafficSplit
    guardrail: Guardrail | None
    explorer: Explorer | None


@dataclass(frozen=True, kw_only=True)
class _Job:
    kind: str  # "shadow" or "paired"
    decision_id: str
    borrower_hash: str
    touchpoint: str
    source: FeatureSource
    option_ids: tuple[str, ...]
    X: np.ndarray
    primary_scores: np.ndarray
    state: _State


@dataclass
class _Events:
    rollbacks: list[Rollback] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    shadow_dropped: int = 0


class RankingService:
    """Ranks candidates with the champion / canary of a rollout; see the module docstring."""

    def __init__(
        self,
        *,
        store: ModelStore,
        rollout: RolloutConfig,
        decision_log: DecisionLog | None,
        borrower_salt: str,
        replica_id: str = "local",
        metrics: ServingMetrics | None = None,
        online: OnlineFeatures | None = None,
        explainer: Explainer | None = None,
        exploration_seed: int | None = None,
        on_rollback: RollbackHook | None = None,
        queue_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._log = decision_log
        self._salt = borrower_salt
        self.replica_id = replica_id
        self._metrics: ServingMetrics = metrics or NullMetrics()
        self._online = online
        self._explainer = explainer
        self._exploration_seed = exploration_seed
        self._on_rollback = on_rollback
        self._clock = clock
        self._queue: deque[_Job] = deque()
        self._queue_size = queue_size
        self._scorers: dict[str, OnnxScorer] = {}
        self._counters: dict[tuple[str, str], _Counters] = {}
        self._counters_lock = threading.Lock()
        self._events = _Events()
        self._tripped_under: RolloutConfig | None = None
        self._last_check = 0.0
        self._state = self._build_state(rollout)

    # ------------------------------------------------------------------ live knobs

    def apply(self, rollout: RolloutConfig) -> None:
        """Load what ``rollout`` names and switch to it (blocking I/O: call off the loop).

        The champion must load, or the previous state stays and the error is raised. A
        canary or shadow that cannot be loaded is refused (recorded in ``status()``) and
        its arm stays off; serving carries on with the champion.
        """
        self._state = self._build_state(rollout)
        self._metrics.canary_share(self._state.split.canary_share)

    def _load(self, ref: str) -> OnnxScorer:
        version = self._store.resolve(ref)
        if version not in self._scorers:
            self._scorers[version] = OnnxScorer.load(self._store, version)
        return self._scorers[version]

    def _load_optional(self, role: str, ref: str | None) -> OnnxScorer | None:
        if ref is None:
            return None
        try:
            return self._load(ref)
        except AttuneError as exc:
            message = f"{role} {ref!r}: {exc.message}"
            log.error("refused %s", message)
            self._events.refused.append(message)
            return None

    def _build_state(self, rollout: RolloutConfig) -> _State:
        champion = self._load(rollout.champion)
        canary = None
        # The guardrails rolled this exact rollout back: keep its canary off.
        if rollout != self._tripped_under:
            canary = self._load_optional("canary", rollout.canary)
        if canary is not None and canary.version == champion.version:
            canary = None  # a rolled-back canary alias points at the champion
        shadow = self._load_optional("shadow", rollout.shadow)
        split = TrafficSplit(
            salt=rollout.salt,
            canary_share=rollout.canary_percent / 100 if canary is not None else 0.0,
            shadow_share=rollout.shadow_percent / 100 if shadow is not None else 0.0,
        )
        in_use = {champion.version} | {s.version for s in (canary, shadow) if s is not None}
        self._scorers = {v: s for v, s in self._scorers.items() if v in in_use}
        guardrail = Guardrail(rollout.guardrails, clock=self._clock) if canary else None
        self._preload_explainers(champion, canary)
        return _State(
            config=rollout,
            champion=champion,
            canary=canary,
            shadow=shadow,
            split=split,
            guardrail=guardrail,
            explorer=self._explorer(rollout, champion),
        )

    def _explorer(self, rollout: RolloutConfig, champion: OnnxScorer) -> Explorer | None:
        config = rollout.exploration
        if not config.active:
            return None
        policy = config.state.config if config.state is not None else None
        dim = policy.dim if isinstance(policy, LinearThompsonConfig) else None
        if dim is not None and dim != champion.spec.n_features:
            message = (
                f"exploration {config.policy!r}: state.config.dim is {dim}, the champion's "
                f"rows have {champion.spec.n_features} features"
            )
            log.error("refused %s", message)
            self._events.refused.append(message)
            return None
        previous: _State | None = getattr(self, "_state", None)
        kept = previous.explorer if previous is not None else None
        if kept is not None and kept.config == config and kept.salt == rollout.salt:
            return kept  # keep its random stream
        return Explorer(config, salt=rollout.salt, seed=self._exploration_seed)

    # ------------------------------------------------------------------ request path

    async def rank(self, request: RankRequest) -> RankResponse:
        """Rank one request; raises InvalidInput (4xx) before any model sees bad input."""
        started = time.perf_counter()
        state = self._state
        arm: Arm = "canary" if state.canary is not None else "champion"
        if arm == "canary" and state.split.arm(request.borrower_id) != "canary":
            arm = "champion"
        scorer = state.canary if arm == "canary" and state.canary else state.champion
        borrower, online = await self._borrower_state(request, scorer.spec.hash)
        X = self._rows(request, scorer, borrower)
        scores = self._score(scorer, arm, X, state)
        if scores is None:  # canary failed: the champion answers
            arm, scorer = "champion", state.champion
            X = self._rows(request, scorer, borrower)
            scores = self._score(scorer, arm, X, state)
            if scores is None:
                raise Unavailable(
                    f"champion {scorer.version} failed to score", version=scorer.version
                )
        options = request.option_ids
        touchpoint = request.context.touchpoint
        propensities: np.ndarray | None = None
        logging_policy: str | None = None
        explorer = state.explorer
        if explorer is not None and explorer.explores(request.borrower_id):
            slate = explorer.slate(scores, features=X, option_ids=options, touchpoint=touchpoint)
            order, propensities, logging_policy = slate.order, slate.propensities, slate.policy
        else:
            order = greedy(scores)
        decision_id = uuid.uuid4().hex
        reasons = await self._reasons(request, scorer, X)
        # Plain dicts, validated once into the response below: pydantic-core validates a
        # whole response faster than model_construct builds its eight options.
        score_list = scores.tolist()
        shown = 0 if propensities is None else len(propensities)
        ranked = [
            {
                "option_id": options[i],
                "score": score_list[i],
                "rank": r + 1,
                "propensity": float(propensities[r]) if r < shown else None,  # type: ignore[index]
                "reasons": None if reasons is None else reasons[i],
            }
            for r, i in enumerate(order.tolist())
        ]
        latency_ms = (time.perf_counter() - started) * 1000.0
        borrower_hash = hash_borrower(request.borrower_id, salt=self._salt)
        source = request.feature_source
        self._record(
            decision_id=decision_id,
            role="primary",
            borrower_hash=borrower_hash,
            arm=arm,
            scorer=scorer,
            touchpoint=touchpoint,
            source=source,
            option_ids=options,
            X=X,
            scores=scores,
            order=order,
            propensities=propensities,
            logging_policy=logging_policy,
            latency_ms=latency_ms,
        )
        self._metrics.ranked(
            arm=arm, version=scorer.version, latency_ms=latency_ms, top_score=float(scores.max())
        )
        job = _Job(
            kind="paired",
            decision_id=decision_id,
            borrower_hash=borrower_hash,
            touchpoint=touchpoint,
            source=source,
            option_ids=options,
            X=X,
            primary_scores=scores,
            state=state,
        )
        if arm == "canary":
            self._enqueue(job)
        if state.shadow is not None and state.split.mirror(decision_id):
            self._enqueue(replace(job, kind="shadow"))
        return RankResponse.model_validate(
            {
                "decision_id": decision_id,
                "model_version": scorer.version,
                "arm": arm,
                "feature_source": source,
                "feature_snapshot": online.snapshot_id if online else None,
                "feature_fallback": online.fallback is not None if online else None,
                "options": ranked,
            }
        )

    async def _borrower_state(
        self, request: RankRequest, spec_hash: str
    ) -> tuple[Mapping[str, float] | np.ndarray | None, OnlineLookup | None]:
        if request.feature_source == "request":
            return None, None
        if request.borrower is not None:
            return request.borrower.model_dump(), None
        if self._online is None:
            raise InvalidInput(
                "borrower: required when candidates carry no features (this app has no "
                "online feature view)",
                field="borrower",
            )
        found = await self._online.lookup(request.borrower_id, spec_hash=spec_hash)
        return found.values, found

    def _rows(
        self,
        request: RankRequest,
        scorer: OnnxScorer,
        borrower: Mapping[str, float] | np.ndarray | None,
    ) -> np.ndarray:
        spec = scorer.spec
        if borrower is not None:
            return candidate_matrix(
                spec,
                borrower=borrower,
                touchpoint=request.context.touchpoint,
                option_ids=request.option_ids,
            )
        rows: list[list[float]] = []
        for i, candidate in enumerate(request.candidates):
            vector = candidate.features or []
            if len(vector) != spec.n_features:
                raise FeatureSpecMismatch(
                    expected=spec.n_features,
                    actual=len(vector),
                    problem=f"candidates[{i}].features has {len(vector)} values; model "
                    f"{scorer.version} takes {spec.n_features} (feature spec {spec.hash})",
                )
            rows.append(vector)
        return np.asarray(rows, dtype=np.float32)

    def _score(
        self, scorer: OnnxScorer, role: str, X: np.ndarray, state: _State
    ) -> np.ndarray | None:
        """Score ``X``; None when the model raised or answered non-finite scores."""
        started = time.perf_counter()
        try:
            scores = scorer.score(X)
            ok = scores.shape == (X.shape[0],) and bool(np.isfinite(scores).all())
        except Exception as exc:
            log.warning("model %s (%s) failed: %s", scorer.version, role, exc)
            ok = False
        self._count(role, scorer.version, ok)
        if role == "canary" and state.guardrail is not None:
            state.guardrail.record(ok=ok, latency_s=time.perf_counter() - started)
        return scores if ok else None

    def _count(self, role: str, version: str, ok: bool) -> None:
        with self._counters_lock:  # the after-answer thread counts too
            counters = self._counters.setdefault((role, version), _Counters())
            counters.calls += 1
            counters.errors += 0 if ok else 1
        self._metrics.model_call(role=role, version=version, ok=ok)

    async def _reasons(
        self, request: RankRequest, scorer: OnnxScorer, X: np.ndarray
    ) -> list[list[Reason]] | None:
        if not request.explain or self._explainer is None:
            return None
        # TreeSHAP takes ms to tens of ms (and a cold explainer reads the registry): off
        # the event loop, so one explained request never stalls the replica's others.
        return await asyncio.to_thread(
            self._explainer.explain, scorer.version, X, scorer.spec.names
        )

    def _preload_explainers(self, *scorers: OnnxScorer | None) -> None:
        """Load the explainers of ``scorers`` now (reconfigure runs off the event loop)."""
        preload = getattr(self._explainer, "preload", None)
        if preload is None:
            return
        for scorer in scorers:
            if scorer is None:
                continue
            try:
                preload(scorer.version, scorer.spec.names)
            except Exception as exc:  # explain stays opt-in: never fail a rollout for it
                log.warning("explainer of %s not preloaded: %s", scorer.version, exc)

    def _record(
        self,
        *,
        decision_id: str,
        role: str,
        borrower_hash: str,
        arm: str,
        scorer: OnnxScorer,
        touchpoint: str,
        source: str,
        option_ids: tuple[str, ...],
        X: np.ndarray,
        scores: np.ndarray,
        order: np.ndarray,
        propensities: np.ndarray | None,
        latency_ms: float,
        logging_policy: str | None = None,
    ) -> None:
        if self._log is None:
            return
        self._log.append(
            DecisionRecord(
                decision_id=decision_id,
                ts=datetime.now(UTC),
                role=role,
                borrower_hash=borrower_hash,
                arm=arm,
                model_version=scorer.version,
                feature_spec_hash=scorer.spec.hash,
                touchpoint=touchpoint,
                feature_source=source,
                candidates=option_ids,
                features=X,
                scores=scores,
                returned_order=tuple(option_ids[i] for i in order),
                propensities=None if propensities is None else tuple(propensities.tolist()),
                latency_ms=latency_ms,
                logging_policy=logging_policy,
            )
        )

    def _enqueue(self, job: _Job) -> None:
        if len(self._queue) >= self._queue_size:
            self._events.shadow_dropped += 1
            self._metrics.shadow_dropped()
            return
        self._queue.append(job)

    # ------------------------------------------------------------------ after the answer

    @property
    def pending(self) -> int:
        """Jobs waiting for :meth:`run_background`."""
        return len(self._queue)

    def run_background(self, max_jobs: int = 256, *, check: bool = True) -> int:
        """Run up to ``max_jobs`` queued shadow / paired jobs, then check the guardrail.

        Jobs are scored in batches: one ONNX Runtime call over the stacked rows of every
        job of a model (per-call overhead, not rows, dominates request-sized scoring).
        Safe to call from one worker thread while requests are served on another; pass
        ``check=False`` there and let the request thread check the guardrail.
        """
        jobs: list[_Job] = []
        while self._queue and len(jobs) < max_jobs:
            jobs.append(self._queue.popleft())
        groups: dict[tuple[str, int], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.kind, id(job.state)), []).append(job)
        for (kind, _), group in groups.items():
            if kind == "shadow":
                self._run_shadow(group)
            else:
                self._run_paired(group)
        if check:
            self.check_guardrail()
        return len(jobs)

    def _score_batch(
        self, scorer: OnnxScorer, role: str, jobs: list[_Job]
    ) -> list[np.ndarray | None]:
        """Each job's scores from one model call (None for a job whose scores are unusable)."""
        try:
            stacked = scorer.score(np.concatenate([job.X for job in jobs]))
        except Exception as exc:
            log.warning("model %s (%s) failed: %s", scorer.version, role, exc)
            stacked = np.full(sum(len(job.X) for job in jobs), np.nan)
        out: list[np.ndarray | None] = []
        offset = 0
        for job in jobs:
            scores = stacked[offset : offset + len(job.X)]
            offset += len(job.X)
            ok = scores.shape == (len(job.X),) and bool(np.isfinite(scores).all())
            self._count(role, scorer.version, ok)
            out.append(scores if ok else None)
        return out

    def _run_shadow(self, jobs: list[_Job]) -> None:
        shadow = jobs[0].state.shadow
        if shadow is None:
            return
        started = time.perf_counter()
        batch = self._score_batch(shadow, "shadow", jobs)
        latency_ms = (time.perf_counter() - started) * 1000.0 / len(jobs)
        for job, scores in zip(jobs, batch, strict=True):
            if scores is None:
                continue
            self._record(
                decision_id=job.decision_id,
                role="shadow",
                borrower_hash=job.borrower_hash,
                arm="shadow",
                scorer=shadow,
                touchpoint=job.touchpoint,
                source=job.source,
                option_ids=job.option_ids,
                X=job.X,
                scores=scores,
                order=greedy(scores),
                propensities=None,
                latency_ms=latency_ms,
            )

    def _run_paired(self, jobs: list[_Job]) -> None:
        state = jobs[0].state
        guardrail, canary = state.guardrail, state.canary
        if guardrail is None or canary is None or state is not self._state:
            return  # the rollout changed since: these pairs no longer matter
        if state.champion.spec.hash != canary.spec.hash:
            return  # different features: no row-for-row pairing
        for job, baseline in zip(
            jobs, self._score_batch(state.champion, "champion", jobs), strict=True
        ):
            if baseline is not None:
                guardrail.record_drift(float(np.mean(np.abs(job.primary_scores - baseline))))

    def check_guardrail(self, *, force: bool = False) -> GuardrailVerdict | None:
        """Judge the canary (at most every 0.25 s unless forced); roll it back on a breach."""
        state = self._state
        now = self._clock()
        if state.guardrail is None or state.canary is None:
            return None
        if not force and now - self._last_check < 0.25:
            return None
        self._last_check = now
        verdict = state.guardrail.check()
        if verdict.breached:
            self._roll_back(state, verdict)
        return verdict

    def _roll_back(self, state: _State, verdict: GuardrailVerdict) -> None:
        assert state.canary is not None
        version = state.canary.version
        self._tripped_under = state.config
        self._state = replace(
            state, canary=None, guardrail=None, split=replace(state.split, canary_share=0.0)
        )
        self._events.rollbacks.append(
            Rollback(
                version=version,
                reasons=list(verdict.reasons),
                at=datetime.now(UTC).isoformat(),
            )
        )
        self._metrics.rolled_back(version=version)
        self._metrics.canary_share(0.0)
        log.error("guardrails rolled back canary %s: %s", version, "; ".join(verdict.reasons))
        if self._on_rollback is not None:
            self._on_rollback(version, verdict.reasons, state.config)

    # ------------------------------------------------------------------ introspection

    def status(self) -> ModelsResponse:
        """What this replica serves and has counted."""
        state = self._state
        models: list[ArmStatus] = []
        for role, scorer, share in (
            ("champion", state.champion, 1.0 - state.split.canary_share),
            ("canary", state.canary, state.split.canary_share),
            ("shadow", state.shadow, state.split.shadow_share),
        ):
            if scorer is None:
                continue
            with self._counters_lock:
                counters = replace(self._counters.get((role, scorer.version), _Counters()))
            models.append(
                ArmStatus(
                    role=role,
                    version=scorer.version,
                    feature_spec_hash=scorer.spec.hash,
                    share=share,
                    calls=counters.calls,
                    errors=counters.errors,
                )
            )
        stats = self._log.stats() if self._log is not None else None
        return ModelsResponse(
            replica=self.replica_id,
            models=models,
            salt_fingerprint=state.split.fingerprint,
            rollbacks=list(self._events.rollbacks),
            refused=list(self._events.refused),
            shadow_dropped=self._events.shadow_dropped,
            decisions_logged=stats.written if stats else 0,
            decisions_dropped=stats.dropped if stats else 0,
            decisions_buffered=stats.buffered if stats else 0,
        )

    @property
    def champion_version(self) -> str:
        return self._state.champion.version

    @property
    def canary_version(self) -> str | None:
        return self._state.canary.version if self._state.canary else None

    def model_calls(self) -> int:
        """Model calls of every role in this replica (malformed requests add none)."""
        with self._counters_lock:
            return sum(c.calls for c in self._counters.values())
