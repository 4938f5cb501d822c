"""Records of the model registry: what is stored as JSON and what callers get back.

Pydantic models are the on-disk (and CLI) boundary and refuse unknown fields:
:class:`Manifest` (``versions/<id>/MANIFEST.json``), :class:`AliasMove` (one alias
file, and one entry of the alias log) and :class:`AliasRequest` (the arguments of an
alias move). Callers get :class:`VersionInfo`, a frozen dataclass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from attune.errors import ConfigError
from attune.governance.gates.decision import GateDecision

#: Aliases that may point at a version. ``champion`` and ``canary`` take live traffic.
ALIASES: tuple[str, ...] = ("champion", "canary", "shadow")
AliasName = Literal["champion", "canary", "shadow"]

MANIFEST = "MANIFEST.json"
#: ``v<UTC date>-<UTC time>-<first 6 hex digits of the content hash>``; sorts by time.
VERSION_ID = re.compile(r"^v\d{8}-\d{6}-[0-9a-f]{6}$")
#: Relative file names, optionally in sub-folders; no ``..``, no hidden or absolute paths.
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")

#: The files of a model version as the training stage writes them (see docs/contracts.md §4).
MODEL_ONNX = "model.onnx"
MODEL_NATIVE = "model.ubj"
FEATURE_SPEC = "feature_spec.json"
PARAMS = "params.json"
METRICS = "metrics.json"
PARITY = "parity.json"
LINEAGE = "lineage.json"
FAIRNESS = "fairness.json"
EXPLANATIONS = "explanations.json"
DRIFT_REFERENCE = "drift_reference.json"
MODEL_CARD = "model_card.md"
GOVERNANCE = "governance.json"


def check_file_name(name: str) -> str:
    """Return ``name`` when it may be stored in a version; raise ConfigError otherwise."""
    if name == MANIFEST:
        raise ConfigError(field="files", value=name, problem="is reserved for the registry")
    if not FILE_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ConfigError(
            field="files",
            value=name,
            problem="must be a relative name of letters, digits, '.', '_', '-' and '/'",
        )
    return name


def config_error(exc: ValidationError) -> ConfigError:
    """The first problem of a pydantic ValidationError as a ConfigError naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(model)"
    return ConfigError(field=field, value=first.get("input"), problem=first["msg"])


def _require_justification(*, override: bool, justification: str | None) -> None:
    """An override must say why (a blank justification is none)."""
    if override and not (justification or "").strip():
        raise ValueError(
            f"override ({override}) requires a justification (got justification={justification!r})"
        )


class FileEntry(BaseModel):
    """Size and sha256 of one stored file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the content.")
    size: int = Field(ge=0, description="Size in bytes.")


class Manifest(BaseModel):
    """``MANIFEST.json``: written last; a version exists iff its manifest does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = Field(default=1, description="Manifest format version.")
    version: str = Field(pattern=VERSION_ID.pattern, description="The version id.")
    created_at: datetime = Field(description="When the version was registered (UTC).")
    content_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 over file hashes and metadata."
    )
    files: dict[str, FileEntry] = Field(min_length=1, description="Every file but the manifest.")
    metadata: dict[str, Any] = Field(description="Caller-supplied JSON metadata.")

    @field_validator("files")
    @classmethod
    def _names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            check_file_name(name)
        return files


class AliasMove(BaseModel):
    """One alias move: the content of ``aliases/<alias>.json`` and one alias-log entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: AliasName = Field(description="The alias that moved.")
    version: str = Field(pattern=VERSION_ID.pattern, description="Version it points at now.")
    previous: str | None = Field(description="Version it pointed at before, if any.")
    moved_at: datetime = Field(description="When it moved (UTC).")
    by: str = Field(min_length=1, description="Who moved it.")
    justification: str | None = Field(default=None, description="Why (required to override).")
    override: bool = Field(
        default=False, description="True when this move overrode a gate refusal."
    )
    gate: GateDecision | None = Field(default=None, description="The gate's verdict, if gated.")

    @field_serializer("gate")
    def _gate_record(self, gate: GateDecision | None) -> dict[str, Any] | None:
        # An alias file keeps gate, passed and reasons of the verdict (format 1).
        return None if gate is None else gate.record()

    @model_validator(mode="after")
    def _override_is_justified(self) -> AliasMove:
        _require_justification(override=self.override, justification=self.justification)
        return self


class AliasRequest(BaseModel):
    """Arguments of an alias move (CLI and library)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: AliasName = Field(description="champion, canary or shadow.")
    ref: str = Field(min_length=1, description="Version id, or an alias to copy from.")
    by: str = Field(min_length=1, description="Who is moving the alias.")
    justification: str | None = Field(default=None, description="Why; required with override.")
    override: bool = Field(default=False, description="Move even if the gate refuses.")

    @model_validator(mode="after")
    def _override_is_justified(self) -> AliasRequest:
        _require_justification(override=self.override, justification=self.justification)
        return self


@dataclass(frozen=True)
class VersionInfo:
    """One complete registry version, as its manifest describes it."""

    version: str
    created_at: datetime
    uri: str
    content_hash: str
    files: Mapping[str, FileEntry]
    metadata: Mapping[str, Any]

    @property
    def size(self) -> int:
        """Total bytes of the version's files."""
        return sum(entry.size for entry in self.files.values())

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, uri: str) -> VersionInfo:
        return cls(
            version=manifest.version,
            created_at=manifest.created_at,
            uri=uri,
            content_hash=manifest.content_hash,
            files=dict(manifest.files),
            metadata=dict(manifest.metadata),
        )
