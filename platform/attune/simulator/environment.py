"""The simulator as an environment: served slates in, servicing events out.

A served decision shows a borrower a slate at some decision time. The environment makes
the borrower answer it the way the simulator's hidden behaviour model would at one of the
history's presentations (the request the decision answered: a held-out presentation sent
to ``/v1/rank``), and returns the resulting servicing events as
:class:`attune.online.events.ServicingEvent`-shaped dicts, ready to ``POST /v1/events``.

The answer, per shown position ``k`` (option ``o``), with the presentation's ground truth
(``ground_truth/values``: ``p_engage``, ``p_complete``, ``value``) and the position bias
``b``:

* examined with probability ``b_k``; engaged with ``p_engage``, completed with
  ``p_complete`` (given examined), as in the simulator;
* the loan: a borrower current at the presentation (money rule over the history's events
  before it) stays current; a delinquent one is cured by a completed option with
  probability ``value / p_complete`` (the simulator's P(current 14 d later | completed)),
  drawn independently per completed option. Without a completion nothing is booked (the
  self-cure of an unhelped borrower earns no reward under any reward definition, since
  rewards need an accepted option).

Events, all strictly after the decision time ``t`` (the simulator's own timings):

=========================  ====================================================
``installment_due`` /      at ``t + 1 s``: the borrower's arrears are set to those of
``payment_partial``        the presentation (the environment keeps each borrower's
                           ledger, starting from the history's final balance), so the
                           money rule of ``attune outcomes`` sees the presentation's state
``plan_offered``           engaged payment plan / hardship deferral, ``t + 10..50 s``
``autopay_on``             completed autopay enrollment, ``t + 60..1800 s``
``due_date_changed``       completed due-date change, ``t + 120 s``
``reminder_on``            completed reminder, on its channel, ``t + 180 s``
``plan_accepted``          completed plan: current borrower ``t + 60..120 s`` (amount 0);
                           delinquent: one second before its cure (amount = arrears)
``payment_late``           the cure of a delinquent borrower, ``t + 60..3600 s``
=========================  ====================================================

Deterministic: the draws of one slate come from ``SeedSequence(seed, spawn_key=(pid,
decision µs))``, so they do not depend on how slates are batched. Ledger updates do
depend on the order slates of one borrower are answered in (time order within a call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attune import storage
from attune.data.reader import list_history, read_file
from attune.data.schema import CHANNELS, OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.errors import InvalidInput
from attune.simulator._behaviour import POSITION_BIAS
from attune.simulator.ground_truth import GROUND_TRUTH_DIR, VALUES_DIR

_N = len(OPTION_IDS)
_O = {o: i for i, o in enumerate(OPTION_IDS)}
_PLANS = frozenset({_O["payment_plan"], _O["hardship_deferral"]})
_PAY_NOW = _O["pay_now"]
_AUTOPAY = _O["autopay_enroll"]
_DUE_DATE = _O["due_date_change"]
_REMINDER_CHANNEL = {_O[f"reminder_{c}"]: c for c in CHANNELS}
_PAID = ("payment_on_time", "payment_late", "payment_partial")


@dataclass(frozen=True)
class ServedSlate:
    """One served decision: who saw which options, in order, when and where.

    ``presentation_id`` names the history presentation whose state the borrower is in
    (the request the decision answered); None takes the borrower's latest presentation.
    """

    borrower_id: int
    ts: datetime
    touchpoint: str
    options: tuple[str, ...]
    presentation_id: int | None = None


@dataclass(frozen=True)
class PresentationStates:
    """Per presentation (sorted by id): who, when, and the hidden response model."""

    presentation_id: np.ndarray  # (n,) int64, sorted
    borrower_id: np.ndarray  # (n,) int64
    loan_id: np.ndarray  # (n,) int64
    ts_us: np.ndarray  # (n,) int64
    touchpoint: np.ndarray  # (n,) index into TOUCHPOINTS
    p_engage: np.ndarray  # (n, n_options)
    p_complete: np.ndarray  # (n, n_options)
    value: np.ndarray  # (n, n_options): P(completed and current 14 d later | examined)
    owed_cents: np.ndarray  # (n,) arrears at the presentation (money rule), >= 0

    @property
    def cure(self) -> np.ndarray:
        """P(current 14 d later | completed) of a delinquent borrower, per option."""
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(self.p_complete > 0, self.value / self.p_complete, 1.0)
        return np.clip(q, 0.0, 1.0)

    def rows(self, presentation_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row indices of ``presentation_ids``; :class:`InvalidInput` names an unknown one."""
        ids = np.asarray(presentation_ids, dtype=np.int64)
        known = self.presentation_id
        pos = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
        found = known[pos] == ids if known.size else np.zeros(ids.shape, dtype=bool)
        if not found.all():
            bad = int(ids[~found][0])
            raise InvalidInput(
                f"presentation {bad} is not in the environment", field="presentation_id", value=bad
            )
        return pos


