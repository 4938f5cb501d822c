"""The servicing window of one billing cycle: slates shown, responses, and cures.

From the day after the due date ``D`` to ``D+13d``, each borrower sees up to 3 slates
(distinct days, in time order). At each, the borrower's state is read point in time,
the legacy policy draws a slate, the hidden model draws the responses, and completions
feed back (autopay on, plan offered/accepted, lower lateness). The loan-level outcome
``current_14d`` is then booked so that the event log agrees with it:

* current at the slate, or a cure already scheduled inside the window: current;
* otherwise current when a completed option cures it (plans and pay-now always, the
  others with their cure probability) or the borrower self-cures
  (``1 - exp(-14 * hazard)``); the cure is scheduled inside the 14 days;
* "not current" forbids any cure until its window has passed (a later cure waits).

Between slates (and after the last) a delinquent borrower self-cures with the same
per-day hazard. Because the window ends by ``D+27d18h`` and the next due date is at
least ``D+28d`` away, no outcome window straddles an installment.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from attune.data.schema import TOUCHPOINTS
from attune.simulator import _behaviour as bh
from attune.simulator._events import EVENT_CODE, MonthEvents, PresentationRows, presentation_id
from attune.simulator._population import DAY, HOUR, Population
from attune.simulator.logging_policy import legacy_scores, sample_slates

_E = EVENT_CODE
_MAX_PRESENTATIONS = 3
_PRESENTATION_DAYS = 13  # presentations fall on distinct days D+1 .. D+13
#: P(0, 1, 2, 3 slates in a cycle) as cumulative thresholds for 1, 2, 3.
_K_CUM_CURRENT = np.cumsum([0.2, 0.4, 0.25])
_K_CUM_DELINQUENT = np.cumsum([0.1, 0.3, 0.35])
_NO_DAY = 10_000
#: A plan runs for this many cycles after the one it was accepted in.
PLAN_CYCLES = 3
NO_CURE = np.iinfo(np.int64).max


class _ShardShape(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def epsilon(self) -> float: ...


class ShardState(Protocol):
    """What a servicing window reads and updates of its shard (a ``ShardSimulator``)."""

    rng: np.random.Generator
    pop: Population
    month_ts: np.ndarray
    autopay: np.ndarray
    tau: np.ndarray
    stress: np.ndarray
    paid: np.ndarray
    hardship_ts: np.ndarray
    reminders: np.ndarray
    plan_left: np.ndarray
    prev_logins: np.ndarray
    prev_contacts: np.ndarray

    @property
    def plan(self) -> _ShardShape: ...

    def count(
        self, keys: np.ndarray, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Events per borrower ``idx`` with ``lo <= ts < hi``."""
        ...

    def raw_keys(self, idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Window-count keys of events ``(idx, ts)``."""
        ...


class CureState:
    """Per-borrower bookkeeping of one cycle's cure (mutable, lives for one cycle)."""

    def __init__(self, due: np.ndarray) -> None:
        n = due.shape[0]
        self.ts = np.full(n, NO_CURE, dtype=np.int64)  # when the loan becomes current
        self.plan = np.zeros(n, dtype=bool)  # the cure is a plan (else a payment)
        self.hold = np.full(n, np.iinfo(np.int64).min // 2)  # no cure before this
        self.free_from = due.copy()  # self-cure already decided up to here

    @property
    def scheduled(self) -> np.ndarray:
        return self.ts < NO_CURE


class ServicingWindow:
    """Runs one cycle's servicing window for every borrower of a shard."""

    def __init__(
        self,
        sim: ShardState,
        *,
        month: int,
        log: MonthEvents,
        due: np.ndarray,
        dues: np.ndarray,
        delinquent: np.ndarray,
        hazard: np.ndarray,
    ) -> None:
        self.sim = sim
        self.month = month
        self.log = log
        self.due = due
        self.dues = dues  # installments due so far, this cycle's included
        self.delinquent = delinquent  # owing after the due date
        self.hazard = hazard  # per-day self-cure hazard of this cycle
        self.cure = CureState(due)

    def run(
        self, act: np.ndarray, login_keys: np.ndarray, contact_keys: np.ndarray
    ) -> list[PresentationRows]:
        """Up to 3 slates per borrower on distinct days D+1..D+13, in time order."""
        sim, log, due, delinquent = self.sim, self.log, self.due, self.delinquent
        rng, pop, n = sim.rng, sim.pop, sim.plan.size
        cum = np.where(delinquent[:, None], _K_CUM_DELINQUENT, _K_CUM_CURRENT)
        count = (rng.random(n)[:, None] >= cum).sum(axis=1) * act
        days = np.argsort(rng.random((n, _PRESENTATION_DAYS)), axis=1)[:, :_MAX_PRESENTATIONS] + 1
        days = np.sort(
            np.where(np.arange(_MAX_PRESENTATIONS) < count[:, None], days, _NO_DAY), axis=1
        )
        times = due[:, None] + days * DAY + rng.integers(6 * HOUR, 18 * HOUR, days.shape)
        p_app = 0.15 + 0.6 * pop.engagement[:, None]
        u = rng.random(days.shape)
        touch = np.where(u < p_app, 0, np.where(u < (1.0 + p_app) / 2.0, 1, 2))
        shown = days < _NO_DAY
        # An app slate is shown in an app session: the session is a login.
        ia, ja = np.nonzero(shown & (touch == TOUCHPOINTS.index("app")))
        login_ts = times[ia, ja] - rng.integers(60, 600, ia.size)
        log.add(ia, login_ts, _E["login"])
        this_logins = np.concatenate([login_keys, sim.raw_keys(ia, login_ts)])
        logins = np.sort(np.concatenate([sim.prev_logins, this_logins]))
        contacts = np.sort(np.concatenate([sim.prev_contacts, contact_keys]))
        sim.prev_logins, sim.prev_contacts = this_logins, contact_keys

        rows = []
        for j in range(_MAX_PRESENTATIONS):
            r = np.flatnonzero(shown[:, j])
            if r.size == 0:
                continue
            t = times[r, j]
            self.natural_cure(r[self.delinquent[r]], times[:, j])
            rows.append(self._present(j, r, t, touch[r, j], logins, contacts))
        return rows

    def _present(
        self,
        j: int,
        r: np.ndarray,
        t: np.ndarray,
        touch: np.ndarray,
        logins: np.ndarray,
        contacts: np.ndarray,
    ) -> PresentationRows:
        """Show one slate to each borrower ``r`` at ``t``; draw and apply the responses."""
        sim, cure, m, dues, hazard = self.sim, self.cure, self.month, self.dues, self.hazard
        rng, pop = sim.rng, sim.pop
        inst = pop.installment_cents[r]
        cured_before = cure.ts[r] <= t
        covered = np.where(cured_before, dues[r], sim.paid[r] // inst)
        late = dues[r] - covered > 0
        oldest_unpaid = sim.month_ts[np.minimum(covered, m)] + (pop.due_day[r] - 1) * DAY
        dpd = np.where(late, (t - oldest_unpaid) / DAY, 0.0)
        pending = late & (cure.ts[r] < NO_CURE)
        certain = ~late | pending
        hardship = (t - sim.hardship_ts[r]) < 180 * DAY
        state = bh.PresentationState(
            dpd=dpd,
            autopay=sim.autopay[r],
            late_tendency=sim.tau[r],
            income_volatility=pop.volatility[r],
            hardship=hardship,
            affinity=pop.affinity[r],
            logins_30d=sim.count(logins, r, t - 30 * DAY, t),
            contacts_7d=sim.count(contacts, r, t - 7 * DAY, t),
            contacts_30d=sim.count(contacts, r, t - 30 * DAY, t),
            touchpoint=touch,
            cure_certain=certain,
            cure_hazard=hazard[r],
        )
        probs = bh.option_probabilities(state)
        scores = legacy_scores(
            dpd=dpd,
            autopay=state.autopay,
            hardship=hardship,
            preferred_channel=pop.preferred_channel[r],
            touchpoint=touch,
        )
        slates, props = sample_slates(scores, epsilon=sim.plan.epsilon, rng=rng)

        # Responses: examined by position, then engaged, completed, and (own) cure.
        at = (np.arange(r.size)[:, None], slates)
        p_engage, p_complete = probs.engage[at], probs.complete[at]
        examined = rng.random(slates.shape) < np.asarray(bh.POSITION_BIAS)
        engaged = examined & (rng.random(slates.shape) < p_engage)
        completed = engaged & (rng.random(slates.shape) * p_engage < p_complete)
        own_cure = completed & (rng.random(slates.shape) < probs.cure_if_completed[at])
        natural = rng.random(r.size) < probs.self_cure
        current_14d = certain | own_cure.any(axis=1) | natural
        self._apply_completions(r, t, slates, engaged, completed, late)

        # Book the cure (or the lack of one) so that the event log agrees with current_14d.
        newly = late & ~certain & current_14d
        lo = np.maximum(t, cure.hold[r])
        by_option = own_cure.any(axis=1)
        natural_ts = lo + 60 + (rng.random(r.size) * (t + 14 * DAY - lo - 120)).astype(np.int64)
        option_ts = lo + rng.integers(60, HOUR, r.size)
        cure.ts[r[newly]] = np.where(by_option, option_ts, natural_ts)[newly]
        plan_cure = (own_cure & np.isin(slates, bh.PLAN_OPTIONS)).any(axis=1) & late
        cure.plan[r[plan_cure]] = True
        failed = late & ~certain & ~current_14d
        cure.hold[r[failed]] = t[failed] + 14 * DAY
        cure.free_from[r] = t

        responses = np.where(completed, 2, np.where(engaged, 1, 0))
        return PresentationRows(
            presentation_id=presentation_id(pop.ids[r], m, j),
            idx=r,
            ts=t,
            touchpoint=touch,
            slates=slates,
            propensities=props,
            responses=responses,
            current_14d=current_14d,
            value=probs.value,
            p_engage=probs.engage,
            p_complete=probs.complete,
        )

    def _apply_completions(
        self,
        r: np.ndarray,
        t: np.ndarray,
        slates: np.ndarray,
        engaged: np.ndarray,
        completed: np.ndarray,
        late: np.ndarray,
    ) -> None:
        """Feed completed options back into the borrower's state and the event log."""
        sim, log = self.sim, self.log
        rng = sim.rng

        def done(option: int) -> np.ndarray:
            return (completed & (slates == option)).any(axis=1)

        enrolled = done(bh.AUTOPAY) & ~sim.autopay[r]
        i = r[enrolled]
        log.add(i, t[enrolled] + rng.integers(60, 1_800, i.size), _E["autopay_on"])
        sim.autopay[i] = True
        # A due date that matches payday, or a reminder, makes late payments rarer.
        moved = done(bh.DUE_DATE)
        log.add(r[moved], t[moved] + 120, _E["due_date_changed"])
        sim.tau[r[moved]] *= 0.4
        for ch, option in enumerate(bh.REMINDERS):
            log.add(r[done(option)], t[done(option)] + 180, _E["reminder_on"], channel=ch)
            new = done(option) & ~sim.reminders[r, ch]
            sim.tau[r[new]] *= 0.75
            sim.reminders[r[new], ch] = True
        plan_shown = np.isin(slates, bh.PLAN_OPTIONS)
        offered = (engaged & plan_shown).any(axis=1)
        log.add(r[offered], t[offered] + rng.integers(10, 50, offered.sum()), _E["plan_offered"])
        accepted = (completed & plan_shown).any(axis=1)
        sim.plan_left[r[accepted]] = PLAN_CYCLES + 1
        sim.stress[r[done(bh.HARDSHIP)]] -= 1.0
        # A plan accepted while current re-ages nothing; a delinquent one is booked as the cure.
        noop = accepted & ~late
        log.add(
            r[noop],
            t[noop] + rng.integers(60, 120, noop.sum()),
            _E["plan_accepted"],
            amount=np.zeros(noop.sum()),
        )

    def natural_cure(self, i: np.ndarray, until: np.ndarray) -> None:
        """Self-cure of borrowers ``i`` in their open interval up to ``until``."""
        sim, cure, hazard = self.sim, self.cure, self.hazard
        i = i[cure.ts[i] == NO_CURE]
        lo = np.maximum(cure.free_from[i], cure.hold[i])
        span = np.maximum(until[i] - lo, 0)
        hit = sim.rng.random(i.size) < 1.0 - np.exp(-hazard[i] * span / DAY)
        # strictly inside the interval: never at the same second as the due date
        ts = lo + 60 + (sim.rng.random(i.size) * np.maximum(span - 120, 0)).astype(np.int64)
        cure.ts[i[hit]] = ts[hit]
