"""Exploration policies that a Serve replica runs on top of the ranker, with propensities.

Every policy answers ``choose(context, rng, slate_size=k) -> Decision`` with the full
action distribution of the first position (``probs``), the chosen slate (``order``),
the propensity of each shown option *at its position* (what the decision log stores
and :func:`attune.experiments.ope.estimate_policy_value` consumes), and the joint
probability of the whole slate. ``position_probabilities(context, k)`` gives the
``(n_candidates, k)`` matrix of those marginals: the target probabilities of this
policy for off-policy evaluation.

Two families:

* **Sequential** (``uniform``, ``epsilon_greedy``, ``softmax`` over ranker scores):
  positions are filled one after another from the candidates left. Marginals are
  *exact*: the recursion runs over sets of already-placed candidates (``C(K, k)``
  states at position ``k``, 37 in all for 8 candidates and 3 positions) and falls back
  to Monte Carlo (seeded, :data:`_FALLBACK_DRAWS` draws) past :data:`EXACT_STATE_LIMIT`.
* **Posterior sampling** (``thompson``: Beta-Bernoulli per option and context bucket;
  ``linear_thompson``: Bayesian linear regression over candidate features, one model
  per option or one shared): each decision draws ``mc_samples`` posterior samples from
  a generator seeded with ``mc_seed`` and then picks *one of those draws* uniformly
  with the caller's ``rng``. The policy executed is exactly the empirical distribution
  of the draws, so the logged propensities are exact for what was served (they are a
  Monte Carlo estimate only of idealized, infinite-sample Thompson sampling).

State is plain data: ``policy.state()`` is a JSON-able :class:`PolicyState` and
:func:`policy_from_state` rebuilds the policy, so a running replica takes new
posteriors through Serve's ``reconfigure(user_config)`` (or an endpoint) without a
restart. ``update(feedback)`` folds outcomes in (no-op for score-following policies).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attune.errors import ArgumentError
from attune.experiments.policy_config import (
    EpsilonGreedyConfig,
    LinearThompsonConfig,
    PolicyConfig,
    PolicyState,
    SoftmaxConfig,
    ThompsonConfig,
)
from attune.experiments.validation import as_array

#: Above this many placed-candidate sets, sequential marginals use Monte Carlo.
EXACT_STATE_LIMIT = 20_000
_MAX_EXACT_CANDIDATES = 62  # placed sets are int64 bitmasks
_FALLBACK_DRAWS = 20_000
_FALLBACK_SEED = 0


@dataclass(frozen=True)
class DecisionContext:
    """What a policy sees for one request (each policy reads the fields it needs).

    ``scores``: the ranker's score per candidate; ``options``: the catalog index of
    each candidate; ``features``: ``(n_candidates, dim)`` feature rows; ``bucket``: a
    context bucket (for example the touchpoint) for per-bucket Thompson sampling.
    """

    scores: np.ndarray | None = None
    options: tuple[int, ...] | None = None
    features: np.ndarray | None = None
    bucket: int = 0


@dataclass(frozen=True)
class Decision:
    """A chosen slate with the probabilities needed to evaluate it off-policy later."""

    order: tuple[int, ...]
    chosen: int
    probs: tuple[float, ...]
    propensity: float
    position_propensities: tuple[float, ...]
    slate_propensity: float


@dataclass(frozen=True)
class Feedback:
    """An observed outcome of showing catalog option ``option`` (reward in [0, 1])."""

    option: int
    reward: float
    bucket: int = 0
    features: tuple[float, ...] | None = None


class Policy(ABC):
    """An exploration policy: choose slates with known probabilities, learn from feedback."""

    kind: ClassVar[str]

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @abstractmethod
    def position_probabilities(self, context: DecisionContext, slate_size: int) -> np.ndarray:
        """``(n_candidates, slate_size)``: P(candidate j is shown at position k)."""

    @abstractmethod
    def choose(
        self, context: DecisionContext, rng: np.random.Generator, *, slate_size: int = 1
    ) -> Decision:
        """Draw a slate of ``slate_size`` candidates (indices into the context's candidates)."""

    def update(self, feedback: Sequence[Feedback]) -> None:  # noqa: B027 - a no-op by design
        """Fold outcomes into the policy (score-following policies learn nothing here)."""

    def state(self) -> PolicyState:
        """The policy's configuration and learned parameters, JSON-able."""
        return PolicyState(config=self.config, posterior=self._posterior())

    def _posterior(self) -> dict[str, Any]:
        return {}


def _n_candidates(context: DecisionContext) -> int:
    for value in (context.scores, context.features, context.options):
        if value is not None:
            return len(value)
    raise ArgumentError(argument="context", value=None, problem="no candidates in the context")


def _check_slate(slate_size: int, n: int) -> None:
    if not 1 <= slate_size <= n:
        raise ArgumentError(
            argument="slate_size", value=slate_size, problem=f"must be in [1, {n}] candidates"
        )


# ----------------------------------------------------------------------- sequential policies


class _SequentialPolicy(Policy):
    """Fills positions one by one from a step distribution over the candidates left."""

    @abstractmethod
    def _step(self, context: DecisionContext, remaining: np.ndarray) -> np.ndarray:
        """Probabilities over the candidates for each row of the ``(m, n)`` mask ``remaining``.

        Returns ``(m, n)``, each row summing to 1 and 0 where ``remaining`` is False.
        """

    def position_probabilities(self, context: DecisionContext, slate_size: int) -> np.ndarray:
        n = _n_candidates(context)
        _check_slate(slate_size, n)
        states = sum(math.comb(n, k) for k in range(slate_size))
        if n > _MAX_EXACT_CANDIDATES or states > EXACT_STATE_LIMIT:
            return self._monte_carlo(context, slate_size)
        out = np.zeros((n, slate_size))
        bits = np.int64(1) << np.arange(n, dtype=np.int64)
        placed: np.ndarray = np.zeros(1, dtype=np.int64)  # a bitmask per set of placed ones
        mass: np.ndarray = np.ones(1)
        for k in range(slate_size):
            probs = self._step(context, (placed[:, None] & bits) == 0)
            out[:, k] = mass @ probs
            if k + 1 < slate_size:
                # the next step depends only on *which* candidates are placed, so orders
                # reaching the same set merge: C(n, k) states instead of n!/(n-k)!
                nxt = (placed[:, None] | bits).ravel()
                weight = (mass[:, None] * probs).ravel()
                keep = weight > 0
                placed, inverse = np.unique(nxt[keep], return_inverse=True)
                mass = np.bincount(inverse, weights=weight[keep])
        return out

    def _sample_many(
        self, context: DecisionContext, rng: np.random.Generator, m: int, slate_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``m`` sampled slates ``(m, slate_size)`` and their joint probabilities ``(m,)``."""
        n = _n_candidates(context)
        remaining = np.ones((m, n), dtype=bool)
        orders = np.empty((m, slate_size), dtype=np.int64)
        joint = np.ones(m)
        rows = np.arange(m)
        for k in range(slate_size):
            probs = self._step(context, remaining)
            cumulative = probs.cumsum(axis=1)
            u = rng.random(m) * cumulative[:, -1]
            picked = (cumulative < u[:, None]).sum(axis=1)
            # float round-off at the top end: fall back to the last candidate still allowed
            last = n - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
            picked = np.minimum(picked, last)
            orders[:, k] = picked
            joint *= probs[rows, picked]
            remaining[rows, picked] = False
        return orders, joint

    def _monte_carlo(self, context: DecisionContext, slate_size: int) -> np.ndarray:
        rng = np.random.default_rng(_FALLBACK_SEED)
        orders, _ = self._sample_many(context, rng, _FALLBACK_DRAWS, slate_size)
        n = _n_candidates(context)
        return (
            np.stack([np.bincount(orders[:, k], minlength=n) for k in range(slate_size)], axis=1)
            / _FALLBACK_DRAWS
        )

    def choose(
        self, context: DecisionContext, rng: np.random.Generator, *, slate_size: int = 1
    ) -> Decision:
        marginals = self.position_probabilities(context, slate_size)
        orders, joint = self._sample_many(context, rng, 1, slate_size)
        return _decision(tuple(int(j) for j in orders[0]), marginals, float(joint[0]))


def _decision(order: tuple[int, ...], marginals: np.ndarray, joint: float) -> Decision:
    first = marginals[:, 0]
    return Decision(
        order=order,
        chosen=order[0],
        probs=tuple(float(p) for p in first),
        propensity=float(first[order[0]]),
        position_propensities=tuple(float(marginals[j, k]) for k, j in enumerate(order)),
        slate_propensity=joint,
    )


def _scores(context: DecisionContext) -> np.ndarray:
    if context.scores is None:
        raise ArgumentError(argument="scores", value=None, problem="this policy needs scores")
    return as_array(context.scores, argument="scores", ndim=1, dtype=np.float64)


class UniformPolicy(_SequentialPolicy):
    """Every remaining candidate equally likely (the exploration baseline)."""

    kind = "uniform"

    def _step(self, context: DecisionContext, remaining: np.ndarray) -> np.ndarray:
        return remaining / remaining.sum(axis=1, keepdims=True)


class EpsilonGreedyPolicy(_SequentialPolicy):
    """The best remaining score with ``1 - epsilon`` (ties split), else uniform."""

    kind = "epsilon_greedy"
    config: EpsilonGreedyConfig

    def _step(self, context: DecisionContext, remaining: np.ndarray) -> np.ndarray:
        scores = np.where(remaining, _scores(context), -np.inf)
        best = remaining & (scores == scores.max(axis=1, keepdims=True))
        eps = self.config.epsilon
        uniform = remaining / remaining.sum(axis=1, keepdims=True)
        return eps * uniform + (1 - eps) * best / best.sum(axis=1, keepdims=True)


class SoftmaxPolicy(_SequentialPolicy):
    """``exp(score / temperature)`` over the remaining candidates (Plackett-Luce slates)."""

    kind = "softmax"
    config: SoftmaxConfig

    def _step(self, context: DecisionContext, remaining: np.ndarray) -> np.ndarray:
        scores = np.where(remaining, _scores(context) / self.config.temperature, -np.inf)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------- posterior sampling


class _SamplingPolicy(Policy):
    """Ranks by posterior draws; executes one of ``mc_samples`` seeded draws."""

    config: ThompsonConfig | LinearThompsonConfig

    @abstractmethod
    def _draw_scores(self, context: DecisionContext, rng: np.random.Generator) -> np.ndarray:
        """``(mc_samples, n_candidates)`` posterior samples of each candidate's reward."""

    def _orders(self, context: DecisionContext, slate_size: int) -> np.ndarray:
        _check_slate(slate_size, _n_candidates(context))
        draws = self._draw_scores(context, np.random.default_rng(self.config.mc_seed))
        return np.argsort(-draws, axis=1, kind="stable")[:, :slate_size]

    def position_probabilities(self, context: DecisionContext, slate_size: int) -> np.ndarray:
        orders = self._orders(context, slate_size)
        n = _n_candidates(context)
        return np.stack(
            [np.bincount(orders[:, k], minlength=n) for k in range(slate_size)], axis=1
        ) / len(orders)

    def choose(
        self, context: DecisionContext, rng: np.random.Generator, *, slate_size: int = 1
    ) -> Decision:
        orders = self._orders(context, slate_size)
        n = _n_candidates(context)
        marginals = np.stack(
            [np.bincount(orders[:, k], minlength=n) for k in range(slate_size)], axis=1
        ) / len(orders)
        picked = orders[int(rng.integers(len(orders)))]
        joint = float(np.mean(np.all(orders == picked, axis=1)))
        return _decision(tuple(int(j) for j in picked), marginals, joint)


def _options(context: DecisionContext, n_options: int) -> np.ndarray:
    if context.options is None:
        raise ArgumentError(argument="options", value=None, problem="this policy needs options")
    options = np.asarray(context.options, dtype=np.int64)
    bad = np.flatnonzero((options < 0) | (options >= n_options))
    if bad.size:
        raise ArgumentError(
            argument="options", value=int(options[bad[0]]), problem=f"outside [0, {n_options})"
        )
    return options


def _check_reward(item: Feedback) -> None:
    if not 0 <= item.reward <= 1:
        raise ArgumentError(argument="reward", value=item.reward, problem="must be in [0, 1]")


class ThompsonPolicy(_SamplingPolicy):
    """Beta-Bernoulli Thompson sampling per catalog option and context bucket."""

    kind = "thompson"
    config: ThompsonConfig

    def __init__(self, config: ThompsonConfig, posterior: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        shape = (config.n_buckets, config.n_options)
        self.alpha = np.full(shape, config.prior_alpha)
        self.beta = np.full(shape, config.prior_beta)
        if posterior:
            self.alpha = _matrix(posterior, "alpha", shape)
            self.beta = _matrix(posterior, "beta", shape)

    def _draw_scores(self, context: DecisionContext, rng: np.random.Generator) -> np.ndarray:
        options = _options(context, self.config.n_options)
        b = self._bucket(context.bucket)
        size = (self.config.mc_samples, options.size)
        return rng.beta(self.alpha[b, options], self.beta[b, options], size=size)

    def _bucket(self, bucket: int) -> int:
        if not 0 <= bucket < self.config.n_buckets:
            raise ArgumentError(
                argument="bucket", value=bucket, problem=f"outside [0, {self.config.n_buckets})"
            )
        return bucket

    def update(self, feedback: Sequence[Feedback]) -> None:
        """Add each reward to alpha and its complement to beta of (bucket, option)."""
        for item in feedback:
            _check_reward(item)
            option = _options(DecisionContext(options=(item.option,)), self.config.n_options)[0]
            b = self._bucket(item.bucket)
            self.alpha[b, option] += item.reward
            self.beta[b, option] += 1 - item.reward

    def _posterior(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "beta": self.beta.tolist()}

    def means(self) -> np.ndarray:
        """Posterior mean reward per (bucket, option)."""
        return self.alpha / (self.alpha + self.beta)


class LinearThompsonPolicy(_SamplingPolicy):
    """Linear Thompson sampling: reward ~ x @ theta, theta ~ N(A^-1 b, noise^2 A^-1).

    One model per catalog option (``n_options > 1``, disjoint models, candidates say
    which via ``context.options``) or one shared model (``n_options == 1``).
    """

    kind = "linear_thompson"
    config: LinearThompsonConfig

    def __init__(
        self, config: LinearThompsonConfig, posterior: dict[str, Any] | None = None
    ) -> None:
        super().__init__(config)
        d, m = config.dim, config.n_options
        self.precision = np.tile(np.eye(d) * config.ridge, (m, 1, 1))
        self.b = np.zeros((m, d))
        if posterior:
            self.precision = _matrix(posterior, "precision", (m, d, d))
            self.b = _matrix(posterior, "b", (m, d))
        # per model: (posterior mean, L^-T with L L^T = precision), until the next update
        self._factors: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _factor(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        if m not in self._factors:
            chol = np.linalg.cholesky(self.precision[m])
            mean = np.linalg.solve(self.precision[m], self.b[m])
            self._factors[m] = (mean, np.linalg.inv(chol).T)
        return self._factors[m]

    def _models(self, context: DecisionContext, n: int) -> np.ndarray:
        if self.config.n_options == 1:
            return np.zeros(n, dtype=np.int64)
        return _options(context, self.config.n_options)

    def _features(self, context: DecisionContext) -> np.ndarray:
        if context.features is None:
            raise ArgumentError(argument="features", value=None, problem="this policy needs them")
        x = as_array(context.features, argument="features", ndim=2, dtype=np.float64)
        if x.shape[1] != self.config.dim:
            raise ArgumentError(
                argument="features", value=x.shape, problem=f"expected {self.config.dim} columns"
            )
        return x

    def _draw_scores(self, context: DecisionContext, rng: np.random.Generator) -> np.ndarray:
        x = self._features(context)
        models = self._models(context, len(x))
        scores = np.empty((self.config.mc_samples, len(x)))
        for m in np.unique(models):
            mean, root = self._factor(int(m))
            z = rng.standard_normal((self.config.mc_samples, self.config.dim))
            # theta = mean + noise * L^-T z has covariance noise^2 * (L L^T)^-1 = noise^2 A^-1
            theta = mean + self.config.noise * z @ root.T
            cols = np.flatnonzero(models == m)
            scores[:, cols] = theta @ x[cols].T
        return scores

    def update(self, feedback: Sequence[Feedback]) -> None:
        """Add ``x x^T`` to the option's precision and ``reward * x`` to its ``b``."""
        for item in feedback:
            _check_reward(item)
            if item.features is None:
                raise ArgumentError(argument="features", value=None, problem="feedback needs them")
            x = self._features(DecisionContext(features=np.asarray([item.features])))[0]
            m = int(self._models(DecisionContext(options=(item.option,)), 1)[0])
            self.precision[m] += np.outer(x, x)
            self.b[m] += item.reward * x
            self._factors.pop(m, None)

    def _posterior(self) -> dict[str, Any]:
        return {"precision": self.precision.tolist(), "b": self.b.tolist()}


def _matrix(posterior: dict[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in posterior:
        raise ArgumentError(argument=f"posterior.{key}", value=None, problem="missing")
    value = np.asarray(posterior[key], dtype=np.float64)
    if value.shape != shape:
        raise ArgumentError(
            argument=f"posterior.{key}", value=value.shape, problem=f"expected shape {shape}"
        )
    return value


_BUILDERS: dict[str, Callable[[Any, dict[str, Any] | None], Policy]] = {
    "uniform": lambda c, _: UniformPolicy(c),
    "epsilon_greedy": lambda c, _: EpsilonGreedyPolicy(c),
    "softmax": lambda c, _: SoftmaxPolicy(c),
    "thompson": ThompsonPolicy,
    "linear_thompson": LinearThompsonPolicy,
}


def build_policy(config: PolicyConfig) -> Policy:
    """A fresh policy (prior posterior) for ``config``."""
    return _BUILDERS[config.kind](config, None)


def policy_from_state(state: PolicyState | dict[str, Any]) -> Policy:
    """Rebuild a policy from :meth:`Policy.state` (or its JSON form, validated here)."""
    parsed = state if isinstance(state, PolicyState) else PolicyState.model_validate(state)
    return _BUILDERS[parsed.config.kind](parsed.config, parsed.posterior)
