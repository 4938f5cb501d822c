"""One shard of the simulator: its borrowers, month by month, vectorized with numpy.

Each month ``m`` is one billing cycle per borrower, anchored on the due date ``D``
(day ``due_day`` of month ``m``)::

    D-14d ........ D-6h .. D ...... D+1d ............. D+13d18h ... D+20d .. D+27d18h = E
    logins, outreach, hardship flags, autopay-off
                   on-time payments  installment_due
                                       slates (attune.simulator._servicing), collection outreach
                                                                 partial / late / missed
                                                                 payments, charge-off,
                                                                 payoff (by E)

The next due date is at least ``D+28d`` away, so next month's on-time payments
(``>= D_next - 6h``) never fall inside this cycle's outcome windows.

Money follows one rule that readers can recompute from events alone: days past due
are measured from the oldest ``installment_due`` not covered by the cumulative amount
of ``payment_on_time``/``payment_late``/``payment_partial`` events (equal installments,
in cents). A cure is one ``payment_late`` for everything owed. A plan re-ages the
arrears; the event vocabulary has no adjustment type, so the re-aging credit is booked
as that ``payment_late`` one second after the ``plan_accepted`` (whose amount is the
arrears re-aged).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from attune.data.schema import CHANNELS
from attune.simulator import _behaviour as bh
from attune.simulator._events import EVENT_CODE, MonthEvents, concat_rows, presentation_tables
from attune.simulator._population import DAY, HOUR, Population, draw_population
from attune.simulator._servicing import NO_CURE, ServicingWindow

#: The cycle ends this long after the due date.
_CYCLE_END = 27 * DAY + 18 * HOUR
_E = EVENT_CODE
#: Outreach per cycle: (base rate, P(delivered)) by channel; push needs the app.
_OUTREACH = {"sms": (0.7, 0.97), "email": (1.0, 0.93), "push": (0.8, 0.9)}
_COLLECTION_CHANNELS = ("sms", "email")
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


@dataclass(frozen=True, kw_only=True)
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
        self.hardship_ts = np.full(n, -NO_CURE // 2, dtype=np.int64)  # never
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

    def count(
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
        log = MonthEvents()
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

        p_off = 0.008 + 0.25 * bh.sigmoid(2.5 * (self.stress - 1.6))
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

        window_lo = np.maximum(due - 14 * DAY, history_start)
        logins, contacts = self._engagement(log, act, delinquent, due, window_lo)
        window = ServicingWindow(
            self, month=m, log=log, due=due, dues=dues, delinquent=delinquent, hazard=hazard
        )
        rows = window.run(act, logins, contacts)

        # What the servicing window left open resolves by the end of the cycle.
        cycle_end = due + _CYCLE_END
        cure = window.cure
        window.natural_cure(np.flatnonzero(delinquent), cycle_end)
        cured = cure.scheduled
        i = np.flatnonzero(cured)
        owed = dues * inst - self.paid
        # plan cures: the acceptance, then the re-aging credit (module docstring)
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
        return CycleOutput(
            month=m,
            events=events,
            presentations=presentations,
            values=values,
            value_matrix=matrix,
            slates=slates,
        )

    def _engagement(
        self,
        log: MonthEvents,
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
        return self.raw_keys(*logins), self.raw_keys(sent_idx, sent_ts)

    def raw_keys(self, idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return (idx.astype(np.int64) << 32) + (ts - self.t0)

    def _close_cycle(
        self,
        log: MonthEvents,
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
