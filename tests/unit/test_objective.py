"""Training matrices: labels per objective, propensity slate weights, rows in position order."""

from __future__ import annotations

import numpy as np
import pytest

from attune.errors import ConfigError
from attune.training.objective import MAX_WEIGHT, slate_weights, training_matrix

QID = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
PROPENSITY = np.array([0.5, 0.5, 0.5, 0.05, 0.1, 0.1, 0.5, 0.25, 0.25])


def test_no_weighting_gives_every_slate_weight_one() -> None:
    assert slate_weights(QID, PROPENSITY, weighting="none").tolist() == [1.0, 1.0, 1.0]


def test_propensity_weights_favour_rare_slates_with_mean_one() -> None:
    """Slate 2 (rarely shown) outweighs slate 3, which outweighs slate 1; mean 1."""
    w = slate_weights(QID, PROPENSITY, weighting="propensity")
    assert w.mean() == pytest.approx(1.0)
    assert w[1] > w[2] > w[0]
    # ratio of the mean inverse propensities: (2+2+2)/3 vs (2+4+4)/3
    assert w[2] / w[0] == pytest.approx((10 / 3) / 2, rel=1e-6)


def test_a_tiny_propensity_is_clipped() -> None:
    qid = np.repeat(np.arange(100), 3)
    p = np.full(qid.size, 0.5)
    p[:3] = 1e-9
    w = slate_weights(qid, p, weighting="propensity")
    assert w.max() / np.median(w) == pytest.approx(MAX_WEIGHT, rel=1e-5)
    assert w.mean() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("weighting", "propensity", "field"),
    [("ips", PROPENSITY, "weighting"), ("propensity", np.r_[PROPENSITY[:-1], 0.0], "propensity")],
)
def test_bad_weighting_input_is_refused_by_name(
    weighting: str, propensity: np.ndarray, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        slate_weights(QID, propensity, weighting=weighting)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("rank:ndcg", [3, 0, 1]),
        ("rank:map", [1, 0, 0]),
        ("binary:logistic", [1, 0, 0]),
    ],
)
def test_training_matrix_orders_rows_by_position_and_labels_per_objective(
    objective: str, expected: list[int]
) -> None:
    """Rows given as positions (3, 1, 2) come out as (1, 2, 3) within the group."""
    X = np.arange(9, dtype=np.float32).reshape(3, 3)
    label = np.array([1, 3, 0])
    position = np.array([3, 1, 2])
    m = training_matrix(
        X,
        label=label,
        qid=np.zeros(3, dtype=np.int64),
        position=position,
        propensity=np.full(3, 0.5),
        objective=objective,
    )
    assert m.get_label().tolist() == expected
    assert m.get_data().toarray()[:, 0].tolist() == [3.0, 6.0, 0.0]


def test_training_matrix_sets_one_weight_per_slate() -> None:
    m = training_matrix(
        np.zeros((9, 2), dtype=np.float32),
        label=np.zeros(9),
        qid=QID,
        position=np.tile([1, 2, 3], 3),
        propensity=PROPENSITY,
        objective="rank:ndcg",
        weighting="propensity",
    )
    assert m.get_weight().tolist() == pytest.approx(
        slate_weights(QID, PROPENSITY, weighting="propensity").tolist()
    )
    unweighted = training_matrix(
        np.zeros((9, 2), dtype=np.float32),
        label=np.zeros(9),
        qid=QID,
        position=np.tile([1, 2, 3], 3),
        propensity=PROPENSITY,
        objective="rank:ndcg",
    )
    assert unweighted.get_weight().size == 0
