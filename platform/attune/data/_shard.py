"""One shard of the simulator: its borrowers, month by month, vectorized with numpy.

Each month ``m`` is one billing cycle per borrower, anchored on the due date ``D``
(day ``due_day`` of month ``m``)::

    D-14d ........ D-6h .. D ...... D+1d ............. D+13d18h ... D+20d .. D+27d18h = E
    logins, outreach, hardship flags, autopay-off
                   on-time payments  installment_due
                                       presentations (servicing window; <= 3, one a day)
                                       collection outreach
                                                                 partial / late / missed
                                                                 payments, charge-off,
                                                                 payoff (by E)

Every presentation's 14-day outcome window ends by ``E`` < next due date (>= D+28d),
so a presentation's ``current_14d`` is settled inside its own cycle and next month's
on-time payments (>= D_next - 6h) never fall inside it.

Delinquency (``current_14d``): a presentation to a borrower who is current, or whose
cure is already scheduled inside the window, is current 14 days later. Otherwise the
loan is current 14 days later when a completed option cures it (plans and pay-now
always; the others with :func:`~attune.data._behaviour.option_probabilities`'s
probability) or the borrower self-cures (``1 - exp(-14 * hazard)``). A cure is booked
as one event that brings the loan current (``payment_late`` for everything owed, or
``plan_accepted`` whose amount is the arrears re-aged). A "not current" outcome
forbids any cure until its window has passed, so each logged outcome stays true.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from attune.data import _behaviour as bh
from attune.data._events import (
    EventLog,
    PresentationRows,
    concat_rows,
    presentation_id,
    presentation_tables,
)
from attune.data._population import DAY, Population, draw_population
from attune.data.logging_policy import legacy_scores, sample_slates
from attune.data.schema import CHANNELS, EVENT_TYPES, TOUCHPOINTS

HOUR = 3_600
#: Billing-cycle offsets from the due date (seconds).
_CYCLE_END = 27 * DAY + 18 * HOUR
_MAX_PRESENTATIONS = 3
_PRESENTATION_DAYS = 13  # presentations fall on distinct days D+1 .. D+13
_NONE = np.iinfo(np.int64).max
_E = {name: i for i, name in enumerate(EVENT_TYPES)}
#: Outreach per cycle: (base rate, P(delivered)) by channel; push needs the app.
_OUTREACH = {"sms": (0.7, 0.97), "email": (1.0, 0.93), "push": (0.8, 0.9)}
_COLLECTION_CHANNELS = ("sms", "email")
#: P(0, 1, 2, 3 slates in a cycle) as cumulative thresholds for 1, 2, 3.
_K_CUM_CURRENT = np.cumsum([0.2, 0.4, 0.25])
_K_CUM_DELINQUENT = np.cumsum([0.1, 0.3, 0.35])
_NO_DAY = 10_000
_PLAN_CYCLES = 3
_CHARGE_OFF_ARREARS = 4


@dataclass(frozen=True)
class ShardPlan:
    """Which borrowers a shard simulates, and how."""

    shard: int
    first_id: int
    size: int
    seed: int
    months: int
    start_month: np.datetime64  # datetime64[M]
    epsilon: float


@dataclass(frozen=True)
class CycleOutput:
    """The tables of one simulated month, truncated at the end of the history."""

    month: int
    events: pa.Table
    presentations: pa.Table
    values: pa.Table  # ground truth: presentation x option
    value_matrix: np.ndarray  # (n_presentations, n_options), catalog order
    slates: np.ndarray  # (n_presentations, 3) option indices actually shown


def shard_rng(seed: int, shard: int) -> np.random.Generator:
    """The random stream of shard ``shard``: keyed by shard index, not by worker."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(shard,)))


