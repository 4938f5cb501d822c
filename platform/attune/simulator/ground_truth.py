"""The simulator's ground truth, and the true value of ranking policies computed from it.

Evaluation reads it; training never does. Layout under a history root (contracts §2)::

    ground_truth/values/part-*.parquet    presentation_id, option_id, value (+ p_engage, p_complete)
    ground_truth/position_bias.json       {"position_bias": [b1, b2, b3]}

``value(p, o)`` is P(option ``o``, examined at presentation ``p``, is completed and the
loan is current 14 days later). A shown option at position ``k`` is examined with
probability ``b_k``, so the expected reward of a slate ``(o1, o2, o3)`` is
``sum_k b_k * value(p, o_k)`` (:func:`slate_value`). :func:`policy_values` averages
that over presentations for the reference policies (random, best fixed, oracle), the
legacy slates actually shown and a model's top-3 by score.

Everything here is plain numpy on in-memory arrays except :func:`load_ground_truth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attune import storage
from attune.data.schema import OPTION_IDS, SLATE_SIZE
from attune.errors import InvalidInput, SchemaError, StoreNotFound

GROUND_TRUTH_DIR = "ground_truth"
VALUES_DIR = "values"
POSITION_BIAS_FILE = "position_bias.json"


@dataclass(frozen=True)
class GroundTruth:
    """True option values of every presentation of a history.

    ``values[i, j]`` is the value of option ``OPTION_IDS[j]`` at presentation
    ``presentation_ids[i]``; ``presentation_ids`` is sorted and unique.
    """

    presentation_ids: np.ndarray  # (n,) int64, sorted
    values: np.ndarray  # (n, n_options) float64
    position_bias: np.ndarray  # (3,) float64

    def rows(self, presentation_ids: np.ndarray) -> np.ndarray:
        """Row indices of ``presentation_ids``; raises :class:`InvalidInput` for unknown ids."""
        ids = np.asarray(presentation_ids, dtype=np.int64)
        known = self.presentation_ids
        pos = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
        found = (known[pos] == ids) if known.size else np.zeros(ids.shape, dtype=bool)
        if not found.all():
            missing = int(ids[~found][0])
            raise InvalidInput(
                f"{int((~found).sum())} presentation id(s) have no ground truth, e.g. {missing}",
                field="presentation_ids",
                value=missing,
            )
        return pos

    def subset(self, presentation_ids: np.ndarray) -> np.ndarray:
        """The ``(len(presentation_ids), n_options)`` values of those presentations."""
        return self.values[self.rows(presentation_ids)]


def load_ground_truth(
    history_uri: str, *, presentation_ids: np.ndarray | None = None
) -> GroundTruth:
    """Read ``<history_uri>/ground_truth`` (local or s3://) into a :class:`GroundTruth`.

    With ``presentation_ids`` only those presentations are read (the filter is pushed
    into the parquet scan), which keeps evaluating a test split cheap on large
    histories. Raises :class:`StoreNotFound` when it is missing and :class:`SchemaError` naming
    the folder when a presentation lacks an option, repeats one, or a value is outside
    [0, 1].
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    root = storage.join(history_uri, GROUND_TRUTH_DIR)
    bias = np.asarray(
        storage.read_json(storage.join(root, POSITION_BIAS_FILE))["position_bias"],
        dtype=np.float64,
    )
    values_uri = storage.join(root, VALUES_DIR)
    if not storage.list_uris(values_uri):
        raise StoreNotFound(uri=values_uri, problem="no ground-truth values")
    fs, path = storage.pyarrow_filesystem(values_uri)
    wanted = None
    if presentation_ids is not None:
        ids = pa.array(np.unique(np.asarray(presentation_ids, dtype=np.int64)))
        wanted = pc.field("presentation_id").isin(ids)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["presentation_id", "option_id", "value"], filter=wanted
    )
    codes = pc.index_in(table.column("option_id"), value_set=pa.array(OPTION_IDS))
    if codes.null_count:
        row = int(np.flatnonzero(pc.is_null(codes).to_numpy(zero_copy_only=False))[0])
        raise SchemaError(
            file=values_uri,
            column="option_id",
            row=row,
            problem=f"unknown option {table.column('option_id')[row].as_py()!r}",
        )
    return _assemble(
        values_uri,
        pid=table.column("presentation_id").to_numpy(),
        option=codes.to_numpy(zero_copy_only=False).astype(np.int64),
        value=table.column("value").to_numpy(zero_copy_only=False).astype(np.float64),
        bias=bias,
    )


