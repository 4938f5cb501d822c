"""Simulated borrowers and loans: static attributes and latent traits of one shard."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from attune.data.schema import BORROWERS, CHANNELS, LOANS, PROTECTED

DAY = 86_400
HOUR = 3_600
_US_STATES = ("CA", "TX", "FL", "NY", "PA", "IL", "OH", "GA", "NC", "MI", "AZ", "WA")
_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_GENDERS = ("female", "male", "nonbinary")
_ETHNICITIES = ("asian", "black", "hispanic", "white", "other")
#: At the start of the history loans are at least this many months old and have at
#: least ``_MIN_REMAINING_MONTHS`` installments to go.
_MIN_AGE_MONTHS = 1
_MIN_REMAINING_MONTHS = 12


@dataclass(frozen=True)
class Population:
    """One shard's borrowers (index i is borrower ``ids[i]``): static and latent traits."""

    ids: np.ndarray
    loan_ids: np.ndarray
    due_day: np.ndarray  # 5..28: day of the month installments fall due
    income: np.ndarray
    volatility: np.ndarray
    late_tendency: np.ndarray  # latent 0..1
    affinity: np.ndarray  # latent (n, 3), CHANNELS order
    preferred_channel: np.ndarray  # the channel on file (index into CHANNELS)
    engagement: np.ndarray  # latent 0..1: how often the borrower uses the app
    autopay: np.ndarray  # at the start of the history
    stress: np.ndarray  # at the start of the history
    principal: np.ndarray
    apr: np.ndarray
    term: np.ndarray
    installment_cents: np.ndarray
    age_months: np.ndarray  # installments already paid at the start
    origination_ts: np.ndarray  # seconds since epoch
    signup_ts: np.ndarray
    state: np.ndarray  # index into _US_STATES
    age_band: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def remaining(self) -> np.ndarray:
        """Installments still to fall due from the start of the history."""
        return self.term - self.age_months

    def balance(self, idx: np.ndarray, paid_installments: np.ndarray) -> np.ndarray:
        """Amortized principal of borrowers ``idx`` after ``paid_installments`` in total."""
        r = self.apr[idx] / 12.0
        growth = (1.0 + r) ** paid_installments
        inst = self.installment_cents[idx] / 100.0
        owed = self.principal[idx] * growth - inst * (growth - 1.0) / r
        return np.round(np.maximum(owed, 0.0), 2)


def draw_population(
    rng: np.random.Generator, *, first_id: int, n: int, start_month: np.datetime64
) -> Population:
    """Draw ``n`` borrowers with ids ``first_id .. first_id + n - 1``."""
    ids = first_id + np.arange(n, dtype=np.int64)
    age_band = rng.choice(len(_AGE_BANDS), size=n, p=[0.1, 0.25, 0.23, 0.2, 0.14, 0.08])
    # Income rises with age band (so fairness reports by age have something to show).
    income = np.round(np.exp(rng.normal(8.15 + 0.06 * age_band, 0.4)), 2)
    volatility = 0.03 + 0.6 * rng.beta(1.6, 4.0, size=n)
    late_type = rng.random(n) < 0.28
    late_tendency = np.where(late_type, rng.uniform(0.3, 0.9, n), rng.uniform(0.0, 0.08, n))
    true_pref = rng.choice(len(CHANNELS), size=n, p=[0.4, 0.4, 0.2])
    affinity = rng.uniform(0.03, 0.2, size=(n, len(CHANNELS)))
    affinity[np.arange(n), true_pref] = rng.uniform(0.45, 0.85, n)
    # The channel on file is the one the borrower actually reads, most of the time.
    on_file = np.where(rng.random(n) < 0.75, true_pref, rng.integers(0, len(CHANNELS), n))
    engagement = rng.random(n)
    principal = np.round(rng.uniform(4_000, 40_000, n), -2)
    apr = np.round(rng.uniform(0.06, 0.30, n), 4)
    term = rng.choice(np.array([24, 36, 48, 60]), size=n)
    r = apr / 12.0
    installment = principal * r / (1.0 - (1.0 + r) ** -term)
    installment_cents = np.round(installment * 100).astype(np.int64)
    age_months = rng.integers(_MIN_AGE_MONTHS, term - _MIN_REMAINING_MONTHS + 1)
    due_day = rng.integers(5, 29, n)
    first_due_month = start_month - age_months.astype("timedelta64[M]")
    origination = (first_due_month - np.timedelta64(1, "M")).astype("datetime64[D]") + (
        due_day - 1
    ).astype("timedelta64[D]")
    origination_ts = origination.astype("datetime64[s]").astype(np.int64) + rng.integers(
        8 * 3600, 20 * 3600, n
    )
    signup_ts = origination_ts - rng.integers(0, 30 * DAY, n)
    stress = rng.normal(0.0, 0.5, n)
    autopay = rng.random(n) < 0.55 * (1.0 - late_tendency)
    return Population(
        ids=ids,
        loan_ids=1_000_000_000 + ids,
        due_day=due_day,
        income=income,
        volatility=np.round(volatility, 4),
        late_tendency=late_tendency,
        affinity=affinity,
        preferred_channel=on_file,
        engagement=engagement,
        autopay=autopay,
        stress=stress,
        principal=principal,
        apr=apr,
        term=term.astype(np.int32),
        installment_cents=installment_cents,
        age_months=age_months,
        origination_ts=origination_ts,
        signup_ts=signup_ts,
        state=rng.integers(0, len(_US_STATES), n),
        age_band=age_band,
        gender=rng.choice(len(_GENDERS), size=n, p=[0.49, 0.49, 0.02]),
        ethnicity=rng.choice(len(_ETHNICITIES), size=n, p=[0.07, 0.13, 0.19, 0.56, 0.05]),
    )


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def _labels(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names)).cast(
        pa.string()
    )


def static_tables(pop: Population) -> dict[str, pa.Table]:
    """The ``borrowers``, ``loans`` and ``protected`` tables of a population."""
    borrowers = pa.Table.from_arrays(
        [
            pa.array(pop.ids),
            _ts(pop.signup_ts),
            _labels(pop.state, _US_STATES),
            pa.array(pop.income),
            pa.array(pop.volatility),
            _labels(pop.preferred_channel, CHANNELS),
        ],
        schema=BORROWERS,
    )
    loans = pa.Table.from_arrays(
        [
            pa.array(pop.loan_ids),
            pa.array(pop.ids),
            _ts(pop.origination_ts),
            pa.array(pop.principal),
            pa.array(pop.apr),
            pa.array(pop.term, type=pa.int32()),
            pa.array(pop.installment_cents / 100.0),
        ],
        schema=LOANS,
    )
    protected = pa.Table.from_arrays(
        [
            pa.array(pop.ids),
            _labels(pop.age_band, _AGE_BANDS),
            _labels(pop.gender, _GENDERS),
            _labels(pop.ethnicity, _ETHNICITIES),
        ],
        schema=PROTECTED,
    )
    return {"borrowers": borrowers, "loans": loans, "protected": protected}
