"""The simulator's hidden behaviour model: how a borrower in a given state responds.

Never read by training. Everything here is a pure function of numpy arrays, one row
per borrower (or per presentation), so the simulator stays vectorized.

Two parts:

* **Payments** (:func:`on_time_probability`, :func:`cure_hazard`): whether an
  installment is paid by its due date, and the per-day hazard that a delinquent
  borrower becomes current on their own (self-cure).
* **Responses to a shown option** (:func:`option_probabilities`): for every option of
  the catalog, P(engaged | examined), P(completed | examined) and
  P(current 14 days later | completed). The ground-truth value of an option is
  ``P(completed | examined) * P(current 14 d | completed)``.

Heterogeneity is deliberate and every driver is something the borrower's event history
reveals (days past due, autopay state, payment lateness, open rates per channel,
recent logins, contacts, hardship flags, income volatility):

===================  ==========================================================
option               helps
===================  ==========================================================
autopay_enroll       on-time payers without autopay and with a stable income
due_date_change      borrowers who pay late but do pay
payment_plan         borrowers 30+ days past due
hardship_deferral    hardship-flagged borrowers with a volatile income
reminder_<channel>   mildly late borrowers, in proportion to their affinity for
                     the channel (visible as its open rate)
pay_now              1-29 days past due borrowers who logged in recently
===================  ==========================================================

Contact fatigue (outreach in the last 7 and 30 days) lowers every option; an option
acting on the touchpoint's own channel gets a small lift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attune.data.schema import CHANNELS, OPTION_CATALOG, OPTION_IDS, TOUCHPOINTS

#: P(a shown option is examined) by position 1..3.
POSITION_BIAS: tuple[float, float, float] = (1.0, 0.65, 0.45)
#: Days after a presentation at which "current" is judged.
CURE_WINDOW_DAYS = 14.0

_O = {name: i for i, name in enumerate(OPTION_IDS)}
AUTOPAY, DUE_DATE, PLAN, HARDSHIP, PAY_NOW = (
    _O["autopay_enroll"],
    _O["due_date_change"],
    _O["payment_plan"],
    _O["hardship_deferral"],
    _O["pay_now"],
)
#: Option index of the reminder for each channel, in :data:`CHANNELS` order.
REMINDERS: tuple[int, ...] = tuple(_O[f"reminder_{c}"] for c in CHANNELS)
#: Options whose completion re-ages the loan (a plan): they always cure.
PLAN_OPTIONS: tuple[int, ...] = (PLAN, HARDSHIP)

#: option x touchpoint: 1 where the option acts on the touchpoint's own channel.
_TOUCH_MATCH = np.array(
    [[float(o.channel == t) for t in TOUCHPOINTS] for o in OPTION_CATALOG], dtype=np.float64
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- payments


def on_time_probability(
    *,
    autopay: np.ndarray,
    late_tendency: np.ndarray,
    stress: np.ndarray,
    arrears: np.ndarray,
) -> np.ndarray:
    """P(the installment is paid by its due date).

    Autopay pays unless funds run short (high stress); otherwise late payers and
    stressed borrowers pay on time less often, and borrowers already in arrears even
    less.
    """
    short_of_funds = sigmoid(2.5 * (stress - 1.6))
    with_autopay = 0.985 * (1.0 - short_of_funds)
    manual = (1.0 - late_tendency) * (1.0 - sigmoid(3.0 * (stress - 1.5))) * 0.98
    p = np.where(autopay, with_autopay, manual)
    return np.where(arrears > 0, 0.5 * p, p)


def cure_hazard(
    *, late_tendency: np.ndarray, stress: np.ndarray, arrears: np.ndarray
) -> np.ndarray:
    """Per-day hazard that a delinquent borrower pays everything owed on their own.

    Late-but-paying borrowers with one installment outstanding self-cure within days;
    borrowers with two or more installments outstanding rarely do.
    """
    one_behind = 0.004 + 0.09 * late_tendency * np.exp(-np.clip(stress, 0.0, None))
    return np.where(arrears <= 1, one_behind, 0.003)


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class PresentationState:
    """What the behaviour model knows about a borrower at a presentation (one row each)."""

    dpd: np.ndarray  # days past due (0 when current)
    autopay: np.ndarray  # bool
    late_tendency: np.ndarray  # latent, 0..1: share of installments paid late
    income_volatility: np.ndarray
    hardship: np.ndarray  # bool: a hardship flag in the last 180 days
    affinity: np.ndarray  # (n, 3): P(open | delivered) per channel, CHANNELS order
    logins_30d: np.ndarray
    contacts_7d: np.ndarray
    contacts_30d: np.ndarray
    touchpoint: np.ndarray  # index into TOUCHPOINTS
    cure_certain: np.ndarray  # bool: current now, or a cure already due within the window
    cure_hazard: np.ndarray  # per-day self-cure hazard (used only when delinquent)


@dataclass(frozen=True)
class OptionProbabilities:
    """Per presentation x option (catalog order) probabilities of the hidden model."""

    engage: np.ndarray  # P(engaged | examined)
    complete: np.ndarray  # P(completed | examined) <= engage
    cure_if_completed: np.ndarray  # P(the completion itself brings the loan current)
    current_if_completed: np.ndarray  # P(current 14 d later | completed), self-cure included
    self_cure: np.ndarray  # (n,) P(current 14 d later) without any completion

    @property
    def value(self) -> np.ndarray:
        """The ground-truth value: P(completed and current 14 d later | examined)."""
        return self.complete * self.current_if_completed


def self_cure_probability(state: PresentationState) -> np.ndarray:
    """P(current at the end of the window) with no help from the slate."""
    p = 1.0 - np.exp(-CURE_WINDOW_DAYS * state.cure_hazard)
    return np.where(state.cure_certain, 1.0, p)


def option_probabilities(state: PresentationState) -> OptionProbabilities:
    """The hidden response model for every option of the catalog at each presentation."""
    n = state.dpd.shape[0]
    current = state.dpd <= 0
    early = (state.dpd > 0) & (state.dpd < 30)
    late = state.dpd >= 30
    tau = state.late_tendency
    stable = sigmoid((0.22 - state.income_volatility) / 0.04)
    volatile_hardship = state.hardship * sigmoid((state.income_volatility - 0.28) / 0.04)
    recent_login = 1.0 - np.exp(-0.7 * state.logins_30d)
    fatigue = np.exp(-0.12 * state.contacts_7d - 0.025 * state.contacts_30d)

    c = np.zeros((n, len(OPTION_IDS)))
    no_autopay = ~state.autopay
    c[:, AUTOPAY] = no_autopay * np.select(
        [current, early], [0.03 + 0.5 * stable * (1.0 - tau) ** 2, 0.08 * stable], 0.02
    )
    c[:, DUE_DATE] = np.select([current, early], [0.02 + 0.35 * tau, 0.02 + 0.45 * tau], 0.03)
    c[:, PLAN] = np.select([current, early], [0.005, 0.05], 0.45)
    c[:, HARDSHIP] = np.select(
        [current, early],
        [0.01 + 0.25 * volatile_hardship, 0.02 + 0.45 * volatile_hardship],
        0.03 + 0.5 * volatile_hardship,
    )
    mildly_late = np.where(late, 0.15, 1.0) * tau
    for ch, opt in enumerate(REMINDERS):
        c[:, opt] = 0.01 + 0.6 * state.affinity[:, ch] * mildly_late
    c[:, PAY_NOW] = np.select(
        [current, early], [0.0, 0.08 + 0.55 * recent_login], 0.03 + 0.08 * recent_login
    )

    lift = 1.0 + 0.25 * _TOUCH_MATCH[:, state.touchpoint].T
    complete = np.clip(c * fatigue[:, None] * lift, 0.0, 0.95)
    # Curiosity: some borrowers open an option they will not complete.
    engage = complete + (1.0 - complete) * (0.12 * fatigue)[:, None]

    # P(current 14 d later | completed): plans and payments cure outright; the others
    # make a payment likely rather than certain.
    q = np.ones((n, len(OPTION_IDS)))
    q[:, AUTOPAY] = np.where(late, 0.2, 0.6)
    q[:, DUE_DATE] = np.where(late, 0.3, 0.85)
    for opt in REMINDERS:
        q[:, opt] = np.where(late, 0.15, 0.7)
    sc = self_cure_probability(state)
    current_if_completed = np.where(
        state.cure_certain[:, None], 1.0, 1.0 - (1.0 - q) * (1.0 - sc)[:, None]
    )
    return OptionProbabilities(
        engage=engage,
        complete=complete,
        cure_if_completed=q,
        current_if_completed=current_if_completed,
        self_cure=sc,
    )
