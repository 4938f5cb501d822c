"""Candidate rows for serving, built by the training feature code (attune.data.features).

Serving never re-implements a feature: borrower state goes through
:func:`attune.data.features.option_rows` (context and option one-hots, ``position = 1``)
and :func:`attune.data.features.feature_matrix` (spec order), the functions that build
the training data, so the same input gives the same vector on both paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from attune.data.features import feature_matrix, option_rows
from attune.data.spec import FeatureSpec

#: Slate position every candidate is scored at (the contract of the ranking dataset).
SERVING_POSITION = 1


def candidate_matrix(
    spec: FeatureSpec,
    *,
    borrower: Mapping[str, float],
    touchpoint: str,
    option_ids: Sequence[str],
) -> np.ndarray:
    """``float32[len(option_ids), spec.n_features]``: one row per option, in spec order.

    Raises InvalidInput for an unknown option or touchpoint and FeatureSpecMismatch
    when ``borrower`` lacks a feature the spec needs (both from attune.data.features).
    """
    frame = pd.DataFrame([dict(borrower)])
    rows = option_rows(
        frame, options=list(option_ids), touchpoint=touchpoint, position=SERVING_POSITION
    )
    return feature_matrix(rows, spec)
