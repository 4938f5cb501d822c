"""attune preprocess on the session's two-node Ray cluster, on local paths and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from attune import cli, storage
from attune.data.pipeline import (
    DATASET_SCHEMA,
    SPLITS,
    PreprocessConfig,
    PreprocessResult,
    preprocess,
    ranking_rows,
)
from attune.data.reader import read_history
from attune.data.schema import PROTECTED_COLUMNS
from attune.data.spec import FeatureSpec, default_spec
from attune.errors import SchemaError
from attune.simulator.generator import GenerateConfig, generate
from attune.training.dataset import load_dataset
from tests.histories import make_history, write_history

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small simulator history (attune generate), local."""
    out = str(tmp_path_factory.mktemp("sim") / "history")
    generate(
        GenerateConfig(borrowers=300, months=4, seed=11, out=out, parallel="local"), progress=False
    )
    return out


@pytest.fixture(scope="module")
def first_run(
    ray_cluster: object, simulated: str, tmp_path_factory: pytest.TempPathFactory
) -> PreprocessResult:
    out = str(tmp_path_factory.mktemp("ds") / "dataset")
    return preprocess(simulated, out, config=PreprocessConfig(buckets=8, partitions=3))


def _split_frame(uri: str, split: str) -> pd.DataFrame:
    """A split's files concatenated in name order (the order consumers read them in)."""
    files = [u for u in storage.list_uris(storage.join(uri, split)) if u.endswith(".parquet")]
    tables = []
    for uri_ in sorted(files):
        fs, path = storage.pyarrow_filesystem(uri_)
        table = pq.read_table(path, filesystem=fs)
        assert table.schema.equals(DATASET_SCHEMA), uri_
        tables.append(table)
    return pa.concat_tables(tables).to_pandas()


def _reference(histories: str, result: PreprocessResult) -> pd.DataFrame:
    """The same rows computed in this process with pandas over the whole history."""
    h = read_history(histories)
    return ranking_rows(
        events=h["events"],
        presentations=h["presentations"],
        borrowers=h["borrowers"],
        loans=h["loans"],
        split=result.split,
    )


def test_output_equals_a_single_process_computation_row_for_row(
    simulated: str, first_run: PreprocessResult
) -> None:
    reference = _reference(simulated, first_run)
    for split in SPLITS:
        got = _split_frame(first_run.uri, split)
        want = reference[reference["split"] == split].drop(columns="split")
        pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_exact=True)
        assert len(got) == first_run.rows[split] > 0
        assert got["qid"].nunique() == first_run.groups[split]


def test_result_does_not_depend_on_buckets_or_partitions(
    simulated: str, first_run: PreprocessResult, tmp_path: Path
) -> None:
    other = preprocess(
        simulated, str(tmp_path / "other"), config=PreprocessConfig(buckets=3, partitions=1)
    )
    assert other.content_hash == first_run.content_hash
    for split in SPLITS:
        pd.testing.assert_frame_equal(
            _split_frame(other.uri, split), _split_frame(first_run.uri, split), check_exact=True
        )


def test_groups_labels_order_and_split_integrity(first_run: PreprocessResult) -> None:
    frames = {s: _split_frame(first_run.uri, s) for s in SPLITS}
    qids = [set(f["qid"]) for f in frames.values()]
    assert all(not (a & b) for i, a in enumerate(qids) for b in qids[i + 1 :])
    for frame in frames.values():
        assert frame["label"].between(0, 3).all()
        keys = list(zip(frame["qid"], frame["position"], strict=True))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        slates = frame.groupby("qid")["position"].apply(list)
        assert slates.map(lambda positions: positions == [1, 2, 3]).all()
        assert frame["propensity"].between(0, 1).all() and (frame["propensity"] > 0).all()
        assert not PROTECTED_COLUMNS & set(frame.columns)
    labels = pd.concat([f["label"] for f in frames.values()])
    assert set(labels) >= {0, 1, 3}  # graded, and "completed and cured" is reachable
    # time-based: every train presentation precedes every valid one, and so on
    times = [frames[s].groupby("qid")["ts"].min() for s in SPLITS]
    assert times[0].max() < times[1].min() and times[1].max() < times[2].min()