def _us(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise InvalidInput(f"decision time {ts} has no time zone", field="ts", value=str(ts))
    return int((ts - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))).isoformat()


def slate_indices(options: Sequence[str]) -> np.ndarray:
    """Catalog indices of ``options``; :class:`InvalidInput` names an unknown or repeated one."""
    out = []
    for option in options:
        if option not in _O:
            raise InvalidInput(
                f"option {option!r} is not in the catalog ({', '.join(OPTION_IDS)})",
                field="options",
                value=option,
            )
        out.append(_O[option])
    if len(set(out)) != len(out) or not 1 <= len(out) <= SLATE_SIZE:
        raise InvalidInput(
            f"a slate shows 1..{SLATE_SIZE} distinct options, got {list(options)}",
            field="options",
            value=list(options),
        )
    return np.asarray(out, dtype=np.int64)


class SimulatorEnvironment:
    """Answers served slates with the simulator's ground truth (see the module docstring).

    Build it with :meth:`from_history`; ``ledger_cents`` is each borrower's arrears as the
    events known to ``attune outcomes`` tell them (default: the history's final balance;
    pass ``{}`` when ``attune outcomes`` reads only the posted events).
    """

    def __init__(
        self,
        states: PresentationStates,
        *,
        seed: int,
        ledger_cents: dict[int, int] | None = None,
        position_bias: Sequence[float] = POSITION_BIAS,
    ) -> None:
        self.states = states
        self.seed = seed
        self.position_bias = np.asarray(position_bias, dtype=np.float64)
        self.ledger: dict[int, int] = dict(ledger_cents or {})
        order = np.lexsort((states.ts_us, states.borrower_id))
        last = np.r_[states.borrower_id[order][1:] != states.borrower_id[order][:-1], True]
        self._latest = dict(
            zip(
                states.borrower_id[order][last].tolist(),
                order[last].tolist(),
                strict=True,
            )
        )

    # ----------------------------------------------------------------- building

    @classmethod
    def from_history(
        cls,
        history: str,
        *,
        seed: int,
        presentation_ids: Sequence[int] | np.ndarray | None = None,
        history_ledger: bool = True,
    ) -> SimulatorEnvironment:
        """The environment of a simulated history (``presentation_ids``: only those)."""
        states, final = load_states(history, presentation_ids=presentation_ids)
        return cls(states, seed=seed, ledger_cents=final if history_ledger else {})

    # ----------------------------------------------------------------- answering

    def row_of(self, slate: ServedSlate) -> int:
        """The presentation row a slate is answered from; checks borrower and touchpoint."""
        if slate.presentation_id is None:
            if slate.borrower_id not in self._latest:
                raise InvalidInput(
                    f"borrower {slate.borrower_id} has no presentation in the environment",
                    field="borrower_id",
                    value=slate.borrower_id,
                )
            row = self._latest[slate.borrower_id]
        else:
            row = int(self.states.rows([slate.presentation_id])[0])
        s = self.states
        if int(s.borrower_id[row]) != slate.borrower_id:
            raise InvalidInput(
                f"presentation {int(s.presentation_id[row])} belongs to borrower "
                f"{int(s.borrower_id[row])}, not {slate.borrower_id}",
                field="borrower_id",
                value=slate.borrower_id,
            )
        touch = TOUCHPOINTS[int(s.touchpoint[row])]
        if slate.touchpoint != touch:
            raise InvalidInput(
                f"presentation {int(s.presentation_id[row])} was on touchpoint {touch!r}, "
                f"not {slate.touchpoint!r}",
                field="touchpoint",
                value=slate.touchpoint,
            )
        return row

    def answer(self, slates: Sequence[ServedSlate]) -> list[dict[str, Any]]:
        """The events the borrowers' responses produce, in time order (see module docstring)."""
        rows = [self.row_of(s) for s in slates]  # validate everything before any draw
        order = sorted(range(len(slates)), key=lambda i: (_us(slates[i].ts), i))
        out: list[dict[str, Any]] = []
        for i in order:
            out.extend(self._answer_one(slates[i], rows[i]))
        return sorted(out, key=lambda e: (e["ts"], e["event_id"]))

    def _rng(self, row: int, t_us: int) -> np.random.Generator:
        pid = int(self.states.presentation_id[row])
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(pid, t_us)))

    def _answer_one(self, slate: ServedSlate, row: int) -> list[dict[str, Any]]:
        s = self.states
        t = _us(slate.ts)
        shown = slate_indices(slate.options)
        rng = self._rng(row, t)
        k = shown.size
        bias = self.position_bias[:k]
        u = rng.random((4, k))
        examined = u[0] < bias
        p_engage, p_complete = s.p_engage[row, shown], s.p_complete[row, shown]
        engaged = examined & (u[1] < p_engage)
        completed = engaged & (u[2] * p_engage < p_complete)
        cures = completed & (u[3] < s.cure[row, shown])
        owed = int(s.owed_cents[row])
        delinquent = owed > 0
        current = (not delinquent) or bool(cures.any())
        delays = rng.integers([10, 60, 60, 60], [50, 1_800, 120, 3_600])
        known = self.ledger.get(slate.borrower_id, 0)
        events = response_events(
            borrower_id=slate.borrower_id,
            loan_id=int(s.loan_id[row]),
            tag=f"env-{int(s.presentation_id[row])}-{t}",
            t_us=t,
            shown=shown,
            engaged=engaged,
            completed=completed,
            owed_cents=owed,
            known_cents=known,
            cured=delinquent and current,
            delays_s=delays,
        )
        self.ledger[slate.borrower_id] = 0 if delinquent and current else owed
        return events


