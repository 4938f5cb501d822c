"""The model registry: immutable versions and movable aliases, on a local dir or ``s3://``.

Layout (identical on a local directory and under ``s3://bucket/prefix``)::

    <registry>/versions/<version>/<file>...        the version's files, written first
    <registry>/versions/<version>/MANIFEST.json    written last: the version exists iff it does
    <registry>/aliases/<alias>.json                one AliasMove; replaced by one write (atomic)
    <registry>/aliases/history/<time>-<alias>-<rand>.json   the alias log, one object per move

Version ids are ``v<YYYYMMDD>-<HHMMSS>-<hash6>``: the UTC registration time (so ids sort
by time) and the first 6 hex digits of the content hash (sha256 over every file's sha256
and the metadata). Every file, the manifest included, is written with create-if-absent
(``If-None-Match: *`` on S3, an exclusive hard link locally), so two writers can never
both create the same version: the loser gets :class:`~attune.errors.VersionExists`, and
the winner's files are never overwritten. A writer that dies half-way leaves files
without a manifest, which no reader ever sees.

Reads verify: :meth:`Registry.read` checks each file's size and sha256 against the
manifest and raises :class:`~attune.errors.ArtifactCorrupted` naming the file.

Aliases move with one object write each; concurrent moves of one alias are
last-writer-wins, and every move is first appended to the alias log (its own
create-if-absent object, so log entries never collide), so the log may hold a move
whose alias write then failed but never misses one that took effect. Versions are
immutable, so alias history lives in the log, not in the version:
:meth:`Registry.history` filters it by alias or by version for model cards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from attune import storage
from attune.errors import (
    AliasNotFound,
    ArtifactCorrupted,
    ConfigError,
    Conflict,
    GateRefused,
    StoreNotFound,
    VersionExists,
    VersionNotFound,
)
from attune.governance.gates.decision import GateDecision
from attune.governance.gates.promotion import GATED_ALIASES, PromotionGate, check_promotion
from attune.registry.models import (
    ALIASES,
    FAIRNESS,
    MANIFEST,
    VERSION_ID,
    AliasMove,
    AliasRequest,
    FileEntry,
    Manifest,
    VersionInfo,
    check_file_name,
    config_error,
)

log = logging.getLogger(__name__)

_Record = TypeVar("_Record", bound=BaseModel)


def _parse(model: type[_Record], raw: bytes, *, uri: str, what: str) -> _Record:
    """``raw`` as a ``model``; ArtifactCorrupted names the first bad field otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactCorrupted(
            uri=uri,
            problem=f"unreadable {what}: {config_error(exc).message}",
            expected_sha256=None,
            actual_sha256=_sha256(raw),
        ) from exc


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    """A model registry rooted at ``uri`` (a local directory or ``s3://bucket/prefix``).

    ``clock`` returns the current UTC time (injectable so tests can force two writers
    into the same second). Every method is safe to call from several threads and
    processes at once.
    """

    def __init__(self, uri: str, *, clock: Callable[[], datetime] = _utcnow) -> None:
        if not uri:
            raise ConfigError(field="registry", value=uri, problem="must not be empty")
        self.uri = uri.rstrip("/") if storage.is_s3(uri) else str(Path(uri).absolute())
        self._clock = clock

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # ----------------------------------------------------------------- paths

    def _version_uri(self, version: str) -> str:
        return storage.join(self.uri, "versions", version)

    def _alias_uri(self, alias: str) -> str:
        return storage.join(self.uri, "aliases", f"{alias}.json")

    # ----------------------------------------------------------------- versions

    def register(self, files: Mapping[str, bytes], *, metadata: Mapping[str, Any]) -> str:
        """Store ``files`` as a new immutable version and return its id.

        Every file is written first, then ``MANIFEST.json`` (file sizes and sha256,
        ``metadata``). Raises ConfigError for bad file names, no files or metadata that
        is not JSON, and VersionExists when the version id is already taken (the same
        content registered within the same second, possibly by a concurrent writer).
        """
        if not files:
            raise ConfigError(field="files", value=[], problem="a version needs at least one file")
        entries: dict[str, FileEntry] = {}
        for name, data in files.items():
            check_file_name(name)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ConfigError(field=name, value=type(data).__name__, problem="must be bytes")
            entries[name] = FileEntry(sha256=_sha256(bytes(data)), size=len(data))
        try:
            meta_json = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                field="metadata", value=str(metadata)[:200], problem=str(exc)
            ) from exc
        digest_input = json.dumps(
            {"files": {n: e.sha256 for n, e in sorted(entries.items())}, "metadata": meta_json},
            sort_keys=True,
        )
        content_hash = _sha256(digest_input.encode())
        created_at = self._clock().astimezone(UTC)
        version = f"v{created_at:%Y%m%d-%H%M%S}-{content_hash[:6]}"
        manifest = Manifest(
            version=version,
            created_at=created_at,
            content_hash=content_hash,
            files=entries,
            metadata=json.loads(meta_json),
        )
        base = self._version_uri(version)
        if storage.exists(storage.join(base, MANIFEST)):
            raise VersionExists(registry=self.uri, version=version)
        try:
            for name in sorted(files):
                storage.write_bytes(storage.join(base, name), bytes(files[name]), overwrite=False)
            storage.write_bytes(
                storage.join(base, MANIFEST),
                manifest.model_dump_json(indent=2).encode(),
                overwrite=False,
            )
        except Conflict as exc:
            raise VersionExists(registry=self.uri, version=version) from exc
        log.info("registered %s in %s (%d files)", version, self.uri, len(files))
        return version

    def versions(self) -> list[VersionInfo]:
        """Every complete version (manifest present), oldest first."""
        base = storage.join(self.uri, "versions") + "/"
        found: list[VersionInfo] = []
        for item in storage.list_uris(storage.join(self.uri, "versions")):
            parts = item[len(base) :].split("/") if item.startswith(base) else []
            if len(parts) == 2 and parts[1] == MANIFEST and VERSION_ID.fullmatch(parts[0]):
                try:
                    found.append(self._info(parts[0]))
                except ArtifactCorrupted as exc:
                    log.warning("skipping version %s: %s", parts[0], exc.message)
        return sorted(found, key=lambda info: info.version)

    def get(self, ref: str) -> VersionInfo:
        """The version named by ``ref`` (a version id or an alias)."""
        return self._info(self.resolve(ref))

    def _info(self, version: str) -> VersionInfo:
        uri = storage.join(self._version_uri(version), MANIFEST)
        try:
            raw = storage.read_bytes(uri)
        except StoreNotFound as exc:
            raise VersionNotFound(registry=self.uri, version=version) from exc
        manifest = _parse(Manifest, raw, uri=uri, what="manifest")
        if manifest.version != version:
            raise ArtifactCorrupted(
                uri=uri,
                problem=f"manifest names version {manifest.version!r}",
                expected_sha256=None,
                actual_sha256=_sha256(raw),
            )
        return VersionInfo.from_manifest(manifest, uri=self._version_uri(version))

    def read(self, ref: str, name: str) -> bytes:
        """The verified content of file ``name`` of version ``ref`` (a version id or alias).

        Raises StoreNotFound when the version has no such file and ArtifactCorrupted
        when the stored file is missing or its size or sha256 differs from the manifest.
        Resolve an alias once and pass the id when reading several files of a version.
        """
        return self._read_verified(self.get(ref), name)

    def read_json(self, ref: str, name: str) -> Any:
        """:meth:`read` parsed as JSON."""
        return json.loads(self.read(ref, name))

    def _read_verified(self, info: VersionInfo, name: str) -> bytes:
        uri = storage.join(info.uri, name)
        entry = info.files.get(name)
        if entry is None:
            raise StoreNotFound(
                uri=uri, problem=f"not a file of version {info.version} ({sorted(info.files)})"
            )
        try:
            data = storage.read_bytes(uri)
        except StoreNotFound as exc:
            raise ArtifactCorrupted(
                uri=uri, problem="missing", expected_sha256=entry.sha256, actual_sha256=None
            ) from exc
        actual = _sha256(data)
        if len(data) != entry.size or actual != entry.sha256:
            raise ArtifactCorrupted(
                uri=uri,
                problem=f"{len(data)} bytes, manifest says {entry.size}",
                expected_sha256=entry.sha256,
                actual_sha256=actual,
            )
        return data

    def download(self, ref: str, dest_dir: str | Path) -> Path:
        """Copy every verified file of version ``ref`` (and its manifest) into ``dest_dir``.

        Files already in ``dest_dir`` with the right sha256 are kept, so downloading into
        a cache directory again is cheap. Returns ``dest_dir`` as a Path.
        """
        info = self.get(ref)
        dest = Path(dest_dir)
        for name, entry in sorted(info.files.items()):
            target = dest / name
            if target.is_file() and _sha256(target.read_bytes()) == entry.sha256:
                continue
            storage.write_bytes(str(target), self._read_verified(info, name))
        manifest = storage.read_bytes(storage.join(info.uri, MANIFEST))
        storage.write_bytes(str(dest / MANIFEST), manifest)
        return dest

    # ----------------------------------------------------------------- aliases

    def resolve(self, ref: str) -> str:
        """The version id named by ``ref``: an alias or a version id.

        Raises AliasNotFound for an alias that is not set and VersionNotFound for
        anything else that is not a complete version.
        """
        if ref in ALIASES:
            return self.alias(ref).version
        if VERSION_ID.fullmatch(ref) and storage.exists(
            storage.join(self._version_uri(ref), MANIFEST)
        ):
            return ref
        raise VersionNotFound(registry=self.uri, version=ref)

    def alias(self, alias: str) -> AliasMove:
        """The current record of ``alias`` (its version, who moved it, when and why)."""
        if alias not in ALIASES:
            raise ConfigError(field="alias", value=alias, problem=f"must be one of {ALIASES}")
        uri = self._alias_uri(alias)
        try:
            raw = storage.read_bytes(uri)
        except StoreNotFound as exc:
            raise AliasNotFound(registry=self.uri, alias=alias) from exc
        return _parse(AliasMove, raw, uri=uri, what="alias")

    def aliases(self) -> dict[str, str]:
        """``{alias: version}`` for every alias that is set."""
        out: dict[str, str] = {}
        for name in ALIASES:
            try:
                out[name] = self.alias(name).version
            except AliasNotFound:
                continue
        return out

    def set_alias(
        self,
        alias: str,
        version: str,
        *,
        by: str,
        justification: str | None = None,
        override: bool = False,
        gate: PromotionGate | None = None,
    ) -> AliasMove:
        """Point ``alias`` at ``version`` (a version id, or another alias to copy from).

        Moving ``champion`` or ``canary`` first runs the promotion gates
        (:func:`attune.governance.gates.promotion.check_promotion`; ``gate`` replaces its
        default fairness gate; a missing or an invalid report counts as a refusal). A
        refusal raises GateRefused unless ``override`` is set, which needs a
        ``justification`` and is recorded. Every move is appended to the alias log.
        Raises ConfigError for a bad alias name or an unjustified override, and
        VersionNotFound / AliasNotFound for ``version``.
        """
        try:
            request = AliasRequest(
                alias=alias,
                ref=version,
                by=by,
                justification=justification,
                override=override,
            )
        except ValidationError as exc:
            raise config_error(exc) from exc
        info = self.get(request.ref)
        try:
            previous: str | None = self.alias(request.alias).version
        except AliasNotFound:
            previous = None
        outcome: GateDecision | None = None
        if request.alias in GATED_ALIASES:
            report = self._read_verified(info, FAIRNESS) if FAIRNESS in info.files else None
            outcome = check_promotion(version=info.version, fairness_report=report, gate=gate)
            if not outcome.passed and not request.override:
                raise GateRefused(
                    gate=outcome.gate, version=info.version, reasons=list(outcome.reasons)
                )
        move = AliasMove(
            alias=request.alias,
            version=info.version,
            previous=previous,
            moved_at=self._clock().astimezone(UTC),
            by=request.by,
            justification=request.justification,
            override=outcome is not None and not outcome.passed,
            gate=outcome,
        )
        body = move.model_dump_json(indent=2).encode()
        entry = f"{move.moved_at:%Y%m%dT%H%M%S%fZ}-{move.alias}-{uuid.uuid4().hex[:8]}.json"
        storage.write_bytes(
            storage.join(self.uri, "aliases", "history", entry), body, overwrite=False
        )
        storage.write_bytes(self._alias_uri(move.alias), body)
        log.info("alias %s -> %s (was %s) by %s", move.alias, move.version, previous, move.by)
        return move

    def history(self, *, alias: str | None = None, version: str | None = None) -> list[AliasMove]:
        """Alias moves, oldest first; only those of ``alias`` and/or involving ``version``."""
        moves: list[tuple[datetime, str, AliasMove]] = []
        for item in storage.list_uris(storage.join(self.uri, "aliases", "history")):
            move = AliasMove.model_validate_json(storage.read_bytes(item))
            if alias is not None and move.alias != alias:
                continue
            if version is not None and version not in (move.version, move.previous):
                continue
            moves.append((move.moved_at, item, move))
        return [move for _, _, move in sorted(moves, key=lambda m: (m[0], m[1]))]
