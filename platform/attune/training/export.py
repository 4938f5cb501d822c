"""ONNX export of XGBoost rankers, and the parity gate that every export must pass.

Why not the obvious call: ``onnxmltools.convert_xgboost(XGBRanker)`` raises "No proper
operator name found", and ``convert_xgboost(ranker.get_booster())`` *succeeds* but
guesses a binary logistic classifier from the booster's dump, so it emits
``sigmoid(margin)`` probabilities plus a label, not ranking scores. A ranker's score is
its raw margin: the sum of its trees plus the base score, with no link function. That is
exactly what XGBoost's *regressor* converter emits, so :func:`export_onnx` registers a
converter for :class:`xgboost.XGBRanker` that reuses it (``skl2onnx``'s
``update_registered_converter``) and converts the booster wrapped in an ``XGBRanker``.

The exported graph (``ai.onnx.ml`` opset 3: the regressor converter refuses 5):

* input ``features``: ``float32[None, n_features]``, in feature-spec order; NaN = missing
  (XGBoost's default, honoured by the tree ensemble's missing-value branches);
* output ``score``: ``float32[None, 1]``, the raw margin of the ranker for each row.

Every tree of the booster is exported, as ``Booster.predict`` uses every tree by default.
A caller that trained with early stopping and wants the best iteration slices the
booster first (``booster[: booster.best_iteration + 1]``) and gates that slice.

:func:`check_parity` runs the ONNX model in ONNX Runtime (one intra-op thread, the
serving configuration) and native XGBoost (``output_margin=True``) over a whole split,
and the parity gate (:mod:`attune.governance.gates.parity_gate`) judges the two: it
passes only when ``max |onnx - native| <= tolerance`` *and* the order of rows inside
every ranking group (qid) is identical on both sides. :func:`export_and_check` raises
:class:`~attune.errors.ParityError` on failure: a model that fails the gate is never
registered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from attune.errors import ConfigError, FeatureSpecMismatch, InvalidInput
from attune.governance.gates.parity_gate import ParityReport, compare_scores, require_parity
from attune.training.search_space import OBJECTIVES

if TYPE_CHECKING:
    import xgboost

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "score"
#: Opsets of the exported graph; the XGBoost converters support ``ai.onnx.ml`` up to 3.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
DEFAULT_TOLERANCE = 1e-4
#: Objectives whose prediction is the raw margin (identity link), which the export keeps.
IDENTITY_OBJECTIVES: frozenset[str] = frozenset({*OBJECTIVES, "reg:squarederror"})

Exporter = Callable[..., bytes]


# --------------------------------------------------------------------------- export


@cache
def _register_ranker_converter() -> None:
    """Teach skl2onnx to convert ``XGBRanker`` as an identity-link tree regressor (once)."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_regressor_output_shapes
    from xgboost import XGBRanker

    update_registered_converter(
        XGBRanker,
        "AttuneXGBRanker",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


def _booster_config(booster: xgboost.Booster) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(booster.save_config())["learner"]
    return config


def _check_booster(booster: xgboost.Booster, n_features: int) -> None:
    config = _booster_config(booster)
    kind = config["gradient_booster"]["name"]
    if kind != "gbtree":
        raise ConfigError(
            field="booster", value=kind, problem="only gbtree boosters export to a tree ensemble"
        )
    objective = config["objective"]["name"]
    if objective not in IDENTITY_OBJECTIVES:
        raise ConfigError(
            field="objective",
            value=objective,
            problem=f"export keeps raw margins; expected one of {sorted(IDENTITY_OBJECTIVES)}",
        )
    if booster.num_features() != n_features:
        raise FeatureSpecMismatch(
            expected=n_features,
            actual=booster.num_features(),
            problem="number of features of the booster",
        )


def export_onnx(booster: xgboost.Booster, *, n_features: int) -> bytes:
    """Convert a ranking booster into serialized ONNX that reproduces its raw margins.

    Takes a gbtree booster with an identity-link objective (``rank:*``) trained on
    ``n_features`` columns; returns the ``ModelProto`` bytes (input ``features``, output
    ``score``; see the module docstring). Raises ConfigError for other boosters or
    objectives and FeatureSpecMismatch when ``n_features`` disagrees with the booster.
    The booster is not modified.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from xgboost import XGBRanker

    _check_booster(booster, n_features)
    _register_ranker_converter()
    trees = booster.copy()
    # The converter reads splits as "f<index>" and would truncate to ``best_iteration``;
    # native prediction uses positions and every tree, so the export must too.
    trees.feature_names = None
    trees.feature_types = None
    trees.set_attr(best_iteration=None, best_score=None)
    wrapper = XGBRanker()
    wrapper._Booster = trees
    model = convert_sklearn(
        wrapper,
        name="attune_ranker",
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        final_types=[(OUTPUT_NAME, FloatTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
    )
    config = _booster_config(booster)
    for key, value in {
        "attune.objective": config["objective"]["name"],
        "attune.n_features": str(n_features),
        "attune.num_trees": str(booster.num_boosted_rounds()),
    }.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    data: bytes = model.SerializeToString()
    return data


def naive_export(booster: xgboost.Booster, n_features: int) -> bytes:
    """The tempting one-liner (``convert_xgboost(booster)``), which yields a classifier.

    Kept only so tests can prove that the parity gate refuses it; never ship its output.
    """
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    # The classifier converter takes the logit of the ranker's base score, which is no
    # probability (often ~0 or negative): numpy warns, and the scores come out wrong.
    with np.errstate(invalid="ignore", divide="ignore"):
        model = onnxmltools.convert_xgboost(
            booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))]
        )
    data: bytes = model.SerializeToString()
    return data


# --------------------------------------------------------------------------- parity gate


def onnx_scores(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """Score ``X`` with ONNX Runtime on one intra-op thread; one float per row.

    Uses the model's first float output; a 2-D output contributes its last column (a
    regressor's only column, a binary classifier's positive-class probability).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    outputs = session.get_outputs()
    float_outputs = [i for i, out in enumerate(outputs) if out.type == "tensor(float)"]
    if not float_outputs:
        raise InvalidInput(
            "ONNX model has no float output to compare",
            outputs=[out.name for out in outputs],
        )
    result = session.run(None, {session.get_inputs()[0].name: X})[float_outputs[0]]
    scores = np.asarray(result, dtype=np.float32)
    if scores.ndim == 2:
        scores = scores[:, -1]
    return scores.reshape(-1)