#: Fixed delays (seconds) for :func:`response_events` where only the order matters.
TYPICAL_DELAYS_S = np.array([30, 900, 90, 1_800])


def response_events(
    *,
    borrower_id: int,
    loan_id: int,
    tag: str,
    t_us: int,
    shown: np.ndarray,
    engaged: np.ndarray,
    completed: np.ndarray,
    owed_cents: int,
    known_cents: int,
    cured: bool,
    delays_s: np.ndarray = TYPICAL_DELAYS_S,
) -> list[dict[str, Any]]:
    """The events of one answered slate (the table in the module docstring).

    ``delays_s`` are the drawn delays of ``plan_offered``, ``autopay_on``, a current
    borrower's ``plan_accepted`` and the cure, in seconds after ``t_us``.
    """
    sec = 1_000_000
    events: list[dict[str, Any]] = []

    def add(at_us: int, kind: str, amount: float | None = None, channel: str | None = None) -> None:
        events.append(
            {
                "event_id": f"{tag}-{len(events)}",
                "borrower_id": borrower_id,
                "loan_id": loan_id,
                "ts": _iso(at_us),
                "event_type": kind,
                "amount": amount,
                "channel": channel,
            }
        )

    # the ledger `attune outcomes` reads must show the presentation's arrears
    if owed_cents > known_cents:
        add(t_us + sec, "installment_due", (owed_cents - known_cents) / 100)
    elif owed_cents < known_cents:
        add(t_us + sec, "payment_partial", (known_cents - owed_cents) / 100)
    cure_at = t_us + int(delays_s[3]) * sec
    for option, was_engaged, done in zip(
        shown.tolist(), np.asarray(engaged).tolist(), np.asarray(completed).tolist(), strict=True
    ):
        if option in _PLANS and was_engaged:
            add(t_us + int(delays_s[0]) * sec, "plan_offered")
        if not done:
            continue
        if option == _AUTOPAY:
            add(t_us + int(delays_s[1]) * sec, "autopay_on")
        elif option == _DUE_DATE:
            add(t_us + 120 * sec, "due_date_changed")
        elif option in _REMINDER_CHANNEL:
            add(t_us + 180 * sec, "reminder_on", channel=_REMINDER_CHANNEL[option])
        elif option in _PLANS:
            if owed_cents > 0:
                add(cure_at - sec, "plan_accepted", owed_cents / 100)
            else:
                add(t_us + int(delays_s[2]) * sec, "plan_accepted", 0.0)
    if cured:
        add(cure_at, "payment_late", owed_cents / 100)
    return events


# --------------------------------------------------------------------------- loading


