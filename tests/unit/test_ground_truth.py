"""attune.simulator.ground_truth: true policy values from the simulator's ground truth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attune.data.schema import OPTION_IDS
from attune.errors import InvalidInput, SchemaError, StoreNotFound
from attune.simulator import ground_truth as gt

BIAS = np.array([1.0, 0.65, 0.45])
N_OPT = len(OPTION_IDS)
ALL_SLATES = np.array(list(itertools.permutations(range(N_OPT), 3)))


def _values(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, N_OPT))


def _brute_force(values: np.ndarray) -> np.ndarray:
    """Reward of every ordered slate at every row: shape (n, 336)."""
    return np.stack(
        [gt.slate_value(values, np.tile(s, (len(values), 1)), BIAS) for s in ALL_SLATES], 1
    )


def test_slate_value_weights_each_position_by_its_bias() -> None:
    values = np.zeros((1, N_OPT))
    values[0, [2, 5, 7]] = [0.5, 0.2, 0.1]
    got = gt.slate_value(values, np.array([[2, 5, 7]]), BIAS)
    assert got == pytest.approx([0.5 * 1.0 + 0.2 * 0.65 + 0.1 * 0.45])


def test_random_value_is_the_exact_mean_over_all_ordered_slates() -> None:
    values = _values(20)
    assert gt.random_value(values, BIAS) == pytest.approx(_brute_force(values).mean(axis=1))


def test_oracle_value_is_the_best_slate_per_row() -> None:
    values = _values(20)
    assert gt.oracle_value(values, BIAS) == pytest.approx(_brute_force(values).max(axis=1))


def test_best_fixed_slate_maximizes_the_mean_over_rows() -> None:
    values = _values(50)
    means = _brute_force(values).mean(axis=0)
    best = gt.best_fixed_slate(values, BIAS)
    assert tuple(best) == tuple(ALL_SLATES[np.argmax(means)])


def test_best_fixed_slate_puts_best_option_at_the_most_examined_position() -> None:
    values = _values(30)
    bias = np.array([0.45, 1.0, 0.65])  # position 2 examined most
    best = gt.best_fixed_slate(values, bias)
    assert best[1] == int(np.argmax(values.mean(axis=0)))


def _truth(values: np.ndarray) -> gt.GroundTruth:
    ids = np.arange(100, 100 + len(values), dtype=np.int64)
    return gt.GroundTruth(presentation_ids=ids, values=values, position_bias=BIAS)


def test_policy_values_of_a_model_scoring_by_true_value_equal_the_oracle() -> None:
    values = _values(40)
    truth = _truth(values)
    out = gt.policy_values(truth, presentation_ids=truth.presentation_ids, model_scores=values)
    assert out["model"] == pytest.approx(out["oracle"])
    assert out["random"] < out["best_fixed"] < out["oracle"]


def test_policy_values_of_an_inverted_model_equal_the_worst_slates() -> None:
    values = _values(40)
    truth = _truth(values)
    out = gt.policy_values(truth, presentation_ids=truth.presentation_ids, model_scores=-values)
    assert out["model"] == pytest.approx(_brute_force(values).min(axis=1).mean())


def test_policy_values_legacy_is_the_mean_value_of_the_shown_slates() -> None:
    values = _values(10)
    truth = _truth(values)
    slates = ALL_SLATES[np.arange(10) * 7]
    out = gt.policy_values(truth, presentation_ids=truth.presentation_ids, legacy_slates=slates)
    assert out["legacy"] == pytest.approx(gt.slate_value(values, slates, BIAS).mean())
    assert "model" not in out


def test_policy_values_use_only_the_requested_presentations_in_their_order() -> None:
    values = _values(10)
    truth = _truth(values)
    ids = truth.presentation_ids[[7, 2]]
    out = gt.policy_values(truth, presentation_ids=ids, model_scores=values[[7, 2]])
    assert out["oracle"] == pytest.approx(gt.oracle_value(values[[7, 2]], BIAS).mean())
    assert out["model"] == pytest.approx(out["oracle"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_scores": np.zeros((3, N_OPT))}, "model_scores"),
        ({"model_scores": np.zeros((4, N_OPT - 1))}, "model_scores"),
        ({"legacy_slates": np.zeros((4, 2), dtype=int)}, "legacy_slates"),
    ],
)
def test_policy_values_reject_shapes_that_do_not_match(kwargs: dict, field: str) -> None:
    truth = _truth(_values(4))
    with pytest.raises(InvalidInput) as err:
        gt.policy_values(truth, presentation_ids=truth.presentation_ids, **kwargs)
    assert err.value.field == field


def test_unknown_presentation_ids_are_named() -> None:
    truth = _truth(_values(4))
    with pytest.raises(InvalidInput) as err:
        gt.policy_values(truth, presentation_ids=np.array([100, 999]))
    assert err.value.value == 999


@pytest.mark.parametrize(("x", "share"), [(0.1, 0.0), (0.3, 1.0), (0.2, 0.5), (0.05, -0.25)])
def test_share_of_oracle_lift_is_zero_at_random_and_one_at_oracle(x: float, share: float) -> None:
    assert gt.share_of_oracle_lift(x, random=0.1, oracle=0.3) == pytest.approx(share)


def test_share_of_oracle_lift_refuses_a_zero_lift() -> None:
    with pytest.raises(InvalidInput, match="no lift"):
        gt.share_of_oracle_lift(0.2, random=0.2, oracle=0.2)


# --------------------------------------------------------------------------- loading


def _write_truth(root: Path, rows: list[tuple[int, str, float]], bias: list[float]) -> None:
    folder = root / "ground_truth" / "values"
    folder.mkdir(parents=True)
    ids, options, values = zip(*rows, strict=True)
    table = pa.table(
        {
            "presentation_id": pa.array(ids, pa.int64()),
            "option_id": pa.array(options),
            "value": pa.array(values, pa.float64()),
        }
    )
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), folder / "part-a.parquet")
    pq.write_table(table.slice(half), folder / "part-b.parquet")
    (root / "ground_truth" / "position_bias.json").write_text(json.dumps({"position_bias": bias}))


def _long_rows(values: np.ndarray, ids: list[int]) -> list[tuple[int, str, float]]:
    rows = [
        (pid, OPTION_IDS[j], float(values[i, j])) for i, pid in enumerate(ids) for j in range(N_OPT)
    ]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[k] for k in order]


def test_load_ground_truth_pivots_rows_into_sorted_ids_and_catalog_order(tmp_path: Path) -> None:
    values = _values(5)
    ids = [50, 10, 40, 20, 30]
    _write_truth(tmp_path, _long_rows(values, ids), [1.0, 0.5, 0.25])
    truth = gt.load_ground_truth(str(tmp_path))
    assert truth.presentation_ids.tolist() == [10, 20, 30, 40, 50]
    assert np.array_equal(truth.values, values[np.argsort(ids)])
    assert truth.position_bias.tolist() == [1.0, 0.5, 0.25]
    assert np.array_equal(truth.subset(np.array([40, 10])), values[[2, 1]])


def test_load_ground_truth_reads_only_the_requested_presentations(tmp_path: Path) -> None:
    values = _values(6)
    _write_truth(tmp_path, _long_rows(values, [1, 2, 3, 4, 5, 6]), [1.0, 0.65, 0.45])
    truth = gt.load_ground_truth(str(tmp_path), presentation_ids=np.array([5, 2, 99]))
    assert truth.presentation_ids.tolist() == [2, 5]
    assert np.array_equal(truth.values, values[[1, 4]])


@pytest.mark.parametrize(
    ("mutate", "column", "problem"),
    [
        (lambda rows: rows[1:], "option_id", "values, expected one per option"),
        (lambda rows: [*rows[:-1], (rows[-1][0], "teleport", 0.1)], "option_id", "unknown option"),
        (lambda rows: [*rows[:-1], (*rows[-1][:2], 1.5)], "value", "outside [0, 1]"),
        (
            lambda rows: [
                *rows[:-1],
                (
                    rows[-1][0],
                    next(r[1] for r in rows if r[0] == rows[-1][0] and r != rows[-1]),
                    0.1,
                ),
            ],
            "option_id",
            "repeats an option",
        ),
    ],
)
def test_load_ground_truth_rejects_incomplete_or_bad_values(
    tmp_path: Path, mutate: object, column: str, problem: str
) -> None:
    rows = mutate(_long_rows(_values(3), [1, 2, 3]))  # type: ignore[operator]
    _write_truth(tmp_path, rows, [1.0, 0.65, 0.45])
    with pytest.raises(SchemaError) as err:
        gt.load_ground_truth(str(tmp_path))
    assert err.value.column == column
    assert problem in err.value.problem
    assert "ground_truth/values" in err.value.file


def test_load_ground_truth_of_a_history_without_one_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "ground_truth").mkdir()
    (tmp_path / "ground_truth" / "position_bias.json").write_text(
        '{"position_bias": [1, 0.5, 0.2]}'
    )
    with pytest.raises(StoreNotFound):
        gt.load_ground_truth(str(tmp_path))
