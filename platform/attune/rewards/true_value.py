"""True policy values in reward units: what ``attune outcomes`` pays, in expectation.

:class:`TrueValue` computes, for a :class:`attune.simulator.environment.SimulatorEnvironment`
and a :class:`RewardConfig`, the exact expected total reward of a served slate: the sum
over its rows of what :func:`attune.rewards.attribution.attribute_rewards` would write,
averaged over the environment's random answer.

How. Each shown position ends in one of four states (not engaged; engaged, not
completed; completed, no cure; completed and cured), with probabilities from the
presentation's ground truth; a slate of three has 4**3 = 64 joint outcomes. The reward of
every (ordered slate, delinquent or not, outcome) is computed once by running the real
attribution on the events :func:`attune.simulator.environment.response_events` emits for it
(336 ordered slates x 2 x 64 synthetic decisions), so the expectation follows the
reward definition exactly, including its imperfections (a cure payment that another
option caused also credits a shown, uncompleted pay-now). Per presentation the expected
reward is then ``sum_outcomes P(outcome) * reward(outcome)``.

The reference policies are exact too: ``random`` is the mean over all 336 ordered slates,
``oracle`` the best of them per presentation, ``best_fixed`` the one slate best on
average. Assumes every window is at least an hour (the environment's events come within
the hour).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from attune.data.schema import OPTION_IDS, SLATE_SIZE
from attune.errors import InvalidInput
from attune.rewards.attribution import attribute_rewards
from attune.rewards.config import RewardConfig
from attune.simulator.environment import (
    PresentationStates,
    ServedSlate,
    SimulatorEnvironment,
    response_events,
)
from attune.simulator.ground_truth import share_of_oracle_lift, top_k_slates

_N = len(OPTION_IDS)
#: Every ordered slate of SLATE_SIZE distinct options, (336, 3).
ALL_SLATES = np.array(list(itertools.permutations(range(_N), SLATE_SIZE)), dtype=np.int64)
_SLATE_ID = {tuple(s): i for i, s in enumerate(ALL_SLATES.tolist())}
#: Position states: 0 not engaged, 1 engaged only, 2 completed no cure, 3 completed and cured.
_STATES = 4
_OUTCOMES = np.array(list(itertools.product(range(_STATES), repeat=SLATE_SIZE)), dtype=np.int64)
_T0 = datetime(2030, 1, 1, tzinfo=UTC)
_CHUNK = 4096


@functools.lru_cache(maxsize=8)
def _reward_table_cached(config_json: str) -> np.ndarray:
    return _reward_table(RewardConfig.model_validate_json(config_json))


def _reward_table(config: RewardConfig) -> np.ndarray:
    """``(336, 2, 64)`` total reward of (slate, delinquent, outcome) under ``config``.

    When no rule reads ``plan_offered`` (the only event engagement alone produces), an
    engaged-only position earns what an unengaged one does, so only the 27 outcomes
    without that state are attributed and the rest are copied.
    """
    engaged_matters = "plan_offered" in config.event_types
    needed = [o for o, out in enumerate(_OUTCOMES) if engaged_matters or not (out == 1).any()]
    decisions, events = [], []
    t_us = int((_T0 - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    case = 0
    for s, slate in enumerate(ALL_SLATES):
        order = tuple(OPTION_IDS[i] for i in slate)
        rest = tuple(o for o in OPTION_IDS if o not in order)
        for delinquent in (0, 1):
            for o in needed:
                outcome = _OUTCOMES[o]
                who = f"{s}.{delinquent}.{o}"
                decisions.append((who, order + rest))
                completed = outcome >= 2
                events.extend(
                    response_events(
                        borrower_id=case,
                        loan_id=case,
                        tag=who,
                        t_us=t_us,
                        shown=slate,
                        engaged=outcome >= 1,
                        completed=completed,
                        owed_cents=10_000 * delinquent,
                        known_cents=0,
                        cured=bool(delinquent and (outcome == 3).any()),
                    )
                )
                case += 1
    hashes = [who for who, _ in decisions]
    frame = pd.DataFrame(
        {
            "decision_id": hashes,
            "ts": pd.Timestamp(_T0),
            "role": "primary",
            "borrower_hash": hashes,
            "arm": "x",
            "model_version": "x",
            "feature_spec_hash": "x",
            "touchpoint": "app",
            "candidates": [list(OPTION_IDS)] * len(hashes),
            "features": [[[0.0]] * _N] * len(hashes),
            "scores": [[0.0] * _N] * len(hashes),
            "returned_order": [list(order) for _, order in decisions],
            "propensities": None,
        }
    )
    ev = pd.DataFrame(events)
    ev["borrower_hash"] = np.asarray(hashes, dtype=object)[ev["borrower_id"].to_numpy()]
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    ev = ev[["borrower_hash", "ts", "event_type", "amount", "channel"]]
    far = _T0 + timedelta(days=10 * 365)
    rows = attribute_rewards(frame, ev, config, as_of=far).to_pandas()
    totals = rows.groupby("decision_id", sort=False)["reward"].sum()
    table = np.zeros((len(ALL_SLATES), 2, len(_OUTCOMES)))
    table[:, :, needed] = (
        totals.reindex(hashes).fillna(0.0).to_numpy().reshape(len(ALL_SLATES), 2, len(needed))
    )
    if not engaged_matters:
        # an engaged-only position (1) is an unengaged one (0)
        same = np.where(_OUTCOMES == 1, 0, _OUTCOMES) @ (_STATES ** np.arange(SLATE_SIZE)[::-1])
        table = table[:, :, same]
    return table


class TrueValue:
    """Exact expected rewards of slates in an environment under a reward definition."""

    def __init__(self, env: SimulatorEnvironment, config: RewardConfig) -> None:
        if config.slate_size != SLATE_SIZE:
            raise InvalidInput(
                f"true values need slate_size {SLATE_SIZE}, the config has {config.slate_size}",
                field="slate_size",
                value=config.slate_size,
            )
        self.env = env
        self.config = config
        self.table = _reward_table_cached(config.model_dump_json())

    @property
    def states(self) -> PresentationStates:
        return self.env.states

    def _position_probs(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """``(n, 3, 4)`` P(position state) for option ``slates[i, k]`` at row ``rows[i]``."""
        s = self.states
        at = (rows[:, None], slates)
        b = self.env.position_bias[: slates.shape[1]][None, :]
        pe, pc, q = s.p_engage[at], s.p_complete[at], s.cure[at]
        delinquent = (s.owed_cents[rows] > 0)[:, None]
        q = np.where(delinquent, q, 0.0)  # a current borrower is never "cured"
        out = np.stack([1.0 - b * pe, b * (pe - pc), b * pc * (1.0 - q), b * pc * q], axis=2)
        return np.clip(out, 0.0, 1.0)

    def expected(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Expected total reward of slate ``slates[i]`` (option indices) at row ``rows[i]``."""
        rows = np.asarray(rows, dtype=np.int64)
        slates = np.asarray(slates, dtype=np.int64)
        if slates.ndim != 2 or slates.shape[1] != SLATE_SIZE:
            raise InvalidInput(
                f"slates must be (n, {SLATE_SIZE}) option indices, got {slates.shape}",
                field="slates",
                value=list(slates.shape),
            )
        ids = np.array([_SLATE_ID[tuple(s)] for s in slates.tolist()], dtype=np.int64)
        return self._expected(rows, slates, ids)

    def _expected(self, rows: np.ndarray, slates: np.ndarray, ids: np.ndarray) -> np.ndarray:
        probs = self._position_probs(rows, slates)
        joint = np.ones((rows.size, len(_OUTCOMES)))
        for k in range(SLATE_SIZE):
            joint *= probs[:, k, :][:, _OUTCOMES[:, k]]
        delinquent = (self.states.owed_cents[rows] > 0).astype(np.int64)
        return np.asarray((joint * self.table[ids, delinquent]).sum(axis=1))

    def slate_values(self, slates: Sequence[ServedSlate]) -> np.ndarray:
        """Expected total reward of each served slate (its presentation's ground truth)."""
        from attune.simulator.environment import slate_indices

        rows = np.array([self.env.row_of(s) for s in slates], dtype=np.int64)
        idx = np.stack([slate_indices(s.options) for s in slates]) if slates else np.empty((0, 3))
        return self.expected(rows, idx)

    def true_value(self, slates: Sequence[ServedSlate]) -> float:
        """Mean expected reward per served slate."""
        values = self.slate_values(slates)
        return float(values.mean()) if values.size else float("nan")

    def policy_value(
        self, presentation_ids: Sequence[int] | np.ndarray, scores: np.ndarray
    ) -> float:
        """Mean expected reward of the top-3-by-score slates (``scores``: (n, n_options))."""
        rows = self.states.rows(presentation_ids)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (rows.size, _N):
            raise InvalidInput(
                f"scores has shape {scores.shape}, expected {(rows.size, _N)}",
                field="scores",
                value=list(scores.shape),
            )
        return (
            float(self.expected(rows, top_k_slates(scores)).mean()) if rows.size else float("nan")
        )

    def all_slates(self, rows: np.ndarray) -> np.ndarray:
        """``(n, 336)`` expected reward of every ordered slate at each row."""
        out = np.empty((rows.size, len(ALL_SLATES)))
        for lo in range(0, rows.size, _CHUNK):
            chunk = rows[lo : lo + _CHUNK]
            for j, slate in enumerate(ALL_SLATES):
                tiled = np.tile(slate, (chunk.size, 1))
                ids = np.full(chunk.size, j, dtype=np.int64)
                out[lo : lo + chunk.size, j] = self._expected(chunk, tiled, ids)
        return out

    def reference(self, presentation_ids: Sequence[int] | np.ndarray) -> dict[str, float]:
        """Mean expected rewards of ``random``, ``best_fixed`` and ``oracle`` slates."""
        rows = self.states.rows(presentation_ids)
        every = self.all_slates(rows)
        return {
            "random": float(every.mean()),
            "best_fixed": float(every.mean(axis=0).max()),
            "oracle": float(every.max(axis=1).mean()),
        }

    def oracle_slates(self, presentation_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The best ordered slate (option indices) of each presentation."""
        rows = self.states.rows(presentation_ids)
        return ALL_SLATES[self.all_slates(rows).argmax(axis=1)]


def oracle_share(value: float, reference: dict[str, float]) -> float:
    """``(value - random) / (oracle - random)``, references from :meth:`TrueValue.reference`."""
    return share_of_oracle_lift(value, random=reference["random"], oracle=reference["oracle"])