def load_states(
    history: str, *, presentation_ids: Sequence[int] | np.ndarray | None = None
) -> tuple[PresentationStates, dict[int, int]]:
    """``(states, final arrears per borrower in cents)`` of a simulated history.

    Reads the presentations, the ground truth's per-option probabilities and the money
    events of the borrowers involved (all local or ``s3://``).
    """
    import pyarrow.dataset as pads

    wanted = None
    if presentation_ids is not None:
        wanted = pa.array(np.unique(np.asarray(presentation_ids, dtype=np.int64)))
    files = list_history(history, tables=("presentations", "events"))
    pres = pa.concat_tables(
        [
            read_file(
                u,
                "presentations",
                columns=["presentation_id", "borrower_id", "loan_id", "ts", "touchpoint"],
            )
            for u in files.files["presentations"]
        ]
    )
    if wanted is not None:
        pres = pres.filter(pc.is_in(pres.column("presentation_id"), value_set=wanted))
    pres = pres.group_by("presentation_id").aggregate(
        [("borrower_id", "min"), ("loan_id", "min"), ("ts", "min"), ("touchpoint", "min")]
    )
    pres = pres.sort_by("presentation_id")
    pid = pres.column("presentation_id").to_numpy()
    if wanted is not None and pid.size != len(wanted):
        missing = sorted(set(wanted.to_pylist()) - set(pid.tolist()))[0]
        raise InvalidInput(
            f"presentation {missing} is not in {history}", field="presentation_ids", value=missing
        )
    borrowers = pres.column("borrower_id_min").to_numpy()
    ts_us = pres.column("ts_min").cast(pa.int64()).to_numpy()

    values_uri = storage.join(history, GROUND_TRUTH_DIR, VALUES_DIR)
    fs, path = storage.pyarrow_filesystem(values_uri)
    gt = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["presentation_id", "option_id", "value", "p_engage", "p_complete"],
        filter=pc.field("presentation_id").isin(pa.array(pid)),
    )
    row = np.searchsorted(pid, gt.column("presentation_id").to_numpy())
    col = pc.index_in(gt.column("option_id"), value_set=pa.array(OPTION_IDS)).to_numpy(
        zero_copy_only=False
    )
    mats = {}
    for name in ("value", "p_engage", "p_complete"):
        m = np.full((pid.size, _N), np.nan)
        m[row, col.astype(np.int64)] = gt.column(name).to_numpy()
        mats[name] = m
    if np.isnan(mats["value"]).any():
        bad = int(pid[np.isnan(mats["value"]).any(axis=1)][0])
        raise InvalidInput(
            f"presentation {bad} has no complete ground truth", field="presentation_ids", value=bad
        )

    owed, final = _arrears(files.files["events"], borrowers, ts_us)
    touch = pc.index_in(pres.column("touchpoint_min"), value_set=pa.array(TOUCHPOINTS)).to_numpy(
        zero_copy_only=False
    )
    states = PresentationStates(
        presentation_id=pid.astype(np.int64),
        borrower_id=borrowers.astype(np.int64),
        loan_id=pres.column("loan_id_min").to_numpy().astype(np.int64),
        ts_us=ts_us.astype(np.int64),
        touchpoint=touch.astype(np.int64),
        p_engage=mats["p_engage"],
        p_complete=mats["p_complete"],
        value=mats["value"],
        owed_cents=owed,
    )
    return states, final


def _arrears(
    event_files: Sequence[str], borrowers: np.ndarray, ts_us: np.ndarray
) -> tuple[np.ndarray, dict[int, int]]:
    """Arrears at each presentation, and each borrower's final arrears, in cents."""
    ids = pa.array(np.unique(borrowers))
    parts = []
    for uri in event_files:
        table = read_file(uri, "events", columns=["borrower_id", "ts", "event_type", "amount"])
        keep = pc.and_(
            pc.is_in(table.column("borrower_id"), value_set=ids),
            pc.is_in(table.column("event_type"), value_set=pa.array(["installment_due", *_PAID])),
        )
        parts.append(table.filter(keep))
    money = pa.concat_tables(parts)
    b = money.column("borrower_id").to_numpy()
    t = money.column("ts").cast(pa.int64()).to_numpy()
    kind = money.column("event_type").to_numpy(zero_copy_only=False)
    cents = np.round(np.nan_to_num(money.column("amount").to_numpy(zero_copy_only=False)) * 100)
    delta = np.where(kind == "installment_due", cents, -cents).astype(np.int64)
    order = np.lexsort((t, b))
    b, t, delta = b[order], t[order], delta[order]
    running = np.cumsum(delta)
    owed = np.zeros(borrowers.size, dtype=np.int64)
    for i, (who, when) in enumerate(zip(borrowers.tolist(), ts_us.tolist(), strict=True)):
        lo, hi = np.searchsorted(b, who, "left"), np.searchsorted(b, who, "right")
        # strictly before the presentation
        upto = lo + int(np.searchsorted(t[lo:hi], when, "left"))
        base = running[lo - 1] if lo > 0 else 0
        owed[i] = max(int((running[upto - 1] if upto > lo else base) - base), 0)
    final: dict[int, int] = {}
    for who in np.unique(borrowers).tolist():
        lo, hi = np.searchsorted(b, who, "left"), np.searchsorted(b, who, "right")
        base = running[lo - 1] if lo > 0 else 0
        final[int(who)] = max(int((running[hi - 1] if hi > lo else base) - base), 0)
    return owed, final
