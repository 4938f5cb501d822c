"""Reading a ranking dataset for training: the checks it makes and the errors it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from attune.data.spec import default_spec
from attune.errors import FeatureSpecMismatch, SchemaError, StoreNotFound
from attune.training.dataset import check_sorted, load_dataset
from tests.ranking_data import write_synthetic_ranking


@pytest.fixture
def dataset_root(tmp_path: Path) -> str:
    return write_synthetic_ranking(str(tmp_path), presentations=60, seed=4).features


def test_reads_every_split_with_features_in_spec_order(dataset_root: str) -> None:
    ds = load_dataset(dataset_root)
    spec = default_spec()
    assert ds.spec == spec
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 108, "valid": 36, "test": 36}
    table = pq.read_table(f"{dataset_root}/train/part-0.parquet")
    for j, name in enumerate(spec.names):
        np.testing.assert_array_equal(ds["train"].X[:, j], table.column(name).to_numpy())
    assert ds["train"].X.dtype == np.float32
    assert ds.histories is not None and ds.content_hash is not None
    # qid sets of the splits are disjoint
    qids = [set(ds[s].qid.tolist()) for s in ("train", "valid", "test")]
    assert not (qids[0] & qids[1]) and not (qids[1] & qids[2])


def test_unsorted_qid_is_refused_naming_file_column_and_row(dataset_root: str) -> None:
    path = f"{dataset_root}/valid/part-0.parquet"
    table = pq.read_table(path)
    order = np.arange(table.num_rows)
    order[[3, 6]] = order[[6, 3]]  # swap a row of group 2 with one of group 3
    pq.write_table(table.take(order), path)
    with pytest.raises(SchemaError) as info:
        load_dataset(dataset_root)
    assert info.value.column == "qid"
    assert info.value.row == 4
    assert info.value.file.endswith("valid")


def test_split_without_success_marker_is_refused(dataset_root: str) -> None:
    Path(dataset_root, "test", "_SUCCESS").unlink()
    with pytest.raises(StoreNotFound) as info:
        load_dataset(dataset_root)
    assert info.value.uri.endswith("test")


def test_missing_feature_column_is_refused_naming_it(dataset_root: str) -> None:
    path = f"{dataset_root}/train/part-0.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["apr"]), path)
    with pytest.raises(FeatureSpecMismatch) as info:
        load_dataset(dataset_root)
    assert "apr" in info.value.problem


@pytest.mark.parametrize(
    ("qid", "bad_row"),
    [([1, 1, 2, 2, 3], None), ([5], None), ([], None), ([1, 2, 1], 2), ([3, 3, 2, 4], 2)],
)
def test_check_sorted_finds_the_first_decrease(qid: list[int], bad_row: int | None) -> None:
    arr = np.asarray(qid, dtype=np.int64)
    if bad_row is None:
        check_sorted(arr, source="s")
        return
    with pytest.raises(SchemaError) as info:
        check_sorted(arr, source="s")
    assert info.value.row == bad_row
