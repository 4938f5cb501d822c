"""The learning loop on the simulator, priced at every step by its ground truth.

One iteration, as a lender would run it::

    serve the champion with exploration ──► borrowers answer (events to /v1/events)
        ──► attune outcomes (rewards from events) ──► retrain on what was served
        ──► off-policy gate on the served log ──► canary ──► promote or refuse

The served app is an :class:`Endpoint`: the real app over HTTP (the demo) or the same
:class:`attune.serving.service.RankingService` in this process (``bench/loop.py``, many
seeded runs). Either way decisions go to ``<store>/decisions``, posted events to
``<store>/events_online`` and reward rows to ``<store>/rewards``, through the same
writers, attribution and gate as production. The borrowers are held-out presentations
of the simulator (test split): each request carries the borrower's state at that
presentation, and :class:`attune.simulator.environment.SimulatorEnvironment` answers every
served slate from the simulator's ground truth for it. Values are priced exactly in
reward units by :class:`attune.rewards.true_value.TrueValue`. Every phase draws
borrowers not served before in the loop, so an event can only be credited to the
decision that caused it.

Each iteration is summarized as a :class:`LoopIteration` (``summary.json``'s ``loop``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from attune import storage
from attune.data.schema import OPTION_IDS, SLATE_SIZE
from attune.experiments.exploration import ExplorationConfig
from attune.rewards.true_value import TrueValue
from attune.serving.config import RolloutConfig
from attune.simulator.environment import ServedSlate, SimulatorEnvironment
from attune.simulator.ground_truth import share_of_oracle_lift


class LoopConfig(BaseModel):
    """Sizes and knobs of the loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(default=2, ge=1, le=50, description="Loop iterations.")
    requests: int = Field(default=600, ge=20, description="Requests per serving phase.")
    exploration: ExplorationConfig = Field(
        default=ExplorationConfig(policy="softmax", share=0.3, temperature=0.1),
        description="Exploration while the champion serves (the rollout knob).",
    )
    canary_percent: float = Field(default=50.0, gt=0, lt=100, description="Canary share.")
    estimator: str = Field(default="snips", description="Off-policy estimator of the gate.")
    seed: int = Field(default=0, ge=0, description="Seed of the borrower draws and answers.")


