"""The qid partition of the data-parallel path (pure function; the Ray Train run is integration)."""

from __future__ import annotations

import numpy as np
import pytest

from attune.training.data_parallel import _worker_of


@pytest.mark.parametrize("num_workers", [1, 2, 3, 7])
def test_group_partition_is_a_stable_function_of_qid(num_workers: int) -> None:
    qid = np.arange(10_000, 12_000, dtype=np.int64)
    owners = _worker_of(qid, num_workers)
    assert owners.min() >= 0 and owners.max() < num_workers
    np.testing.assert_array_equal(owners, _worker_of(qid.copy(), num_workers))
    counts = np.bincount(owners, minlength=num_workers)
    assert counts.min() > 0.8 * len(qid) / num_workers  # consecutive ids spread evenly