def _assemble(
    uri: str, *, pid: np.ndarray, option: np.ndarray, value: np.ndarray, bias: np.ndarray
) -> GroundTruth:
    """Pivot long (presentation, option, value) rows into the (n, n_options) matrix."""
    n_opt = len(OPTION_IDS)
    bad_value = ~((value >= 0.0) & (value <= 1.0))
    if bad_value.any():
        row = int(np.flatnonzero(bad_value)[0])
        raise SchemaError(
            file=uri, column="value", row=row, problem=f"value {value[row]!r} outside [0, 1]"
        )
    order = np.lexsort((option, pid))
    pid, option, value = pid[order], option[order], value[order]
    ids, counts = np.unique(pid, return_counts=True)
    if (counts != n_opt).any():
        i = int(np.flatnonzero(counts != n_opt)[0])
        raise SchemaError(
            file=uri,
            column="option_id",
            problem=f"presentation {int(ids[i])} has {int(counts[i])} values, "
            f"expected one per option ({n_opt})",
        )
    repeated = (option.reshape(ids.size, n_opt) != np.arange(n_opt)).any(axis=1)
    if repeated.any():
        bad = int(ids[np.flatnonzero(repeated)[0]])
        raise SchemaError(
            file=uri, column="option_id", problem=f"presentation {bad} repeats an option"
        )
    return GroundTruth(
        presentation_ids=ids.astype(np.int64),
        values=value.reshape(ids.size, n_opt),
        position_bias=bias,
    )


# --------------------------------------------------------------------------- policy values


def slate_value(values: np.ndarray, slates: np.ndarray, position_bias: np.ndarray) -> np.ndarray:
    """Expected reward of each slate: ``sum_k b_k * values[i, slates[i, k]]``, shape ``(n,)``.

    ``values`` is ``(n, n_options)``, ``slates`` ``(n, k)`` option indices by position.
    """
    slates = np.asarray(slates, dtype=np.int64)
    bias = np.asarray(position_bias, dtype=np.float64)[: slates.shape[1]]
    picked = np.take_along_axis(values, slates, axis=1)
    return np.asarray(picked @ bias)


def random_value(values: np.ndarray, position_bias: np.ndarray) -> np.ndarray:
    """Exact expected reward of a uniformly random slate of distinct options, per row.

    Every position of a uniform random slate holds each option with probability
    ``1 / n_options``, so the expectation is ``sum(b) * mean_o value``.
    """
    return np.asarray(values.mean(axis=1) * np.sum(position_bias[:SLATE_SIZE]))


def oracle_value(values: np.ndarray, position_bias: np.ndarray) -> np.ndarray:
    """Per-row reward of the best slate: the top values matched to the largest biases."""
    k = min(SLATE_SIZE, len(position_bias))
    top = -np.sort(-values, axis=1)[:, :k]
    return np.asarray(top @ -np.sort(-np.asarray(position_bias, dtype=np.float64))[:k])


def best_fixed_slate(values: np.ndarray, position_bias: np.ndarray) -> np.ndarray:
    """The one slate (option indices by position) maximizing the mean reward over rows.

    The mean of a fixed slate is ``sum_k b_k * mean_i values[i, o_k]``, so the best one
    puts the options with the largest mean values at the positions with the largest
    bias.
    """
    bias = np.asarray(position_bias, dtype=np.float64)[:SLATE_SIZE]
    by_mean = np.argsort(-values.mean(axis=0), kind="stable")[: bias.size]
    slate = np.empty(bias.size, dtype=np.int64)
    slate[np.argsort(-bias, kind="stable")] = by_mean
    return slate


def top_k_slates(scores: np.ndarray, k: int = SLATE_SIZE) -> np.ndarray:
    """Each row's ``k`` highest-scoring option indices, best first (ties: catalog order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :k]


def policy_values(
    gt: GroundTruth,
    *,
    presentation_ids: np.ndarray,
    model_scores: np.ndarray | None = None,
    legacy_slates: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean expected reward per presentation of each policy over ``presentation_ids``.

    Keys: ``random``, ``best_fixed``, ``oracle``, and ``legacy`` (the ``(n, 3)`` slates
    actually shown, option indices) and ``model`` (top-3 of ``model_scores``,
    ``(n, n_options)`` in catalog order) when those are given. Raises
    :class:`InvalidInput` when a shape does not match the presentations.
    """
    values = gt.subset(presentation_ids)
    n, n_opt = values.shape
    bias = gt.position_bias
    out = {
        "random": float(random_value(values, bias).mean()) if n else float("nan"),
        "best_fixed": _mean(
            slate_value(values, np.tile(best_fixed_slate(values, bias), (n, 1)), bias)
        ),
        "oracle": _mean(oracle_value(values, bias)),
    }
    if legacy_slates is not None:
        _check_shape("legacy_slates", np.shape(legacy_slates), (n, SLATE_SIZE))
        out["legacy"] = _mean(slate_value(values, legacy_slates, bias))
    if model_scores is not None:
        _check_shape("model_scores", np.shape(model_scores), (n, n_opt))
        out["model"] = _mean(slate_value(values, top_k_slates(model_scores), bias))
    return out


def share_of_oracle_lift(x: float, *, random: float, oracle: float) -> float:
    """``(x - random) / (oracle - random)``: 0 for random, 1 for the oracle."""
    if oracle == random:
        raise InvalidInput(
            f"oracle ({oracle}) equals random ({random}): no lift to share",
            field="oracle",
            value=oracle,
        )
    return (x - random) / (oracle - random)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def _check_shape(field: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(actual) != expected:
        raise InvalidInput(
            f"{field} has shape {tuple(actual)}, expected {expected}",
            field=field,
            value=list(actual),
        )
