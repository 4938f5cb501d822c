"""Snapshot rows, the latest pointer and snapshot config, without Ray."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from attune.data.features import borrower_features
from attune.data.materialize import (
    FEATURES_SCHEMA,
    MaterializeConfig,
    SnapshotInfo,
    latest_snapshot,
    point_latest,
    read_snapshot,
    snapshot_root,
    snapshot_rows,
)
from attune.data.spec import BORROWER_FEATURES
from attune.errors import InvalidInput, StoreNotFound
from tests.histories import make_history

AS_OF = pd.Timestamp("2024-06-15", tz="UTC")


def test_snapshot_rows_are_borrower_features_as_of_the_snapshot() -> None:
    h = make_history(borrowers=15, months=9, seed=8)
    people = h.borrowers.copy()
    people.loc[0, "signup_ts"] = AS_OF + timedelta(days=1)  # not a borrower yet
    feats, kept = snapshot_rows(
        events=h.events, borrowers=people, loans=h.loans, as_of=AS_OF.to_pydatetime()
    )
    ids = sorted(people["borrower_id"].iloc[1:])
    assert list(feats["borrower_id"]) == ids
    assert list(feats.columns) == FEATURES_SCHEMA.names
    queries = pd.DataFrame({"borrower_id": ids, "ts": AS_OF})
    want = borrower_features(h.events, queries, borrowers=people, loans=h.loans)
    pd.testing.assert_frame_equal(
        feats[list(BORROWER_FEATURES)], want[list(BORROWER_FEATURES)], check_exact=True
    )
    assert (kept["ts"] < AS_OF).all() and set(kept["borrower_id"]) <= set(ids)
    assert len(kept) < (h.events["ts"] < AS_OF).sum()  # older events were compacted


def _info(tmp_path: Path, day: int) -> SnapshotInfo:
    return SnapshotInfo(
        uri=f"{snapshot_root(str(tmp_path), 'abc0ffee')}/s{day}",
        snapshot_id=f"s{day}",
        spec_hash="abc0ffee",
        as_of=(AS_OF + timedelta(days=day)).to_pydatetime(),
        borrowers=1,
        events=2,
    )


def test_the_latest_pointer_only_moves_forward_in_time(tmp_path: Path) -> None:
    root = snapshot_root(str(tmp_path), "abc0ffee")
    with pytest.raises(StoreNotFound):
        latest_snapshot(str(tmp_path), spec_hash="abc0ffee")
    assert point_latest(root, _info(tmp_path, 5))
    assert not point_latest(root, _info(tmp_path, 2))  # a back-fill leaves it
    assert latest_snapshot(str(tmp_path), spec_hash="abc0ffee").snapshot_id == "s5"
    assert point_latest(root, _info(tmp_path, 9))
    assert latest_snapshot(str(tmp_path), spec_hash="abc0ffee") == _info(tmp_path, 9)


@pytest.mark.parametrize(
    "tamper",
    [
        {"uri": "s3://elsewhere/features/abc0ffee/s9"},
        {"uri": "{root}/../../../tmp/x", "snapshot_id": "../../../tmp/x"},
        {"snapshot_id": "s9/../../x"},
        {"spec_hash": "0000ffff"},
    ],
    ids=["uri elsewhere", "snapshot id with a path", "id with slashes", "other spec"],
)
def test_a_pointer_outside_its_snapshot_root_is_refused(
    tmp_path: Path, tamper: dict[str, str]
) -> None:
    """latest.json is data in the store: its uri and id must name a snapshot under its root."""
    root = snapshot_root(str(tmp_path), "abc0ffee")
    point_latest(root, _info(tmp_path, 9))
    pointer = Path(root) / "latest.json"
    data = json.loads(pointer.read_text())
    data.update({k: v.format(root=root) for k, v in tamper.items()})
    pointer.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match="snapshot pointer"):
        latest_snapshot(str(tmp_path), spec_hash="abc0ffee")


def test_a_spec_hash_that_is_not_hex_is_refused_before_any_path_is_built(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="spec_hash"):
        latest_snapshot(str(tmp_path), spec_hash="../../etc")


def test_an_uncommitted_snapshot_is_not_read(tmp_path: Path) -> None:
    info = replace(_info(tmp_path, 1), uri=str(tmp_path / "missing"))
    with pytest.raises(StoreNotFound) as err:
        read_snapshot(info)
    assert err.value.uri == info.uri


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"horizon_days": 90}, "horizon_days"),
        ({"as_of": "2025-01-01T00:00:00"}, "as_of"),  # no zone
        ({"buckets": 0}, "buckets"),
        ({"extra": 1}, "extra"),
    ],
)
def test_materialize_config_rejects_bad_values_naming_the_field(values, field) -> None:
    with pytest.raises(ValidationError) as err:
        MaterializeConfig.model_validate(values)
    assert err.value.errors()[0]["loc"] == (field,)


def test_materialize_config_accepts_an_aware_time() -> None:
    config = MaterializeConfig.model_validate({"as_of": "2025-01-01T00:00:00Z"})
    assert config.as_of is not None and config.as_of.utcoffset() == timedelta(0)