def native_margins(booster: xgboost.Booster, X: np.ndarray) -> np.ndarray:
    """Native XGBoost raw margins (every tree) for ``X``, as float32."""
    import xgboost

    dmatrix = xgboost.DMatrix(X, missing=np.nan, feature_names=booster.feature_names)
    return np.asarray(booster.predict(dmatrix, output_margin=True), dtype=np.float32).reshape(-1)


def _validated_inputs(
    booster: xgboost.Booster, X: np.ndarray, qid: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    if not tolerance > 0:
        raise ConfigError(field="tolerance", value=tolerance, problem="must be > 0")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InvalidInput(f"X must be a non-empty 2-D array, got shape {X.shape}", shape=X.shape)
    if X.shape[1] != booster.num_features():
        raise FeatureSpecMismatch(
            expected=booster.num_features(), actual=X.shape[1], problem="columns of X"
        )
    qid = np.asarray(qid).reshape(-1)
    if qid.shape[0] != X.shape[0]:
        raise InvalidInput(
            f"qid has {qid.shape[0]} entries but X has {X.shape[0]} rows",
            qid_rows=qid.shape[0],
            x_rows=X.shape[0],
        )
    return np.ascontiguousarray(X, dtype=np.float32), qid


def check_parity(
    onnx_bytes: bytes,
    booster: xgboost.Booster,
    X: np.ndarray,
    qid: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with native XGBoost margins on every row of ``X``.

    ``qid`` gives each row's ranking group (any order). Passes when the largest absolute
    difference is ``<= tolerance`` and every group ranks its rows identically on both
    sides. Raises InvalidInput / FeatureSpecMismatch / ConfigError for malformed inputs;
    a failed comparison is reported (``passed=False``), not raised.
    """
    X, qid = _validated_inputs(booster, X, qid, tolerance)
    native = native_margins(booster, X)
    onnx = onnx_scores(onnx_bytes, X)
    if onnx.shape != native.shape:
        raise InvalidInput(
            f"ONNX model returned {onnx.shape[0]} scores for {native.shape[0]} rows",
            onnx_rows=onnx.shape[0],
            rows=native.shape[0],
        )
    report = compare_scores(native, onnx, qid, tolerance=tolerance)
    log.info("parity: %s", report)
    return report


def export_and_check(
    booster: xgboost.Booster,
    X: np.ndarray,
    qid: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: Exporter = export_onnx,
) -> tuple[bytes, ParityReport]:
    """Export ``booster`` and gate the export on ``(X, qid)`` (normally the whole test split).

    ``exporter(booster, n_features=...)`` produces the ONNX bytes (injectable so a test can
    push a bad conversion through the gate). Returns ``(onnx_bytes, report)`` when the gate
    passes; raises :class:`~attune.errors.ParityError` (with the measured difference and
    order agreement) when it does not.
    """
    X, qid = _validated_inputs(booster, X, qid, tolerance)
    onnx_bytes = exporter(booster, n_features=int(X.shape[1]))
    report = check_parity(onnx_bytes, booster, X, qid, tolerance=tolerance)
    require_parity(report)
    return onnx_bytes, report
