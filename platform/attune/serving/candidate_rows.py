"""Candidate rows for serving, built by the training feature code (attune.data.features).

Serving never re-implements a feature: borrower state (from the request or the online
store) goes through :func:`attune.data.features.candidate_matrix`, which places the
borrower features and the context and option one-hots (``position = 1``) exactly as
:func:`~attune.data.features.option_rows` and
:func:`~attune.data.features.feature_matrix` do for training (a test keeps them equal),
in numpy: one borrower's rows cost microseconds, not a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from attune.data import features
from attune.data.spec import BORROWER_FEATURES, FeatureSpec
from attune.errors import FeatureSpecMismatch

#: Slate position every candidate is scored at (the contract of the ranking dataset).
SERVING_POSITION = 1


def borrower_vector(borrower: Mapping[str, float]) -> np.ndarray:
    """Borrower features by name as a float32 vector in BORROWER_FEATURES order.

    Raises FeatureSpecMismatch naming the features ``borrower`` lacks.
    """
    missing = [n for n in BORROWER_FEATURES if n not in borrower]
    if missing:
        raise FeatureSpecMismatch(
            expected=missing, actual=sorted(borrower), problem="features missing from rows"
        )
    return np.array([borrower[n] for n in BORROWER_FEATURES], dtype=np.float32)


def candidate_matrix(
    spec: FeatureSpec,
    *,
    borrower: Mapping[str, float] | np.ndarray,
    touchpoint: str,
    option_ids: Sequence[str],
) -> np.ndarray:
    """``float32[len(option_ids), spec.n_features]``: one row per option, in spec order.

    ``borrower`` is a mapping by feature name or a vector in BORROWER_FEATURES order.
    Raises InvalidInput for an unknown option or touchpoint and FeatureSpecMismatch
    when ``borrower`` lacks a feature (both from attune.data.features).
    """
    values = borrower if isinstance(borrower, np.ndarray) else borrower_vector(borrower)
    return features.candidate_matrix(
        spec,
        borrower=values,
        touchpoint=touchpoint,
        option_ids=option_ids,
        position=SERVING_POSITION,
    )
