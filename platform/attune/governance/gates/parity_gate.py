"""The ONNX parity gate every export passes: ONNX scores against native ones.

:func:`compare_scores` judges the two scorings of one split: it passes only when
``max |onnx - native| <= tolerance`` *and* the order of rows inside every ranking group
(qid) is identical on both sides. Orders are compared with a stable sort on
``(qid, -score)``, so exact ties keep their row order on both sides. The report is
written as ``parity.json``; :func:`parity_decision` is its :class:`GateDecision`, and
:func:`require_parity` raises :class:`~attune.errors.ParityError` on a failure (a model
that fails the gate is never registered). Producing the scores (ONNX Runtime and
native XGBoost) is the export's: :func:`attune.training.export.check_parity`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from attune.errors import ParityError
from attune.governance.gates.decision import GateDecision

GATE_NAME = "parity"


@dataclass(frozen=True)
class ParityReport:
    """What the parity gate measured on one split (written as ``parity.json``)."""

    max_abs_diff: float
    mean_abs_diff: float
    n_rows: int
    n_groups: int
    groups_in_order: int
    order_agreement: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_scores(
    native: np.ndarray, onnx: np.ndarray, qid: np.ndarray, *, tolerance: float
) -> ParityReport:
    """Judge ONNX scores against native ones, row-aligned, ``qid`` the ranking groups."""
    diff = np.abs(onnx.astype(np.float64) - native.astype(np.float64))
    finite = bool(np.all(np.isfinite(diff)))
    max_abs = float(diff.max()) if finite else float("inf")
    mean_abs = float(diff.mean()) if finite else float("inf")
    in_order, n_groups = _group_order_agreement(qid, native, onnx)
    return ParityReport(
        max_abs_diff=max_abs,
        mean_abs_diff=mean_abs,
        n_rows=int(native.shape[0]),
        n_groups=n_groups,
        groups_in_order=in_order,
        order_agreement=in_order / n_groups,
        tolerance=tolerance,
        passed=finite and max_abs <= tolerance and in_order == n_groups,
    )


def parity_decision(report: ParityReport) -> GateDecision:
    """The report as a :class:`GateDecision` (a refusal names the difference and order)."""
    reasons: tuple[str, ...] = ()
    if not report.passed:
        reasons = (
            f"max |onnx - native| = {report.max_abs_diff:.3g} (tolerance "
            f"{report.tolerance:g}), per-group order agreement {report.order_agreement:.1%}",
        )
    return GateDecision(
        gate=GATE_NAME, passed=report.passed, reasons=reasons, evidence=report.to_dict()
    )


def require_parity(report: ParityReport) -> None:
    """Raise :class:`~attune.errors.ParityError` unless the report passed."""
    if not parity_decision(report).passed:
        raise ParityError(
            max_abs_diff=report.max_abs_diff,
            order_agreement=report.order_agreement,
            tolerance=report.tolerance,
        )


def _group_order_agreement(
    qid: np.ndarray, native: np.ndarray, onnx: np.ndarray
) -> tuple[int, int]:
    """``(groups whose within-group order is identical, groups)``."""
    # lexsort is stable: sort by qid, then by descending score, ties in row order. The
    # qid blocks line up on both sides, so positions agree iff every group's order does.
    native_order = np.lexsort((-native, qid))
    onnx_order = np.lexsort((-onnx, qid))
    _, group_of_position = np.unique(qid[native_order], return_inverse=True)
    n_groups = int(group_of_position.max()) + 1
    mismatched = np.bincount(
        group_of_position, weights=(native_order != onnx_order), minlength=n_groups
    )
    return int(np.count_nonzero(mismatched == 0)), n_groups
