"""The model registry: immutable versions and movable aliases (local or s3://).

See :mod:`attune.registry.store` for the layout and guarantees and docs/registry.md.
"""

from attune.registry.models import ALIASES, AliasMove, VersionInfo
from attune.registry.store import Registry

__all__ = ["ALIASES", "AliasMove", "Registry", "VersionInfo"]