class Endpoint(Protocol):
    """The served app, as the loop drives it."""

    store: str

    def apply(self, rollout: RolloutConfig) -> None:
        """Make ``rollout`` the live rollout (returns once it serves)."""

    def rank(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer every ``/v1/rank`` body (raises if one fails)."""

    def post_events(self, events: Sequence[dict[str, Any]]) -> None:
        """``POST /v1/events`` in batches."""

    def flush(self) -> None:
        """Return once every answered decision and posted event is written to the store."""


#: Trains a candidate on the histories plus the reward rows under a URI; returns its version.
Retrain = Callable[[int, str], str]
#: Scores ``(n * n_options, n_features)`` candidate rows with a registered version.
Score = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Pool:
    """Held-out presentations: request bodies and candidate rows."""

    qid: np.ndarray  # (n,)
    borrower_id: np.ndarray  # (n,)
    bodies: list[dict[str, Any]]
    touchpoint: list[str]
    candidates: np.ndarray  # (n * n_options, n_features), catalog order, position 1
    legacy: np.ndarray  # (n, SLATE_SIZE) logged slates, -1 where a position was empty

    def draw(self, n: int, rng: np.random.Generator, used: set[int]) -> np.ndarray:
        """Indices of up to ``n`` presentations of distinct, not yet ``used`` borrowers."""
        order = rng.permutation(len(self.qid))
        picked: list[int] = []
        for i in order:
            borrower = int(self.borrower_id[i])
            if borrower not in used:
                used.add(borrower)
                picked.append(int(i))
                if len(picked) == n:
                    break
        return np.asarray(sorted(picked), dtype=np.int64)

    def rows(self, index: np.ndarray) -> np.ndarray:
        k = len(OPTION_IDS)
        return self.candidates.reshape(len(self.qid), k, -1)[index].reshape(len(index) * k, -1)


@dataclass(frozen=True)
class MeanEstimate:
    value: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def mean_of(cls, x: np.ndarray) -> MeanEstimate:
        n = len(x)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(np.mean(x))
        half = 1.96 * float(np.std(x, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        return cls(mean, mean - half, mean + half, n)


@dataclass
class LoopIteration:
    """One iteration of the loop, as ``summary.json`` records it."""

    candidate: str
    champion: str
    ope: dict[str, Any] | None
    realized: dict[str, Any] | None
    true_value: float
    champion_true_value: float
    oracle_share: float
    served_oracle_share: float
    promoted: bool
    refused_by: str | None
    exploration_cost: float = math.nan
    references: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Phase:
    index: np.ndarray  # pool indices served
    answers: list[dict[str, Any]]
    slates: np.ndarray  # (n, SLATE_SIZE) option indices shown


class Loop:
    """Runs iterations against an endpoint; see the module docstring."""

    def __init__(
        self,
        *,
        config: LoopConfig,
        endpoint: Endpoint,
        environment: SimulatorEnvironment,
        truth: TrueValue,
        pool: Pool,
        retrain: Retrain,
        score: Score,
        registry: Any,
        salt: str,
        champion: str,
        promote: Callable[[str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config, self.endpoint, self.environment = config, endpoint, environment
        self.truth = truth
        self.pool, self.retrain, self.score, self.registry = pool, retrain, score, registry
        self.salt, self.champion, self.promote, self.clock = salt, champion, promote, clock
        self.rng = np.random.default_rng(config.seed)
        self.used: set[int] = set()
        self.served: list[np.ndarray] = []  # pool indices of every exploring phase

    # ---------------------------------------------------------------- one phase

    def _serve(self, rollout: RolloutConfig) -> _Phase:
        self.endpoint.apply(rollout)
        index = self.pool.draw(self.config.requests, self.rng, self.used)
        if len(index) == 0:
            from attune.errors import InvalidInput

            raise InvalidInput(
                f"every borrower of the pool ({len(set(self.pool.borrower_id.tolist()))}) was "
                "served already: lower requests or iterations, or simulate more borrowers",
                field="requests",
                value=self.config.requests,
            )
        answers = self.endpoint.rank([self.pool.bodies[i] for i in index])
        at = self.clock()
        position = {o: j for j, o in enumerate(OPTION_IDS)}
        slates = np.asarray(
            [[position[o["option_id"]] for o in a["options"][:SLATE_SIZE]] for a in answers],
            dtype=np.int64,
        )
        served = [
            ServedSlate(
                borrower_id=int(self.pool.borrower_id[i]),
                ts=at,
                touchpoint=self.pool.touchpoint[i],
                options=tuple(OPTION_IDS[j] for j in slate),
                presentation_id=int(self.pool.qid[i]),
            )
            for i, slate in zip(index.tolist(), slates.tolist(), strict=True)
        ]
        self.endpoint.post_events(self.environment.answer(served))
        return _Phase(index=index, answers=answers, slates=slates)

    def _rewards(self) -> str:
        """Attribute rewards for everything served so far; returns the rewards URI."""
        from attune.rewards.config import DEFAULT_CONFIG
        from attune.rewards.job import OutcomesConfig, run_outcomes

        self.endpoint.flush()
        out = storage.join(self.endpoint.store, "rewards")
        window = max(r.window_days for r in DEFAULT_CONFIG.options.values())
        days = max(window, DEFAULT_CONFIG.current_after_days) + 1
        run_outcomes(
            OutcomesConfig(
                store=self.endpoint.store,
                out=out,
                as_of=self.clock() + timedelta(days=days),  # every window has closed
                salt=self.salt,
                engine="local",
            ),
            DEFAULT_CONFIG,
            progress=False,
        )
        return out

    # ---------------------------------------------------------------- truth

    def _true_value(self, version: str, index: np.ndarray) -> float:
        """Expected reward per decision of ``version``'s greedy top slates."""
        scores = self.score(version, self.pool.rows(index)).reshape(len(index), -1)
        return self.truth.policy_value(self.pool.qid[index], scores)

    def _references(self, index: np.ndarray) -> dict[str, float]:
        qid = self.pool.qid[index]
        refs = self.truth.reference(qid)
        legacy = self.pool.legacy[index]
        complete = (legacy >= 0).all(axis=1)
        rows = self.truth.states.rows(qid[complete])
        refs["legacy"] = float(self.truth.expected(rows, legacy[complete]).mean())
        return refs

    # ---------------------------------------------------------------- iteration

    def iteration(self, i: int) -> LoopIteration:
        from attune.serving.ope_check import ope_check

        cfg, champion = self.config, self.champion
        phase = self._serve(
            RolloutConfig(champion=champion, salt=f"loop-{i}", exploration=cfg.exploration)
        )
        self.served.append(phase.index)
        rows = self.truth.states.rows(self.pool.qid[phase.index])
        as_served = float(self.truth.expected(rows, phase.slates).mean())
        greedy = self._true_value(champion, phase.index)
        rewards = self._rewards()
        candidate = self.retrain(i, rewards)
        check = ope_check(
            registry=self.registry,
            candidate=candidate,
            champion=champion,
            decisions_uri=storage.join(self.endpoint.store, "decisions"),
            outcomes_uri=rewards,
            estimator=cfg.estimator,
        )
        ope = None
        if check.decision is not None and check.decision.evidence is not None:
            est = check.decision.evidence["candidate"]
            ope = {
                "estimator": est["estimator"],
                "value": est["value"],
                "ci_low": est["ci_low"],
                "ci_high": est["ci_high"],
                "n": check.decisions_used,
                "champion_value": check.decision.evidence["champion"]["value"],
            }
        seen = np.concatenate(self.served)
        refs = self._references(seen)
        true_value = self._true_value(candidate, seen)
        champion_true = self._true_value(champion, seen)
        realized, promoted, refused_by = None, False, None
        if check.decision is not None and not check.decision.passed:
            refused_by = "ope"
        else:
            realized, promoted = self._canary(i, candidate)
            refused_by = None if promoted else "canary"
        if promoted:
            self.promote(candidate)
            self.champion = candidate

        def share(value: float) -> float:
            return share_of_oracle_lift(value, random=refs["random"], oracle=refs["oracle"])

        return LoopIteration(
            candidate=candidate,
            champion=champion,
            ope=ope,
            realized=realized,
            true_value=true_value,
            champion_true_value=champion_true,
            oracle_share=share(true_value),
            served_oracle_share=share(true_value if promoted else champion_true),
            promoted=promoted,
            refused_by=refused_by,
            exploration_cost=float(1.0 - as_served / greedy),
            references=refs,
        )

    def _canary(self, i: int, candidate: str) -> tuple[dict[str, Any], bool]:
        """Serve champion vs canary (greedy only); promote when the canary's realized
        value is not below the champion's."""
        from attune.rewards.job import read_rewards

        cfg = self.config
        phase = self._serve(
            RolloutConfig(
                champion=self.champion,
                canary=candidate,
                canary_percent=cfg.canary_percent,
                salt=f"canary-{candidate}-{i}",
            )
        )
        rewards = read_rewards(self._rewards()).to_pandas()
        per_decision = rewards.groupby("decision_id")["reward"].sum()
        realized = {}
        for arm in ("champion", "canary"):
            ids = [a["decision_id"] for a in phase.answers if a["arm"] == arm]
            realized[arm] = MeanEstimate.mean_of(
                per_decision.reindex(ids, fill_value=0.0).to_numpy()
            )
        canary, champion = realized["canary"], realized["champion"]
        out = {
            "value": canary.value,
            "ci_low": canary.ci_low,
            "ci_high": canary.ci_high,
            "n": canary.n,
            "champion_value": champion.value,
        }
        return out, bool(canary.n > 0 and canary.value >= champion.value)

    def run(
        self, progress: Callable[[int, LoopIteration], None] | None = None
    ) -> list[LoopIteration]:
        out = []
        for i in range(self.config.iterations):
            result = self.iteration(i)
            out.append(result)
            if progress is not None:
                progress(i, result)
        return out


def summary_frame(iterations: Sequence[LoopIteration]) -> pd.DataFrame:
    """One row per iteration: the served policy's true value and the references."""
    rows = []
    for i, it in enumerate(iterations):
        rows.append(
            {
                "iteration": i + 1,
                "champion": it.champion_true_value,
                "candidate": it.true_value,
                **it.references,
            }
        )
    return pd.DataFrame(rows)


def plot_loop(iterations: Sequence[LoopIteration], path: str) -> str:
    """Policy value per iteration (candidate and the served champion) against random,
    legacy, best fixed and oracle on the same presentations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = summary_frame(iterations)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = frame["iteration"].to_numpy()
    served = [it.true_value if it.promoted else it.champion_true_value for it in iterations]
    ax.plot(x, frame["champion"], "o-", color="#6a9fd4", label="champion (serving)")
    ax.plot(x, frame["candidate"], "s--", color="#d9822b", label="candidate")
    ax.plot(x, served, "^:", color="#3a7d44", label="served after the iteration")
    styles = {"random": "#bbbbbb", "legacy": "#8c8c8c", "best_fixed": "#b07aa1", "oracle": "#222"}
    for name, color in styles.items():
        if name in frame:
            ax.plot(x, frame[name], color=color, lw=1, label=name.replace("_", " "))
    for it, xi in zip(iterations, x, strict=True):
        mark = "promoted" if it.promoted else f"refused ({it.refused_by})"
        ax.annotate(mark, (xi, it.true_value), textcoords="offset points", xytext=(4, 6), size=8)
    ax.set_xlabel("loop iteration")
    ax.set_ylabel("expected reward per decision (ground truth)")
    ax.set_xticks(x)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("The learning loop: true policy value per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_pool(features: str) -> Pool:
    """Every test-split presentation of a preprocessed history as loop traffic."""
    import json

    from attune.demo.traffic import presentations
    from attune.training.dataset import load_dataset
    from attune.training.evaluate import presentations_from_split

    dataset = load_dataset(features, splits=("test",))
    split = dataset["test"]
    shown = presentations_from_split(split, dataset.spec)
    requests = presentations(split, dataset.spec, limit=len(shown.qid), seed=0)
    by_qid = {p.qid: p for p in requests}
    bodies = [json.loads(by_qid[int(q)].body) for q in shown.qid]
    return Pool(
        qid=shown.qid,
        borrower_id=np.asarray([b["borrower_id"] for b in bodies], dtype=np.int64),
        bodies=bodies,
        touchpoint=[b["context"]["touchpoint"] for b in bodies],
        candidates=shown.candidates,
        legacy=shown.logged,
    )


def simulator(pool: Pool, histories: str, *, seed: int) -> tuple[SimulatorEnvironment, TrueValue]:
    """The environment answering the pool's presentations, and its true values in the
    units of the default reward definition. ``attune outcomes`` in the loop reads only
    posted events, so the environment keeps its own ledger from zero."""
    from attune.rewards.config import DEFAULT_CONFIG

    env = SimulatorEnvironment.from_history(
        histories, seed=seed, presentation_ids=pool.qid, history_ledger=False
    )
    return env, TrueValue(env, DEFAULT_CONFIG)
