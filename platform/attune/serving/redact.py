"""Error bodies without store locations: what failed, never where the store lives.

An :class:`~attune.errors.AttuneError` keeps the offending values (bucket URIs,
registry paths, Redis URLs) for logs and the CLI. Over HTTP those values would tell a
caller the layout of the artifact store; :func:`redact_locations` replaces every
``scheme://...`` URI and absolute filesystem path in a JSON body with ``<redacted>``.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
#: URIs with a scheme (s3://bucket/key, redis://host, file:///x) and absolute paths
#: (/var/…, C:\…); a bare "/" or an API route like /v1/rank is kept.
_LOCATION = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"),;]*"
    r"|(?<![\w/])/(?!v\d+/)(?:[\w.@~-]+/)+[\w.@~-]*"
    r"|\b[A-Za-z]:\\[^\s'\"]*"
)


def redact_locations(value: Any) -> Any:
    """``value`` (a JSON-like tree) with every URI and absolute path replaced."""
    if isinstance(value, str):
        return _LOCATION.sub(REDACTED, value)
    if isinstance(value, dict):
        return {key: redact_locations(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_locations(item) for item in value]
    return value
