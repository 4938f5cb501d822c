"""attune generate against a real S3 server over HTTP and on a real two-node Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from attune import cli, storage
from attune.data.schema import TABLES, validate_table
from attune.simulator import ground_truth as gt
from attune.simulator.generator import SHARD_SIZE, GenerateConfig, generate

pytestmark = pytest.mark.integration


def _relative_files(uri: str) -> dict[str, str]:
    base = uri.rstrip("/") + "/"
    return {
        u[len(base) :]: u
        for u in storage.list_uris(uri)
        if u.endswith(".parquet") and u.startswith(base)
    }


def _read(uri: str) -> pa.Table:
    fs, path = storage.pyarrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def _same_history(a: str, b: str) -> bool:
    """Same parquet files with equal tables, and the same manifest."""
    fa, fb = _relative_files(a), _relative_files(b)
    if fa.keys() != fb.keys() or not fa:
        return False
    for name in fa:
        if not _read(fa[name]).equals(_read(fb[name])):
            return False
    return bool(
        storage.read_json(storage.join(a, "manifest.json"))
        == storage.read_json(storage.join(b, "manifest.json"))
    )


def test_generate_to_s3_is_readable_with_pyarrow_and_equals_a_local_run(
    s3_bucket: str, tmp_path: Path
) -> None:
    uri = f"{s3_bucket}/histories/h1"
    argv = ["generate", "--borrowers", "300", "--months", "3", "--seed", "5", "--out", uri]
    assert cli.main([*argv, "--quiet", "--parallel", "local"]) == 0

    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    fs, root = storage.pyarrow_filesystem(uri)
    for name in TABLES:
        table = pads.dataset(
            f"{root}/{name}", filesystem=fs, format="parquet", partitioning="hive"
        ).to_table()
        validate_table(table, name, source=f"{uri}/{name}")
        assert table.num_rows == manifest["counts"][name] > 0

    local = tmp_path / "h1"
    generate(
        GenerateConfig(borrowers=300, months=3, seed=5, out=str(local), parallel="local"),
        progress=False,
    )
    assert _same_history(uri, str(local))
    remote_truth, local_truth = gt.load_ground_truth(uri), gt.load_ground_truth(str(local))
    assert np.array_equal(remote_truth.presentation_ids, local_truth.presentation_ids)
    assert np.array_equal(remote_truth.values, local_truth.values)


def test_ray_shards_write_the_same_history_as_one_process(
    ray_cluster: object, s3_bucket: str, tmp_path: Path
) -> None:
    """Two shards as Ray tasks on the cluster, writing to S3, equal an in-process run."""
    config = GenerateConfig(
        borrowers=SHARD_SIZE + 400, months=2, seed=9, out=str(tmp_path / "local"), parallel="local"
    )
    assert config.shards == 2
    generate(config, progress=False)
    on_ray = config.model_copy(update={"out": f"{s3_bucket}/ray", "parallel": "ray"})
    manifest = generate(on_ray, progress=False)
    assert manifest["shards"] == 2
    assert _same_history(on_ray.out, config.out)


def test_generate_into_a_missing_bucket_names_the_uri(
    s3_server: object, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = "s3://no-such-bucket-here/h"
    argv = ["generate", "--borrowers", "5", "--months", "1", "--seed", "1", "--out", uri]
    assert cli.main(["--json-errors", *argv, "--quiet"]) == 5  # not found
    error = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert error["error"] == "StoreNotFound"
    assert "no-such-bucket-here" in error["details"]["uri"]
