"""Feature snapshots on the two-node Ray cluster: preprocess == snapshot == online replay."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from attune import cli, storage
from attune.data.features import borrower_features
from attune.data.materialize import (
    FEATURES_SCHEMA,
    MaterializeConfig,
    SnapshotInfo,
    latest_snapshot,
    materialize,
    read_snapshot,
)
from attune.data.pipeline import SPLITS, PreprocessConfig, PreprocessResult, preprocess
from attune.data.reader import read_history
from attune.data.schema import EVENTS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.simulator.generator import GenerateConfig, generate

pytestmark = pytest.mark.integration
FEATURES = list(BORROWER_FEATURES)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("sim") / "history")
    generate(
        GenerateConfig(borrowers=150, months=9, seed=13, out=out, parallel="local"), progress=False
    )
    return out


@pytest.fixture(scope="module")
def offline(
    ray_cluster: object, history: str, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    """Every presentation row of the preprocess output (all splits)."""
    out = str(tmp_path_factory.mktemp("ds") / "dataset")
    result: PreprocessResult = preprocess(history, out, config=PreprocessConfig(buckets=4))
    frames = []
    for split in SPLITS:
        for uri in sorted(storage.list_uris(storage.join(result.uri, split))):
            if uri.endswith(".parquet"):
                frames.append(pq.read_table(uri).to_pandas())
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def snapshot(
    ray_cluster: object,
    history: str,
    offline: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> SnapshotInfo:
    """A snapshot as of a presentation's time, late enough that old events get compacted."""
    times = offline["ts"].sort_values().unique()
    as_of = pd.Timestamp(times[len(times) * 4 // 5]).to_pydatetime()
    store = str(tmp_path_factory.mktemp("store"))
    return materialize(history, store, config=MaterializeConfig(as_of=as_of, buckets=5))


def test_snapshot_equals_preprocess_for_presentations_at_the_snapshot_time(
    offline: pd.DataFrame, snapshot: SnapshotInfo
) -> None:
    feats, _ = read_snapshot(snapshot)
    at = offline[offline["ts"] == pd.Timestamp(snapshot.as_of)].drop_duplicates("qid")
    assert len(at) >= 1
    got = feats.set_index("borrower_id").loc[at["borrower_id"], FEATURES]
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), at[FEATURES].reset_index(drop=True), check_exact=True
    )
    assert feats["borrower_id"].is_unique and len(feats) == snapshot.borrowers == 150


def test_snapshot_events_plus_newer_events_reproduce_every_later_presentation(
    history: str, offline: pd.DataFrame, snapshot: SnapshotInfo
) -> None:
    """The online path (snapshot + events since) equals preprocess, value for value."""
    h = read_history(history)
    _, kept = read_snapshot(snapshot)
    as_of = pd.Timestamp(snapshot.as_of)
    newer = h["events"][h["events"]["ts"] >= as_of]
    online_events = pd.concat([kept, newer], ignore_index=True)
    later = offline[offline["ts"] > as_of].drop_duplicates("qid").reset_index(drop=True)
    assert later["borrower_id"].nunique() > 30
    online = borrower_features(
        online_events, later[["borrower_id", "ts"]], borrowers=h["borrowers"], loans=h["loans"]
    )
    pd.testing.assert_frame_equal(online[FEATURES], later[FEATURES], check_exact=True)
    # the snapshot really is compacted: far fewer events than the history before it
    assert len(kept) < 0.9 * (h["events"]["ts"] < as_of).sum()
    assert kept["event_id"].str.startswith("compacted:").any()


def test_snapshot_layout_pointer_and_cli_on_s3(
    ray_cluster: object,
    history: str,
    s3_bucket: str,
    redis_url: str,
    capsys: pytest.CaptureFixture,
) -> None:
    histories = f"{s3_bucket}/histories"
    storage.upload_dir(history, histories)
    store = f"{s3_bucket}/store"
    argv = ["features", "materialize", "--histories", histories, "--out", store]
    # an s3:// store needs a shared online store: refused without one, naming the field
    assert cli.main([*argv, "--buckets", "3"]) == 4  # invalid input
    assert "online.redis_url" in capsys.readouterr().err
    argv += ["--redis-url", redis_url, "--as-of", "2025-08-01T00:00:00Z", "--buckets", "3"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    later = SnapshotInfo.from_dict(printed)
    assert printed["online"]["snapshot_id"] == later.snapshot_id
    assert later.snapshot_id.startswith("20250801T000000Z-")
    assert later.uri == f"{store}/features/{default_spec().hash}/{later.snapshot_id}"
    assert storage.is_complete(later.uri)
    manifest = storage.read_json(storage.join(later.uri, "manifest.json"))
    assert (manifest["borrowers"], manifest["spec_hash"]) == (150, default_spec().hash)
    assert latest_snapshot(store) == later

    earlier = materialize(
        histories,
        store,
        config=MaterializeConfig(as_of=later.as_of - timedelta(days=30), buckets=2),
    )
    assert latest_snapshot(store) == later  # a back-fill does not move the pointer
    feats, kept = read_snapshot(earlier, borrower_ids=[3, 4])
    assert sorted(feats["borrower_id"]) == [3, 4] and set(kept["borrower_id"]) <= {3, 4}
    assert list(feats.columns) == FEATURES_SCHEMA.names and list(kept.columns) == EVENTS.names
    assert (kept["ts"] < pd.Timestamp(earlier.as_of)).all()


def test_a_bad_history_writes_no_snapshot(ray_cluster: object, history: str, tmp_path: Path):
    bad = tmp_path / "history"
    storage.upload_dir(history, str(bad))
    target = sorted((bad / "borrowers").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(target).drop_columns(["income_monthly"]), target)
    from attune.errors import SchemaError

    with pytest.raises(SchemaError) as err:
        materialize(str(bad), str(tmp_path / "store"))
    assert (err.value.file, err.value.column) == (str(target), "income_monthly")
    assert not (tmp_path / "store").exists()
