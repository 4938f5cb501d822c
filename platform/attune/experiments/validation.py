"""Argument checks shared by the experiments modules.

Every check raises :class:`ArgumentError` (an :class:`attune.errors.InvalidInput`, so
HTTP 422 and CLI exit status 4) naming the argument, the offending value (or a short
summary of it for arrays) and the problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attune.errors import ArgumentError


def as_array(value: Any, *, argument: str, ndim: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """``value`` as a numpy array of ``dtype`` with one of the allowed ``ndim``; finite if float."""
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(
            argument=argument, value=type(value).__name__, problem=f"not convertible to {dtype}"
        ) from exc
    if array.ndim not in allowed:
        raise ArgumentError(
            argument=argument,
            value=array.shape,
            problem=f"expected {' or '.join(f'{d}-D' for d in allowed)} array",
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array.ravel()))[0])
        raise ArgumentError(
            argument=argument, value=float(array.ravel()[bad]), problem=f"non-finite at {bad}"
        )
    return array


def as_index_array(value: Any, *, argument: str, upper: int) -> np.ndarray:
    """A 1-D integer array with every entry in ``[0, upper)``."""
    raw = np.asarray(value)
    if raw.ndim != 1:
        raise ArgumentError(argument=argument, value=raw.shape, problem="expected 1-D array")
    integral = np.issubdtype(raw.dtype, np.integer) or raw.size == 0
    if not integral and not np.all(np.equal(np.mod(raw, 1), 0)):
        raise ArgumentError(argument=argument, value=str(raw.dtype), problem="not integers")
    array = raw.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= upper))
    if bad.size:
        raise ArgumentError(
            argument=argument,
            value=int(array[bad[0]]),
            problem=f"index outside [0, {upper}) at row {int(bad[0])}",
        )
    return array


def check_length(array: np.ndarray, *, argument: str, n: int, against: str) -> None:
    """Raise unless ``array`` has ``n`` rows (the length of ``against``)."""
    if array.shape[0] != n:
        raise ArgumentError(
            argument=argument,
            value=array.shape,
            problem=f"has {array.shape[0]} rows but {against} has {n}",
        )


def check_probabilities(
    array: np.ndarray, *, argument: str, low_open: bool, tol: float = 1e-9
) -> None:
    """Raise unless every entry is in (0, 1] (``low_open``) or [0, 1]."""
    low_bad = array <= 0 if low_open else array < -tol
    bad = np.flatnonzero((low_bad | (array > 1 + tol)).ravel())
    if bad.size:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ArgumentError(
            argument=argument,
            value=float(array.ravel()[bad[0]]),
            problem=f"probability outside {interval} at flat index {int(bad[0])}",
        )