def test_spec_manifest_and_commit_markers(simulated: str, first_run: PreprocessResult) -> None:
    uri = first_run.uri
    spec = FeatureSpec.from_json(storage.read_bytes(storage.join(uri, "feature_spec.json")))
    assert spec == default_spec()
    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    assert manifest["histories"] == simulated
    assert manifest["content_hash"] == first_run.content_hash
    assert manifest["rows"] == dict(first_run.rows)
    assert manifest["groups"] == dict(first_run.groups)
    assert manifest["inputs"]["presentations"] == sum(first_run.rows.values())
    assert storage.is_complete(uri) and all(
        storage.is_complete(storage.join(uri, s)) for s in SPLITS
    )
    dataset = load_dataset(uri)  # the training stage's reader accepts it
    assert {s: len(dataset[s]) for s in SPLITS} == dict(first_run.rows)


def test_preprocess_on_s3_through_the_cli(
    simulated: str, first_run: PreprocessResult, s3_bucket: str, capsys: pytest.CaptureFixture
) -> None:
    histories = f"{s3_bucket}/histories"
    storage.upload_dir(simulated, histories)
    out = f"{s3_bucket}/datasets/d1"
    argv = ["preprocess", "--histories", histories, "--out", out, "--buckets", "5"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["content_hash"] == first_run.content_hash
    assert storage.read_json(storage.join(out, "manifest.json"))["histories"] == histories
    for split in SPLITS:
        assert storage.is_complete(storage.join(out, split))
        pd.testing.assert_frame_equal(
            _split_frame(out, split), _split_frame(first_run.uri, split), check_exact=True
        )


def test_hand_made_history_with_an_empty_split(ray_cluster: object, tmp_path: Path) -> None:
    """A zero valid fraction still commits valid/ with an empty, typed file."""
    histories = write_history(make_history(borrowers=25, months=3, seed=9), str(tmp_path / "h"))
    config = PreprocessConfig(train_fraction=0.8, valid_fraction=0.0, test_fraction=0.2)
    result = preprocess(histories, str(tmp_path / "d"), config=config)
    assert result.rows["valid"] == 0 and result.rows["train"] > 0 and result.rows["test"] > 0
    assert _split_frame(result.uri, "valid").empty
    assert storage.is_complete(storage.join(result.uri, "valid"))


def _drop_column(table: pa.Table) -> pa.Table:
    return table.drop_columns(["channel"])


def _retype_column(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("amount")
    return table.set_column(index, "amount", pc.cast(table.column("amount"), pa.string()))


@pytest.mark.parametrize(
    ("corrupt", "column", "problem", "store"),
    [
        (_drop_column, "channel", "missing column", "local"),
        (_retype_column, "amount", "has type string", "local"),
        (_retype_column, "amount", "has type string", "s3"),
    ],
)
def test_a_malformed_file_fails_naming_file_and_column_and_writes_nothing(
    ray_cluster: object,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    corrupt,
    column,
    problem,
    store,
) -> None:
    root = str(tmp_path) if store == "local" else request.getfixturevalue("s3_bucket")
    histories = write_history(make_history(borrowers=20, months=3, seed=2), f"{root}/h")
    files = sorted(u for u in storage.list_uris(f"{histories}/events") if u.endswith(".parquet"))
    bad = files[len(files) // 2]
    fs, path = storage.pyarrow_filesystem(bad)
    pq.write_table(corrupt(pq.read_table(path, filesystem=fs)), path, filesystem=fs)
    out = f"{root}/dataset"
    with pytest.raises(SchemaError) as err:
        preprocess(histories, out)
    assert (err.value.file, err.value.column) == (bad, column)
    assert problem in err.value.problem
    assert storage.list_uris(out) == []
    if store == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]  # no staging left behind


def test_reference_features_are_not_trivial(simulated: str, first_run: PreprocessResult) -> None:
    """Guards the equality tests: the features carry real, varied values."""
    frame = _split_frame(first_run.uri, "train")
    spec = default_spec()
    varied = [n for n in spec.names if frame[n].nunique() > 1]
    assert len(varied) >= len(spec.names) - 3
    assert np.isfinite(frame[[n for n in spec.names if n != "position"]].to_numpy()).all()