class ShardSimulator:
    """Simulates one shard; :meth:`cycles` yields each month's tables in order."""

    def __init__(self, plan: ShardPlan) -> None:
        self.plan = plan
        self.rng = shard_rng(plan.seed, plan.shard)
        self.pop: Population = draw_population(
            self.rng, first_id=plan.first_id, n=plan.size, start_month=plan.start_month
        )
        months = plan.start_month + np.arange(plan.months + 1)
        self.month_ts = months.astype("datetime64[s]").astype(np.int64)
        self.end_ts = int(self.month_ts[-1])
        self.t0 = int(self.month_ts[0]) - 90 * DAY  # origin of the window-count keys
        n = plan.size
        self.active = np.ones(n, dtype=bool)
        self.autopay = self.pop.autopay.copy()
        self.tau = self.pop.late_tendency.copy()
        self.stress = self.pop.stress.copy()
        self.paid = np.zeros(n, dtype=np.int64)  # cents paid toward in-history installments
        self.hardship_ts = np.full(n, -_NONE // 2, dtype=np.int64)
        self.reminders = np.zeros((n, len(CHANNELS)), dtype=bool)
        self.plan_left = np.zeros(n, dtype=np.int64)
        self.prev_logins = np.empty(0, dtype=np.int64)
        self.prev_contacts = np.empty(0, dtype=np.int64)

    def cycles(self) -> Iterator[CycleOutput]:
        for m in range(self.plan.months):
            yield self._cycle(m)

    # ----------------------------------------------------------------- helpers

    def _due(self, k: np.ndarray) -> np.ndarray:
        """Due timestamp of in-history installment ``k`` (per borrower)."""
        return self.month_ts[k] + (self.pop.due_day - 1) * DAY

    def _keys(self, idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return np.sort((idx.astype(np.int64) << 32) + (ts - self.t0))

    def _count(
        self, keys: np.ndarray, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Events per borrower ``idx`` with ``lo <= ts < hi``."""
        base = idx.astype(np.int64) << 32
        return np.searchsorted(keys, base + (hi - self.t0)) - np.searchsorted(
            keys, base + (lo - self.t0)
        )

    def _uniform_times(self, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return lo[idx] + (self.rng.random(idx.shape[0]) * (hi - lo)[idx]).astype(np.int64)

    # ----------------------------------------------------------------- one month

    def _cycle(self, m: int) -> CycleOutput:
        rng, pop, n = self.rng, self.pop, self.plan.size
        log = EventLog()
        act = self.active.copy()
        due = self._due(np.full(n, m))
        history_start = int(self.month_ts[0])
        inst = pop.installment_cents
        has_due = act & (m < pop.remaining)

        # Income shocks and hardship flags (reported by phone: an inbound contact first).
        level = 4.0 * (inst / 100.0 / pop.income - 0.1)
        noise = 2.2 * pop.volatility * rng.standard_normal(n)
        shock = act & (rng.random(n) < 0.004 + 0.12 * pop.volatility)
        self.stress = level + 0.6 * (self.stress - level) + noise + 2.0 * shock
        i = np.flatnonzero(shock)
        ts = np.maximum(due[i] - rng.integers(2 * DAY, 13 * DAY, i.size), history_start + HOUR)
        log.add(i, ts - 60, _E["inbound_contact"])
        log.add(i, ts, _E["hardship_flag"])
        self.hardship_ts[i] = ts

        p_off = 0.008 + 0.25 * bh._sigmoid(2.5 * (self.stress - 1.6))
        off = act & self.autopay & (rng.random(n) < p_off)
        i = np.flatnonzero(off)
        ts = np.maximum(due[i] - rng.integers(DAY, 10 * DAY, i.size), history_start)
        log.add(i, ts, _E["autopay_off"])
        self.autopay &= ~off

        # The installment: due at D, paid on time in the 6 hours before, or not.
        dues_before = np.minimum(m, pop.remaining)
        arrears_before = np.maximum(dues_before - self.paid // inst, 0)
        p_on_time = bh.on_time_probability(
            autopay=self.autopay, late_tendency=self.tau, stress=self.stress, arrears=arrears_before
        )
        on_time = has_due & (rng.random(n) < p_on_time)
        i = np.flatnonzero(has_due)
        log.add(i, due[i], _E["installment_due"], amount=inst[i] / 100.0)
        i = np.flatnonzero(on_time)
        ts = due[i] - rng.integers(60, 6 * HOUR, i.size)
        log.add(i, ts, _E["payment_on_time"], amount=inst[i] / 100.0)
        self.paid += on_time * inst
        dues = dues_before + has_due
        arrears = dues - self.paid // inst
        delinquent = act & (arrears > 0)
        hazard = bh.cure_hazard(late_tendency=self.tau, stress=self.stress, arrears=arrears)

        cure = _CureState(due)
        window_lo = np.maximum(due - 14 * DAY, history_start)
        logins, contacts = self._engagement(log, act, delinquent, due, window_lo)
        rows = self._presentations(
            m, log, act, delinquent, due, dues, hazard, cure, logins, contacts
        )

        # What the servicing window left open resolves by the end of the cycle.
        cycle_end = due + _CYCLE_END
        self._natural_cure(cure, np.flatnonzero(delinquent), hazard, cycle_end)
        cured = cure.ts < _NONE
        i = np.flatnonzero(cured)
        owed = dues * inst - self.paid
        # A plan re-ages the arrears. The event vocabulary has no adjustment type, so the
        # re-aging credit is booked as a payment one second after the acceptance: days
        # past due computed from payments alone then see the loan current, as it is.
        p = i[cure.plan[i]]
        log.add(p, cure.ts[p] - 1, _E["plan_accepted"], amount=owed[p] / 100.0)
        log.add(i, cure.ts[i], _E["payment_late"], amount=owed[i] / 100.0)
        self.paid[i] = dues[i] * inst[i]
        unresolved = has_due & ~on_time & ~cured
        self._close_cycle(log, act, unresolved, arrears_before, dues, due, cycle_end)

        events = log.table(
            borrower_ids=pop.ids,
            loan_ids=pop.loan_ids,
            month=m,
            start_ts=history_start,
            end_ts=self.end_ts,
        )
        presentations, values, matrix, slates = presentation_tables(
            concat_rows(rows), borrower_ids=pop.ids, loan_ids=pop.loan_ids, end_ts=self.end_ts
        )
        return CycleOutput(m, events, presentations, values, matrix, slates)

    def _engagement(
        self,
        log: EventLog,
        act: np.ndarray,
        delinquent: np.ndarray,
        due: np.ndarray,
        lo: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logins, inbound contacts and outreach; returns (login, outreach-sent) keys."""
        rng, pop, n = self.rng, self.pop, self.plan.size
        hi = due + 14 * DAY
        everyone = np.arange(n)
        i = np.repeat(everyone, rng.poisson((0.5 + 3.0 * pop.engagement + delinquent) * act))
        login_ts = self._uniform_times(i, lo, hi)
        log.add(i, login_ts, _E["login"])
        logins = (i, login_ts)
        i = np.repeat(everyone, rng.poisson((0.04 + 0.25 * delinquent) * act))
        log.add(i, self._uniform_times(i, lo, hi), _E["inbound_contact"])

        sent: list[tuple[np.ndarray, np.ndarray]] = []
        for ch, name in enumerate(CHANNELS):
            base, p_delivered = _OUTREACH[name]
            reach = pop.engagement > 0.3 if name == "push" else np.ones(n, dtype=bool)
            # servicing and reminder messages before the due date, collections after
            i1 = np.repeat(everyone, rng.poisson((base * reach + self.reminders[:, ch]) * act))
            t1 = self._uniform_times(i1, lo, due)
            collect = 1.3 * delinquent * (name in _COLLECTION_CHANNELS)
            i2 = np.repeat(everyone, rng.poisson(collect))
            t2 = self._uniform_times(i2, due + HOUR, hi)
            i, t = np.concatenate([i1, i2]), np.concatenate([t1, t2])
            delivered = rng.random(i.size) < p_delivered
            opened = delivered & (rng.random(i.size) < pop.affinity[i, ch])
            clicked = opened & (rng.random(i.size) < 0.35)
            t_delivered = t + rng.integers(5, 120, i.size)
            t_open = t_delivered + rng.integers(60, 8 * HOUR, i.size)
            t_click = t_open + rng.integers(5, 300, i.size)
            log.add(i, t, _E["outreach_sent"], channel=ch)
            log.add(i[delivered], t_delivered[delivered], _E["outreach_delivered"], channel=ch)
            log.add(i[opened], t_open[opened], _E["outreach_opened"], channel=ch)
            log.add(i[clicked], t_click[clicked], _E["outreach_clicked"], channel=ch)
            sent.append((i, t))
        sent_idx = np.concatenate([s[0] for s in sent])
        sent_ts = np.concatenate([s[1] for s in sent])
        return self._raw_keys(*logins), self._raw_keys(sent_idx, sent_ts)

    def _raw_keys(self, idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return (idx.astype(np.int64) << 32) + (ts - self.t0)

    # ----------------------------------------------------------------- servicing window

    def _presentations(
        self,
        m: int,
        log: EventLog,
        act: np.ndarray,
        delinquent: np.ndarray,
        due: np.ndarray,
        dues: np.ndarray,
        hazard: np.ndarray,
        cure: _CureState,
        login_keys: np.ndarray,
        contact_keys: np.ndarray,
    ) -> list[PresentationRows]:
        """Up to 3 slates per borrower on distinct days D+1..D+13, in time order."""
        rng, pop, n = self.rng, self.pop, self.plan.size
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
        this_logins = np.concatenate([login_keys, self._raw_keys(ia, login_ts)])
        logins = np.sort(np.concatenate([self.prev_logins, this_logins]))
        contacts = np.sort(np.concatenate([self.prev_contacts, contact_keys]))
        self.prev_logins, self.prev_contacts = this_logins, contact_keys

        rows = []
        for j in range(_MAX_PRESENTATIONS):
            r = np.flatnonzero(shown[:, j])
            if r.size == 0:
                continue
            t = times[r, j]
            self._natural_cure(cure, r[delinquent[r]], hazard, times[:, j])
            rows.append(
                self._present(m, j, log, r, t, touch[r, j], dues, hazard, cure, logins, contacts)
            )
        return rows

    def _present(
        self,
        m: int,
        j: int,
        log: EventLog,
        r: np.ndarray,
        t: np.ndarray,
        touch: np.ndarray,
        dues: np.ndarray,
        hazard: np.ndarray,
        cure: _CureState,
        logins: np.ndarray,
        contacts: np.ndarray,
    ) -> PresentationRows:
        """Show one slate to each borrower ``r`` at ``t``; draw and apply the responses."""
        rng, pop = self.rng, self.pop
        inst = pop.installment_cents[r]
        cured_before = cure.ts[r] <= t
        covered = np.where(cured_before, dues[r], self.paid[r] // inst)
        late = dues[r] - covered > 0
        oldest_unpaid = self.month_ts[np.minimum(covered, m)] + (pop.due_day[r] - 1) * DAY
        dpd = np.where(late, (t - oldest_unpaid) / DAY, 0.0)
        pending = late & (cure.ts[r] < _NONE)
        certain = ~late | pending
        hardship = (t - self.hardship_ts[r]) < 180 * DAY
        state = bh.PresentationState(
            dpd=dpd,
            autopay=self.autopay[r],
            late_tendency=self.tau[r],
            income_volatility=pop.volatility[r],
            hardship=hardship,
            affinity=pop.affinity[r],
            logins_30d=self._count(logins, r, t - 30 * DAY, t),
            contacts_7d=self._count(contacts, r, t - 7 * DAY, t),
            contacts_30d=self._count(contacts, r, t - 30 * DAY, t),
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
        slates, props = sample_slates(scores, epsilon=self.plan.epsilon, rng=rng)

        # Responses: examined by position, then engaged, completed, and (own) cure.
        at = (np.arange(r.size)[:, None], slates)
        p_engage, p_complete = probs.engage[at], probs.complete[at]
        examined = rng.random(slates.shape) < np.asarray(bh.POSITION_BIAS)
        engaged = examined & (rng.random(slates.shape) < p_engage)
        completed = engaged & (rng.random(slates.shape) * p_engage < p_complete)
        own_cure = completed & (rng.random(slates.shape) < probs.cure_if_completed[at])
        natural = rng.random(r.size) < probs.self_cure
        current_14d = certain | own_cure.any(axis=1) | natural
        self._apply_completions(log, r, t, slates, engaged, completed, late)

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
        log: EventLog,
        r: np.ndarray,
        t: np.ndarray,
        slates: np.ndarray,
        engaged: np.ndarray,
        completed: np.ndarray,
        late: np.ndarray,
    ) -> None:
        """Feed completed options back into the borrower's state and the event log."""
        rng = self.rng

        def done(option: int) -> np.ndarray:
            return (completed & (slates == option)).any(axis=1)

        enrolled = done(bh.AUTOPAY) & ~self.autopay[r]
        i = r[enrolled]
        log.add(i, t[enrolled] + rng.integers(60, 1_800, i.size), _E["autopay_on"])
        self.autopay[i] = True
        # A due date that matches payday, or a reminder, makes late payments rarer.
        self.tau[r[done(bh.DUE_DATE)]] *= 0.4
        for ch, option in enumerate(bh.REMINDERS):
            new = done(option) & ~self.reminders[r, ch]
            self.tau[r[new]] *= 0.75
            self.reminders[r[new], ch] = True
        plan_shown = np.isin(slates, bh.PLAN_OPTIONS)
        offered = (engaged & plan_shown).any(axis=1)
        log.add(r[offered], t[offered] + rng.integers(10, 50, offered.sum()), _E["plan_offered"])
        accepted = (completed & plan_shown).any(axis=1)
        self.plan_left[r[accepted]] = _PLAN_CYCLES + 1
        self.stress[r[done(bh.HARDSHIP)]] -= 1.0
        # A plan accepted while current re-ages nothing; a delinquent one is booked as the cure.
        noop = accepted & ~late
        log.add(
            r[noop],
            t[noop] + rng.integers(60, 120, noop.sum()),
            _E["plan_accepted"],
            amount=np.zeros(noop.sum()),
        )

    def _natural_cure(
        self, cure: _CureState, i: np.ndarray, hazard: np.ndarray, until: np.ndarray
    ) -> None:
        """Self-cure of borrowers ``i`` in their open interval up to ``until``."""
        i = i[cure.ts[i] == _NONE]
        lo = np.maximum(cure.free_from[i], cure.hold[i])
        span = np.maximum(until[i] - lo, 0)
        hit = self.rng.random(i.size) < 1.0 - np.exp(-hazard[i] * span / DAY)
        # strictly inside the interval: never at the same second as the due date
        ts = lo + 60 + (self.rng.random(i.size) * np.maximum(span - 120, 0)).astype(np.int64)
        cure.ts[i[hit]] = ts[hit]

    def _close_cycle(
        self,
        log: EventLog,
        act: np.ndarray,
        unresolved: np.ndarray,
        arrears_before: np.ndarray,
        dues: np.ndarray,
        due: np.ndarray,
        cycle_end: np.ndarray,
    ) -> None:
        """Unpaid installments, broken plans, charge-offs and payoffs at the cycle's end."""
        rng, pop, n = self.rng, self.pop, self.plan.size
        inst = pop.installment_cents
        i = np.flatnonzero(unresolved)
        u = rng.random(i.size)
        first = arrears_before[i] == 0
        late_one = ~first & (u < 0.3)  # pays this month's installment, not the arrears
        partial = np.where(first, u < 0.35, (u >= 0.3) & (u < 0.5))
        missed = ~late_one & ~partial
        ts = due[i] + rng.integers(20 * DAY, _CYCLE_END, i.size)
        owed = dues[i] * inst[i] - self.paid[i]
        part = np.minimum((rng.uniform(0.2, 0.8, i.size) * inst[i]).astype(np.int64), owed - 1)
        amount = np.where(late_one, inst[i], np.where(partial, part, 0))
        log.add(i[late_one], ts[late_one], _E["payment_late"], amount=amount[late_one] / 100.0)
        log.add(i[partial], ts[partial], _E["payment_partial"], amount=amount[partial] / 100.0)
        log.add(i[missed], cycle_end[i[missed]], _E["payment_missed"])
        self.paid[i] += amount

        broken = np.zeros(n, dtype=bool)
        broken[i[missed | partial]] = True
        broken &= self.plan_left > 0
        log.add(np.flatnonzero(broken), cycle_end[broken] + 1, _E["plan_broken"])
        self.plan_left = np.where(broken, 0, np.maximum(self.plan_left - 1, 0))

        arrears = dues - self.paid // inst
        covered_total = pop.age_months + self.paid // inst
        charged_off = act & (arrears >= _CHARGE_OFF_ARREARS)
        i = np.flatnonzero(charged_off)
        log.add(i, cycle_end[i] + 2, _E["charge_off"], amount=pop.balance(i, covered_total[i]))
        paid_up = act & ~charged_off & (self.paid >= pop.remaining * inst)
        early = act & ~charged_off & ~paid_up & (arrears == 0) & (self.stress < 0)
        early &= rng.random(n) < 0.003
        i = np.flatnonzero(paid_up | early)
        log.add(i, cycle_end[i] + 2, _E["payoff"], amount=pop.balance(i, covered_total[i]))
        self.active &= ~(charged_off | paid_up | early)


class _CureState:
    """Per-borrower bookkeeping of one cycle's cure (mutable; internal to a cycle)."""

    def __init__(self, due: np.ndarray) -> None:
        n = due.shape[0]
        self.ts = np.full(n, _NONE, dtype=np.int64)  # when the loan becomes current
        self.plan = np.zeros(n, dtype=bool)  # the cure is a plan (else a payment)
        self.hold = np.full(n, np.iinfo(np.int64).min // 2)  # no cure before this
        self.free_from = due.copy()  # self-cure already decided up to here
