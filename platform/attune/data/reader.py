"""Read servicing histories (contracts §1): list each table's files, read and validate them.

Every file is validated on its own with :func:`attune.data.schema.validate_table`,
so an error names the file (its full URI), the column, the row within that file and
the problem. The same functions serve the Ray Data pipeline (one task per file) and
single-process readers (tests, benches, small jobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attune import storage
from attune.data.schema import TABLES, validate_table
from attune.errors import SchemaError, StoreNotFound

#: Tables the ranking pipeline reads (``protected`` is for fairness evaluation only).
FEATURE_TABLES: tuple[str, ...] = ("borrowers", "loans", "events", "presentations")


@dataclass(frozen=True)
class HistoryFiles:
    """The parquet files of each table of one history, as sorted URIs."""

    root: str
    files: dict[str, tuple[str, ...]]

    def items(self) -> list[tuple[str, str]]:
        """``(table, uri)`` for every file, table by table."""
        return [(table, uri) for table, uris in self.files.items() for uri in uris]

    def count(self, table: str) -> int:
        return len(self.files.get(table, ()))


def _is_data_file(uri: str, prefix: str) -> bool:
    rel = uri[len(prefix) :].lstrip("/")
    hidden = any(part.startswith(("_", ".")) for part in rel.split("/"))
    return uri.endswith(".parquet") and not hidden


def list_history(root: str, *, tables: Sequence[str] = FEATURE_TABLES) -> HistoryFiles:
    """The data files of ``tables`` under history ``root`` (local directory or s3://).

    Files whose path has a part starting with ``_`` or ``.`` (markers, staging) are
    skipped. Raises :class:`StoreNotFound` naming the table's URI when a table has
    no parquet file.
    """
    files: dict[str, tuple[str, ...]] = {}
    for table in tables:
        if table not in TABLES:
            raise StoreNotFound(uri=storage.join(root, table), problem="is not a history table")
        prefix = storage.join(root, table)
        found = tuple(u for u in storage.list_uris(prefix) if _is_data_file(u, prefix))
        if not found:
            raise StoreNotFound(uri=prefix, problem="no parquet files (is this a history root?)")
        files[table] = found
    return HistoryFiles(root=root, files=files)


def read_file(uri: str, table: str, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one parquet file of history table ``table`` and validate it.

    Returns the table cast to the schema (``columns`` selects after validation).
    Raises :class:`SchemaError` naming ``uri`` when the file is not readable parquet
    or violates the schema (see :func:`validate_table`).
    """
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            raw = pq.read_table(handle)
    except FileNotFoundError as exc:
        raise StoreNotFound(uri=uri) from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(
            file=uri, column=None, problem=f"not a readable parquet file: {exc}"
        ) from exc
    checked = validate_table(raw, table, source=uri)
    return checked.select(list(columns)) if columns is not None else checked


def read_table(root: str, table: str, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Every file of ``table`` under ``root``, validated and concatenated (single process)."""
    files = list_history(root, tables=(table,))
    return pa.concat_tables([read_file(uri, table, columns=columns) for uri in files.files[table]])


def read_history(root: str, *, tables: Sequence[str] = FEATURE_TABLES) -> dict[str, pd.DataFrame]:
    """The validated ``tables`` of the history at ``root`` as pandas frames (single process).

    Meant for small histories, tests and the single-process baseline; the Ray Data
    pipeline reads the same files with :func:`read_file` in parallel instead.
    """
    return {table: read_table(root, table).to_pandas() for table in tables}
