"""attune.storage against a real S3-compatible server (moto's standalone server over HTTP)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attune import storage
from attune.errors import Conflict, StoreNotFound, StoreUnavailable
from attune.settings import get_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_object_roundtrip_and_listing(s3_bucket: str) -> None:
    """Objects written over HTTP read back, list recursively and delete by prefix."""
    storage.write_json(storage.join(s3_bucket, "p/a.json"), {"x": 1})
    storage.write_bytes(storage.join(s3_bucket, "p/q/b.bin"), b"b")
    assert storage.read_json(storage.join(s3_bucket, "p/a.json")) == {"x": 1}
    assert storage.list_uris(storage.join(s3_bucket, "p")) == [
        f"{s3_bucket}/p/a.json",
        f"{s3_bucket}/p/q/b.bin",
    ]
    storage.delete_prefix(storage.join(s3_bucket, "p"))
    assert storage.list_uris(storage.join(s3_bucket, "p")) == []


def test_missing_key_and_missing_bucket_are_named(s3_bucket: str) -> None:
    """A missing key and a missing bucket raise StoreNotFound naming the URI."""
    with pytest.raises(StoreNotFound, match=r"missing\.json"):
        storage.read_bytes(storage.join(s3_bucket, "missing.json"))
    with pytest.raises(StoreNotFound, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-attune/x")
    assert not storage.exists(storage.join(s3_bucket, "missing.json"))


def test_conditional_put_refuses_overwrite(s3_bucket: str) -> None:
    """overwrite=False is enforced by the server (If-None-Match), keeping the first object."""
    uri = storage.join(s3_bucket, "once")
    storage.write_bytes(uri, b"1", overwrite=False)
    with pytest.raises(Conflict):
        storage.write_bytes(uri, b"2", overwrite=False)
    assert storage.read_bytes(uri) == b"1"


def test_parquet_through_pyarrow_filesystem(s3_bucket: str) -> None:
    """pyarrow reads and writes parquet on s3:// with the same endpoint and credentials."""
    table = pa.table({"a": [1, 2, 3]})
    fs, path = storage.pyarrow_filesystem(storage.join(s3_bucket, "t/part-0.parquet"))
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)


def test_atomic_dir_on_s3_marks_success_last(s3_bucket: str) -> None:
    """On S3 the _SUCCESS marker appears only after the block completes."""
    target = storage.join(s3_bucket, "out")
    with storage.write_dir_atomically(target) as staging:
        storage.write_bytes(storage.join(staging, "part-0"), b"x")
        assert not storage.is_complete(target)
    assert storage.is_complete(target)


def test_unreachable_endpoint_retries_then_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no server listening, calls retry with back-off and then raise StoreUnavailable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ATTUNE_S3_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    try:
        with pytest.raises(StoreUnavailable) as info:
            storage.read_bytes("s3://any/key")
        assert info.value.attempts == 2
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
