"""One interface for local paths and ``s3://bucket/prefix`` URIs.

Objects go through boto3 (with botocore's standard retry mode: exponential back-off
on throttling, 5xx and connection errors); parquet goes through pyarrow / Ray Data with
the same endpoint and credentials, taken from the standard ``AWS_*`` variables
(``AWS_ENDPOINT_URL`` for an S3-compatible server). Errors are translated into
:mod:`attune.errors` with the URI that failed.

Atomic directories: :func:`write_dir_atomically` stages a local directory and moves
it into place with one rename; on S3 (no rename) readers rely on the ``_SUCCESS``
marker written last (:func:`is_complete`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from attune.errors import (
    Conflict,
    StoreAccessDenied,
    StoreNotFound,
    StoreUnavailable,
)
from attune.settings import get_settings

SUCCESS_MARKER = "_SUCCESS"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a URI (local path or s3://)."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


# --------------------------------------------------------------------------- boto3


@lru_cache(maxsize=4)
def _s3_client(endpoint: str | None, attempts: int) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},  # the first one included
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def s3_client() -> Any:
    """A cached boto3 S3 client configured from the environment."""
    settings = get_settings()
    return _s3_client(settings.aws_endpoint_url, settings.s3_max_attempts)


def _translate(uri: str, exc: Exception) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"NoSuchBucket"}:
            return StoreNotFound(uri=uri, problem="bucket does not exist")
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            return StoreNotFound(uri=uri)
        if code in {"AccessDenied", "403", "Forbidden"} or status == 403:
            return StoreAccessDenied(uri=uri)
        if code == "PreconditionFailed" or status == 412:
            return Conflict(f"{uri}: already exists", uri=uri)
        return StoreUnavailable(uri=uri, attempts=get_settings().s3_max_attempts, cause=str(exc))
    if isinstance(exc, BotoCoreError):
        return StoreUnavailable(uri=uri, attempts=get_settings().s3_max_attempts, cause=str(exc))
    return exc


# --------------------------------------------------------------------------- objects


def read_bytes(uri: str) -> bytes:
    """Read one object. Raises StoreNotFound, StoreAccessDenied or StoreUnavailable."""
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StoreNotFound(uri=uri) from exc
        except PermissionError as exc:
            raise StoreAccessDenied(uri=uri) from exc
    bucket, key = split_s3(uri)
    try:
        body: bytes = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    except Exception as exc:
        raise _translate(uri, exc) from exc


def write_bytes(uri: str, data: bytes, *, overwrite: bool = True) -> None:
    """Write one object. With ``overwrite=False`` an existing object raises Conflict."""
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        if not overwrite:
            # Stage the full content, then hard-link it into place: link() fails if the
            # target exists, and a reader never sees a half-written file.
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise Conflict(f"{uri}: already exists", uri=uri) from exc
            finally:
                tmp.unlink()
            return
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    bucket, key = split_s3(uri)
    extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data, **extra)
    except Exception as exc:
        raise _translate(uri, exc) from exc


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays as Python values and NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_bytes(obj: Any) -> bytes:
    """Strict JSON of ``obj`` (through :func:`to_jsonable`), indented, keys sorted."""
    return json.dumps(
        to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False, default=str
    ).encode()


def write_json(uri: str, obj: Any, *, overwrite: bool = True) -> None:
    write_bytes(
        uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), overwrite=overwrite
    )


def exists(uri: str) -> bool:
    """True when an object (or, locally, a file or directory) exists at ``uri``."""
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        err = _translate(uri, exc)
        if isinstance(err, StoreNotFound) and "bucket" not in err.message:
            return False
        raise err from exc


def list_uris(prefix: str) -> list[str]:
    """Every object (file) below ``prefix``, recursively, as sorted URIs."""
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.exists():
            return []
        if root.is_file():
            return [str(root)]
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(prefix)
    key = key.rstrip("/") + "/" if key else ""
    out: list[str] = []
    try:
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except Exception as exc:
        raise _translate(prefix, exc) from exc
    return sorted(out)


def delete_prefix(prefix: str) -> None:
    """Delete everything below ``prefix`` (a no-op when nothing is there)."""
    if not is_s3(prefix):
        path = Path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    bucket, _ = split_s3(prefix)
    keys = [split_s3(u)[1] for u in list_uris(prefix)]
    try:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch})
    except Exception as exc:
        raise _translate(prefix, exc) from exc


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to ``uri`` (local or s3://)."""
    local_dir = Path(local_dir)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            write_bytes(join(uri, str(path.relative_to(local_dir))), path.read_bytes())


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy everything below ``uri`` into ``local_dir``; returns ``local_dir``."""
    local_dir = Path(local_dir)
    base = uri.rstrip("/") + "/"
    for item in list_uris(uri):
        rel = item[len(base) :] if item.startswith(base) else Path(item).name
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(item))
    return local_dir


# --------------------------------------------------------------------------- parquet


def pyarrow_filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for ``uri``, with the same S3 settings as boto3."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    settings = get_settings()
    endpoint = settings.aws_endpoint_url
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.s3_max_attempts),
        "region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
    }
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    return pafs.S3FileSystem(**kwargs), uri[len("s3://") :]


def batch_name(writer_id: str, seq: int) -> str:
    """The file name (no suffix) of a writer's ``seq``-th batch, unique across restarts."""
    return f"{writer_id}-{seq:08d}-{uuid.uuid4().hex[:6]}"


def write_parquet(table: Any, uri: str) -> None:
    """Write ``table`` as the parquet file ``uri``, all or nothing.

    On S3 one PUT is atomic; locally the file is written beside (a dot-file, which
    readers skip) and renamed, so a reader never sees half a file.
    """
    import pyarrow.parquet as pq

    fs, path = pyarrow_filesystem(uri)
    if is_s3(uri):
        pq.write_table(table, path, filesystem=fs)
        return
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def ray_read_args(uri: str) -> dict[str, Any]:
    """Keyword arguments for ``ray.data.read_*``/``write_*``: ``paths`` and ``filesystem``."""
    fs, path = pyarrow_filesystem(uri)
    return {"paths": path, "filesystem": fs}


# --------------------------------------------------------------------------- atomic directories


def is_complete(uri: str) -> bool:
    """True when the directory at ``uri`` was committed (its ``_SUCCESS`` marker exists)."""
    return exists(join(uri, SUCCESS_MARKER))


def mark_complete(uri: str, info: dict[str, Any] | None = None) -> None:
    write_json(join(uri, SUCCESS_MARKER), info or {})


@contextmanager
def write_dir_atomically(uri: str) -> Iterator[str]:
    """Yield a staging URI to write into; on success it becomes ``uri`` with a ``_SUCCESS`` marker.

    Locally the staging directory is renamed into place (readers never see a partial
    directory). On S3 the files are written under ``uri`` and the marker is written
    last: readers must check :func:`is_complete`. On error the staged output is removed
    and nothing is left at ``uri``.
    """
    if is_s3(uri):
        delete_prefix(uri)
        try:
            yield uri
        except BaseException:
            delete_prefix(uri)
            raise
        mark_complete(uri)
        return
    target = Path(uri)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        yield str(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first: the folders made for uri, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        mark_complete(str(staging))
        if target.exists():
            trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
