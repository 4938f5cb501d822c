"""attune.storage on local paths, and the translation of S3 errors into attune.errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from attune import storage
from attune.errors import (
    Conflict,
    StoreAccessDenied,
    StoreNotFound,
    StoreUnavailable,
)


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    """Bytes written to a local URI read back unchanged, creating parent folders."""
    uri = storage.join(str(tmp_path), "a", "b.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri)


def test_write_parquet_leaves_only_the_finished_file(tmp_path: Path) -> None:
    """A parquet batch lands at its URI (folders created) with no temporary file beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": [1, 2, 3]})
    uri = storage.join(str(tmp_path), "date=2025-01-01", "w-00000001-abcdef.parquet")
    storage.write_parquet(table, uri)
    assert pq.read_table(uri).equals(table)
    assert [p.name for p in (tmp_path / "date=2025-01-01").iterdir()] == [Path(uri).name]


def test_batch_names_carry_writer_and_sequence_and_differ_across_restarts() -> None:
    """Two writers restarted with the same id and sequence still name different files."""
    first, again = storage.batch_name("replica-1", 7), storage.batch_name("replica-1", 7)
    assert first.startswith("replica-1-00000007-") and again.startswith("replica-1-00000007-")
    assert first != again


def test_missing_local_file_raises_store_not_found(tmp_path: Path) -> None:
    """Reading a missing path raises StoreNotFound carrying the URI."""
    uri = str(tmp_path / "nope.json")
    with pytest.raises(StoreNotFound) as info:
        storage.read_bytes(uri)
    assert info.value.uri == uri


def test_write_without_overwrite_refuses_existing(tmp_path: Path) -> None:
    """overwrite=False refuses an existing object and keeps its content."""
    uri = str(tmp_path / "x")
    storage.write_bytes(uri, b"first", overwrite=False)
    with pytest.raises(Conflict):
        storage.write_bytes(uri, b"second", overwrite=False)
    assert storage.read_bytes(uri) == b"first"


def test_list_and_delete_prefix(tmp_path: Path) -> None:
    """list_uris is recursive and sorted; delete_prefix removes the tree."""
    for name in ["b/2", "a/1", "a/c/3"]:
        storage.write_bytes(storage.join(str(tmp_path), name), b"x")
    listed = [Path(u).relative_to(tmp_path).as_posix() for u in storage.list_uris(str(tmp_path))]
    assert listed == ["a/1", "a/c/3", "b/2"]
    storage.delete_prefix(str(tmp_path / "a"))
    assert [Path(u).name for u in storage.list_uris(str(tmp_path))] == ["2"]


def test_atomic_dir_is_invisible_until_committed(tmp_path: Path) -> None:
    """write_dir_atomically output appears whole, with _SUCCESS, or not at all."""
    target = str(tmp_path / "out")
    with storage.write_dir_atomically(target) as staging:
        storage.write_bytes(storage.join(staging, "part-0"), b"data")
        assert not Path(target).exists()
    assert storage.is_complete(target)
    assert storage.read_bytes(storage.join(target, "part-0")) == b"data"


def test_atomic_dir_leaves_nothing_on_error(tmp_path: Path) -> None:
    """An exception inside write_dir_atomically leaves neither the target nor staging files."""
    target = str(tmp_path / "out")
    with pytest.raises(RuntimeError), storage.write_dir_atomically(target) as staging:
        storage.write_bytes(storage.join(staging, "part-0"), b"data")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_previous_output(tmp_path: Path) -> None:
    """Re-writing a committed directory replaces it whole (no stale files survive)."""
    target = str(tmp_path / "out")
    with storage.write_dir_atomically(target) as staging:
        storage.write_bytes(storage.join(staging, "old"), b"1")
    with storage.write_dir_atomically(target) as staging:
        storage.write_bytes(storage.join(staging, "new"), b"2")
    assert sorted(p.name for p in Path(target).iterdir()) == ["_SUCCESS", "new"]


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchBucket", 404), StoreNotFound),
        (_client_error("NoSuchKey", 404), StoreNotFound),
        (_client_error("AccessDenied", 403), StoreAccessDenied),
        (_client_error("PreconditionFailed", 412), Conflict),
        (_client_error("InternalError", 500), StoreUnavailable),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StoreUnavailable),
    ],
)
def test_s3_errors_map_to_attune_errors(exc: Exception, expected: type[Exception]) -> None:
    """Each boto3 failure becomes the attune error a caller can act on, naming the URI."""
    err = storage._translate("s3://b/k", exc)
    assert isinstance(err, expected)
    assert "s3://b/k" in str(err)


@pytest.mark.parametrize(
    ("uri", "parts", "expected"),
    [("s3://b/p/", ("x", "/y"), "s3://b/p/x/y"), ("/tmp/a", ("b",), "/tmp/a/b")],
)
def test_join(uri: str, parts: tuple[str, ...], expected: str) -> None:
    """join adds segments with exactly one slash between them."""
    assert storage.join(uri, *parts) == expected
