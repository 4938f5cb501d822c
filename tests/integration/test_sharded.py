"""Histories in shard layout stream shard by shard and give the shuffle path's rows."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from attune import storage
from attune.data.materialize import MaterializeConfig, materialize, read_snapshot
from attune.data.pipeline import SPLITS, PreprocessResult, preprocess
from tests.histories import History, make_history, to_arrow, write_history

pytestmark = pytest.mark.integration


def _write_shards(history: History, root: Path, shard_of) -> str:
    """``history`` in the simulator's layout: ``part-sNNNNN[-cMMM].parquet`` per shard."""
    for name, frame in history.tables().items():
        shard = shard_of(frame)
        for s in np.unique(shard):
            part = frame[shard == s]
            if name in ("events", "presentations"):
                month = part["ts"].dt.strftime("%Y-%m")
                for i, (m, rows) in enumerate(part.groupby(month, sort=True)):
                    folder = root / name / f"month={m}"
                    folder.mkdir(parents=True, exist_ok=True)
                    pq.write_table(to_arrow(rows, name), folder / f"part-s{s:05d}-c{i:03d}.parquet")
            else:
                (root / name).mkdir(parents=True, exist_ok=True)
                pq.write_table(to_arrow(part, name), root / name / f"part-s{s:05d}.parquet")
    return str(root)


def _by_borrower(frame: pd.DataFrame) -> np.ndarray:
    return np.searchsorted([200, 350], frame["borrower_id"].to_numpy(), side="right")


def _by_row(frame: pd.DataFrame) -> np.ndarray:
    return np.arange(len(frame)) % 2  # every borrower in both shards


@pytest.fixture(scope="module")
def history() -> History:
    """A hand-made history whose presentation ids grow with the borrower id, as the
    simulator's do (so shards of increasing ids hold increasing qids)."""
    h = make_history(borrowers=60, months=4, seed=5)
    pid = h.presentations["presentation_id"]
    h.presentations["presentation_id"] = h.presentations["borrower_id"] * 100_000 + pid
    return h


def _split(uri: str, split: str) -> tuple[list[str], pd.DataFrame]:
    files = sorted(u for u in storage.list_uris(storage.join(uri, split)) if u.endswith(".parquet"))
    frame = pd.concat([pq.read_table(u).to_pandas() for u in files], ignore_index=True)
    return [u.rsplit("/", 1)[-1] for u in files], frame


def _same(a: PreprocessResult, b: PreprocessResult) -> None:
    assert a.split == b.split
    for split in SPLITS:
        pd.testing.assert_frame_equal(_split(a.uri, split)[1], _split(b.uri, split)[1])
    assert a.content_hash == b.content_hash and dict(a.rows) == dict(b.rows)
    assert dict(a.groups) == dict(b.groups)


def test_shard_layout_streams_and_equals_the_shuffle(
    ray_cluster: object, history: History, tmp_path: Path
) -> None:
    flat = preprocess(write_history(history, str(tmp_path / "flat")), str(tmp_path / "d0"))
    sharded = _write_shards(history, tmp_path / "sharded", _by_borrower)
    result = preprocess(sharded, str(tmp_path / "d1"))
    _same(result, flat)
    names, frame = _split(result.uri, "train")
    assert names == ["part-s00000.parquet", "part-s00001.parquet", "part-s00002.parquet"]
    assert frame["qid"].is_monotonic_increasing and len(frame) > 0
    # shards that share borrowers fall back to the shuffle: still the same rows
    mixed = _write_shards(history, tmp_path / "mixed", _by_row)
    _same(preprocess(mixed, str(tmp_path / "d2")), flat)


def test_materialize_by_shard_equals_by_bucket(
    ray_cluster: object, history: History, tmp_path: Path
) -> None:
    config = MaterializeConfig(as_of=datetime(2024, 3, 20, tzinfo=timezone.utc))
    flat = write_history(history, str(tmp_path / "flat"))
    sharded = _write_shards(history, tmp_path / "sharded", _by_borrower)
    snapshots = [
        materialize(h, str(tmp_path / f"s{i}"), config=config)
        for i, h in enumerate((flat, sharded))
    ]
    frames = [read_snapshot(s) for s in snapshots]
    for part in (0, 1):
        a, b = (f[part] for f in frames)
        keys = ["borrower_id", *(["event_id"] if part else [])]
        pd.testing.assert_frame_equal(
            a.sort_values(keys).reset_index(drop=True),
            b.sort_values(keys).reset_index(drop=True),
        )
    assert snapshots[0].borrowers == snapshots[1].borrowers > 0
    shard_files = storage.list_uris(storage.join(snapshots[1].uri, "features"))
    assert sorted(u.rsplit("/", 1)[-1] for u in shard_files) == [
        "part-s00000.parquet",
        "part-s00001.parquet",
        "part-s00002.parquet",
    ]
