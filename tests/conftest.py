"""Shared fixtures: seeded randomness, a real Redis server and small helpers (no Ray here)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

if TYPE_CHECKING:
    from attune.online.server import RedisServer


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WaitAborted(AssertionError):
    """Raised by a :func:`wait_for` condition that can never come true (a crashed helper
    process): ``wait_for`` re-raises it at once instead of waiting out its timeout."""


def wait_for(
    condition: Callable[[], object], *, timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> object:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes (then fail).

    Exceptions of the condition count as "not yet" (the thing may still be starting),
    except :class:`WaitAborted`, which ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except WaitAborted:
            raise
        except Exception as exc:  # the condition may fail while the thing starts
            last_exc = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or condition}: {last_exc}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (tests get it empty through ``redis_url``)."""
    from tests.redisserver import start_redis_server  # it imports this module

    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL after ``FLUSHALL``: every test starts with an empty Redis."""
    if not redis_server.running:  # a test stopped or killed it
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url


_EXIT_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS["status"] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter teardown once Ray has run in this process.

    Ray's background threads (Ray Data's stats reporter, Serve's long-poll clients) can
    outlive ray.shutdown() and crash the interpreter while it tears modules down, after
    every result is decided and reported; exit with the session's own status instead.
    """
    import os
    import sys

    ray = sys.modules.get("ray")
    if "status" in _EXIT_STATUS and ray is not None and getattr(ray, "__version__", None):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS["status"])
