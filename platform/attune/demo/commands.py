"""CLI sub-commands of this stage (registered by :mod:`attune.cli`)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    del subparsers
