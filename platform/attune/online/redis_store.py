"""The online store on the Redis protocol (Redis, Valkey or a managed service).

Keyspace, under ``<prefix>:<spec_hash>`` (the *root*; one per feature spec)::

    <root>:current                  id of the snapshot served (the pointer)
    <root>:next                     id of the snapshot being built (while materializing)
    <root>:<snapshot>:meta          JSON: as_of, horizon_days, borrowers, defaults
    <root>:<snapshot>:b:<borrower>  the borrower's packed state (attune.online.state)
    <root>:<snapshot>:seen:<borrower>   set of posted event ids (expires after the horizon)
    <root>:<next>:replay            events posted while <next> is built (5 fields each)

Writes. ``attune features materialize`` (:mod:`attune.online.snapshot`) marks a
snapshot as *next*, writes every borrower's state into its keyspace from Ray Data
workers (pipelined ``SET``), then commits: one script replays the events posted since
*next* was marked (those at or after the snapshot time: the snapshot holds the ones
before it), moves ``current`` and forgets *next*, so a reader sees the old keyspace or
the new one, whole. The old keyspace then expires (``EXPIRE``, after a grace period
for readers still holding the old pointer).

``POST /v1/events`` runs one script per request: for each event, ``SADD`` its id to the
borrower's seen set (a duplicate stops there), create the state of a borrower the
snapshot does not know, ``APPEND`` the event's record, and, while a snapshot is being
built, queue it for that snapshot's replay. The script resolves ``current`` itself, so
it is atomic with a commit. Readers cache the pointer for ``pointer_ttl_s``.

Failure: every Redis error on the request path becomes :class:`Unavailable` (503 with
``Retry-After``) within the client's timeouts; nothing waits on a dead server.
Cluster mode is not supported: the scripts compute key names from the pointer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from attune.data.spec import BORROWER_FEATURES
from attune.errors import Conflict, InvalidInput, Unavailable
from attune.online import state as packed

#: Key prefix of every online key.
PREFIX = "attune:online"
#: Seconds the old keyspace lives after a commit (readers refresh the pointer sooner).
OLD_KEYSPACE_TTL_S = 120
#: Longest a snapshot may stay "next" before another materialization may take over.
BUILD_TTL_S = 6 * 3600
_DAY_S = 86_400

_APPLY_ONE = """
local function apply(ns, bid, eid, rec, header, ttl)
  local seen = ns .. ':seen:' .. bid
  if redis.call('SADD', seen, eid) == 0 then return 0 end
  redis.call('EXPIRE', seen, ttl)
  local key = ns .. ':b:' .. bid
  local status = 1
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, header)
    status = 2
  elseif string.byte(redis.call('GETRANGE', key, 1, 1)) == 0 then
    status = 2  -- flags byte without HAS_PROFILE: a borrower the snapshot does not know
  end
  redis.call('APPEND', key, rec)
  return status
end
"""
# KEYS: current, next. ARGV: root, ttl, then (borrower, event id, ts µs, record, header)*.
# Returns one status per event: 0 duplicate, 1 applied, 2 applied to a borrower the
# snapshot does not know;
# or {-1} when no snapshot is served.
_APPLY = (
    _APPLY_ONE
    + """
local sid = redis.call('GET', KEYS[1])
if not sid then return {-1} end
local nxt = redis.call('GET', KEYS[2])
local root, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 5 do
  local s = apply(root .. ':' .. sid, ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], ttl)
  if nxt and nxt ~= sid and s > 0 then
    redis.call('RPUSH', root .. ':' .. nxt .. ':replay',
               ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  end
  out[#out + 1] = s
end
return out
"""
)
# No KEYS. ARGV: keyspace, ttl, then (borrower, event id, ts µs, record, header)*: apply
# into one snapshot's keyspace (logged events replayed into a snapshot being built).
_APPLY_INTO = (
    _APPLY_ONE
    + """
local out = {}
for i = 3, #ARGV, 5 do
  out[#out + 1] = apply(ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4],
                        tonumber(ARGV[2]))
end
return out
"""
)
# KEYS: current, next. ARGV: root, snapshot id, as_of µs, ttl. Returns {old id or '', replayed}.
_COMMIT = (
    _APPLY_ONE
    + """
local root, sid, as_of, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('GET', KEYS[2]) ~= sid then
  return redis.error_reply('snapshot ' .. sid .. ' is not the one being built')
end
local ns = root .. ':' .. sid
local items = redis.call('LRANGE', ns .. ':replay', 0, -1)
local replayed = 0
for i = 1, #items, 5 do
  if tonumber(items[i + 2]) >= as_of then
    if apply(ns, items[i], items[i + 1], items[i + 3], items[i + 4], ttl) > 0 then
      replayed = replayed + 1
    end
  end
end
redis.call('DEL', ns .. ':replay')
local old = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], sid)
redis.call('DEL', KEYS[2])
return {old, replayed}
"""
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """An aware time as integer µs since the epoch (exact: no float on the way)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def root_key(spec_hash: str, prefix: str = PREFIX) -> str:
    """The root of one feature spec's keys."""
    return f"{prefix}:{spec_hash}"


@dataclass(frozen=True)
class SnapshotMeta:
    """What a committed online snapshot is: id, time, horizon, size, population defaults."""

    snapshot_id: str
    as_of: datetime
    horizon_days: int
    borrowers: int
    defaults: dict[str, float] = field(default_factory=dict)

    @property
    def as_of_us(self) -> int:
        return micros(self.as_of)

    @property
    def cutoff_us(self) -> int:
        """Events before this are older than every window: stored, never applied."""
        return self.as_of_us - self.horizon_days * _DAY_S * 1_000_000

    def to_json(self) -> str:
        return json.dumps(
            {
                "snapshot_id": self.snapshot_id,
                "as_of": self.as_of.isoformat(),
                "horizon_days": self.horizon_days,
                "borrowers": self.borrowers,
                "defaults": self.defaults,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> SnapshotMeta:
        data = json.loads(raw)
        return cls(
            snapshot_id=str(data["snapshot_id"]),
            as_of=datetime.fromisoformat(data["as_of"]),
            horizon_days=int(data["horizon_days"]),
            borrowers=int(data["borrowers"]),
            defaults={k: float(v) for k, v in data["defaults"].items()},
        )


def _client_options(timeout_s: float, *, asyncio: bool = False) -> dict[str, Any]:
    from redis.backoff import NoBackoff

    if asyncio:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry  # type: ignore[assignment]

    # One quick retry at most: a request must fail fast (503) rather than wait on a dead server.
    return {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
    }


def unavailable(exc: Exception, url: str) -> Unavailable:
    """The error a caller sees when the online store cannot be reached."""
    return Unavailable(
        f"online store unavailable ({type(exc).__name__}: {exc}); retry after a second",
        store=_redact(url),
    )


def _redact(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


# --------------------------------------------------------------------------- writing


class SnapshotWriter:
    """Writes borrower states into a snapshot's keyspace (picklable: Ray Data workers).

    Connects lazily in the process that writes; ``write`` pipelines ``SET`` commands in
    chunks of ``chunk`` (no transaction: the keyspace is invisible until the commit).
    """

    def __init__(
        self, url: str, *, spec_hash: str, snapshot_id: str, prefix: str = PREFIX, chunk: int = 2000
    ) -> None:
        self.url, self.spec_hash, self.snapshot_id = url, spec_hash, snapshot_id
        self.prefix, self.chunk = prefix, chunk
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, **_client_options(30.0))
        return self._client

    def key(self, borrower_id: int) -> str:
        return f"{root_key(self.spec_hash, self.prefix)}:{self.snapshot_id}:b:{borrower_id}"

    def write(self, items: Iterable[tuple[int, bytes]]) -> int:
        """SET each (borrower id, packed state); returns how many were written."""
        client, written = self._redis(), 0
        pipe = client.pipeline(transaction=False)
        for borrower_id, blob in items:
            pipe.set(self.key(borrower_id), blob)
            written += 1
            if written % self.chunk == 0:
                pipe.execute()
        pipe.execute()
        return written


class SnapshotKeyspace:
    """The driver's side of a materialization: begin, write meta, commit, expire the old.

    Synchronous (a job, not a replica). Raises :class:`Conflict` when another snapshot
    is being built and :class:`Unavailable` when Redis cannot be reached.
    """

    def __init__(self, url: str, *, spec_hash: str, prefix: str = PREFIX) -> None:
        import redis

        self.url, self.spec_hash, self.prefix = url, spec_hash, prefix
        self.root = root_key(spec_hash, prefix)
        self._redis = redis.Redis.from_url(url, **_client_options(30.0))

    def writer(self, snapshot_id: str) -> SnapshotWriter:
        return SnapshotWriter(
            self.url, spec_hash=self.spec_hash, snapshot_id=snapshot_id, prefix=self.prefix
        )

    def begin(self, snapshot_id: str) -> None:
        """Mark ``snapshot_id`` as being built: posted events queue for its replay from now."""
        import redis

        try:
            if not self._redis.set(f"{self.root}:next", snapshot_id, nx=True, ex=BUILD_TTL_S):
                raw = self._redis.get(f"{self.root}:next")
                other = _text(raw) if raw is not None else None
                raise Conflict(
                    f"snapshot {other!r} is being built into the online store; retry when it "
                    f"is committed (or after {BUILD_TTL_S} s)",
                    building=other,
                )
        except redis.RedisError as exc:
            raise unavailable(exc, self.url) from exc

    def abort(self, snapshot_id: str) -> None:
        """Forget a snapshot that will not be committed (its keys expire)."""
        if self._redis.get(f"{self.root}:next") in (snapshot_id, snapshot_id.encode()):
            self._redis.delete(f"{self.root}:next")
        self.expire(snapshot_id, 0)

    def apply_into(self, meta: SnapshotMeta, events: Sequence[Any], chunk: int = 500) -> int:
        """Apply events (ServicingEvent-like) to a snapshot being built; returns how many
        were new. Used for the durable log's events dated at or after the snapshot time."""
        new = 0
        for at in range(0, len(events), chunk):
            args, _ = _apply_args(events[at : at + chunk], meta.cutoff_us)
            if not args:
                continue
            result = self._redis.eval(
                _APPLY_INTO,
                0,
                f"{self.root}:{meta.snapshot_id}",
                str(meta.horizon_days * _DAY_S),
                *args,
            )
            new += sum(1 for code in result if int(code) > 0)
        return new

    def remember(self, meta: SnapshotMeta, posted: Iterable[tuple[int, str]]) -> int:
        """Add (borrower id, event id) pairs to a snapshot's seen sets: events the snapshot
        holds from the durable log, so that a client's retry of one is a duplicate."""
        import redis

        ns, ttl, count = f"{self.root}:{meta.snapshot_id}", meta.horizon_days * _DAY_S, 0
        try:
            pipe = self._redis.pipeline(transaction=False)
            for borrower_id, event_id in posted:
                pipe.sadd(f"{ns}:seen:{borrower_id}", event_id)
                pipe.expire(f"{ns}:seen:{borrower_id}", ttl)
                count += 1
                if count % 5000 == 0:
                    pipe.execute()
            pipe.execute()
        except redis.RedisError as exc:
            raise unavailable(exc, self.url) from exc
        return count

    def commit(self, meta: SnapshotMeta) -> tuple[str | None, int]:
        """Write ``meta``, replay events posted meanwhile, switch the pointer (atomically).

        Returns (the previous snapshot id or None, events replayed).
        """
        import redis

        ns = f"{self.root}:{meta.snapshot_id}"
        try:
            self._redis.set(f"{ns}:meta", meta.to_json())
            old, replayed = self._commit(meta)
        except redis.ResponseError as exc:  # the script refused: not the snapshot being built
            raise Conflict(str(exc), snapshot_id=meta.snapshot_id) from exc
        except redis.RedisError as exc:
            raise unavailable(exc, self.url) from exc
        old_id = _text(old)
        return (old_id or None), int(replayed)

    def _commit(self, meta: SnapshotMeta) -> Any:
        return self._redis.eval(
            _COMMIT,
            2,
            f"{self.root}:current",
            f"{self.root}:next",
            self.root,
            meta.snapshot_id,
            str(meta.as_of_us),
            str(meta.horizon_days * _DAY_S),
        )

    def expire(self, snapshot_id: str, ttl_s: int = OLD_KEYSPACE_TTL_S) -> int:
        """Let every key of a snapshot expire in ``ttl_s`` (0: delete now); returns the count."""
        pipe, count = self._redis.pipeline(transaction=False), 0
        for key in self._redis.scan_iter(match=f"{self.root}:{snapshot_id}:*", count=5000):
            if ttl_s:
                pipe.expire(key, ttl_s)
            else:
                pipe.delete(key)
            count += 1
            if count % 5000 == 0:
                pipe.execute()
        pipe.execute()
        return count

    def current(self) -> SnapshotMeta | None:
        sid = self._redis.get(f"{self.root}:current")
        if sid is None:
            return None
        raw = self._redis.get(f"{self.root}:{_text(sid)}:meta")
        return SnapshotMeta.from_json(raw) if raw is not None else None

    def memory_per_borrower(self, sample: int = 200) -> float:
        """Mean ``MEMORY USAGE`` of up to ``sample`` borrower keys of the served snapshot."""
        meta = self.current()
        if meta is None:
            return float("nan")
        sizes = []
        for key in self._redis.scan_iter(match=f"{self.root}:{meta.snapshot_id}:b:*", count=1000):
            sizes.append(int(self._redis.memory_usage(key, samples=0) or 0))
            if len(sizes) >= sample:
                break
        return float(np.mean(sizes)) if sizes else float("nan")

    def close(self) -> None:
        self._redis.close()


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class OnlineLookup:
    """One borrower's features as of ``as_of`` and where they came from.

    ``fallback`` is None for a borrower the snapshot knows, ``"unknown_borrower"`` when
    the store has nothing on them (population defaults: the snapshot's medians), and
    ``"no_profile"`` when only posted events are known (their loan and income features
    take :data:`attune.data.features.MISSING`).
    """

    borrower_id: int
    as_of: datetime
    snapshot_id: str
    spec_hash: str
    fallback: str | None
    values: np.ndarray  # float32, BORROWER_FEATURES order

    @property
    def features(self) -> dict[str, float]:
        return dict(zip(BORROWER_FEATURES, self.values.tolist(), strict=True))


#: What happened to a posted event.
STATUSES = ("applied", "duplicate", "unknown_borrower", "stale")


class RedisOnlineStore:
    """Online features read and written straight from a replica (asyncio, hiredis).

    One connection pool per replica (``max_connections``); the pointer and the
    snapshot's meta are cached for ``pointer_ttl_s``. Satisfies
    :class:`attune.online.OnlineStore`.
    """

    def __init__(
        self,
        url: str,
        *,
        spec_hash: str,
        prefix: str = PREFIX,
        timeout_s: float = 0.5,
        max_connections: int = 64,
        pointer_ttl_s: float = 1.0,
    ) -> None:
        import redis.asyncio as aioredis

        self.url, self.spec_hash = url, spec_hash
        self.root = root_key(spec_hash, prefix)
        self._redis = aioredis.Redis.from_url(
            url, max_connections=max_connections, **_client_options(timeout_s, asyncio=True)
        )
        self._apply = self._redis.register_script(_APPLY)
        self._pointer_ttl_s = pointer_ttl_s
        self._meta: SnapshotMeta | None = None
        self._checked = -float("inf")

    async def close(self) -> None:
        await self._redis.aclose()

    async def snapshot(self) -> SnapshotMeta:
        """The served snapshot's meta (cached); Unavailable when there is none or no server."""
        import redis

        now = time.monotonic()
        if self._meta is None or now - self._checked >= self._pointer_ttl_s:
            try:
                sid = await self._redis.get(f"{self.root}:current")
                raw = (
                    None if sid is None else await self._redis.get(f"{self.root}:{_text(sid)}:meta")
                )
            except redis.RedisError as exc:
                raise unavailable(exc, self.url) from exc
            if raw is None:
                raise Unavailable(
                    f"no online snapshot of feature spec {self.spec_hash} in the online store "
                    "(run `attune features materialize`)",
                    spec_hash=self.spec_hash,
                )
            self._meta, self._checked = SnapshotMeta.from_json(raw), now
        return self._meta

    async def lookup(
        self, borrower_id: int, *, spec_hash: str | None = None, as_of: datetime | None = None
    ) -> OnlineLookup:
        """A borrower's features as of ``as_of`` (default now), from the served snapshot.

        With ``spec_hash`` (the served model's), another spec is refused with
        :class:`Unavailable` naming both hashes; a time before the snapshot is
        :class:`InvalidInput` (the snapshot compacted what came before).
        """
        import redis

        if spec_hash is not None and spec_hash != self.spec_hash:
            raise Unavailable(
                f"the online store serves feature spec {self.spec_hash}, the model needs "
                f"{spec_hash}: materialize a snapshot of that spec",
                expected=spec_hash,
                actual=self.spec_hash,
            )
        meta = await self.snapshot()
        when = as_of or datetime.now(UTC)
        when_us = micros(when)
        if when_us < meta.as_of_us:
            raise InvalidInput(
                f"as_of {when.isoformat()} is before the online snapshot "
                f"({meta.as_of.isoformat()}): ask for a later time",
                field="as_of",
                value=when.isoformat(),
            )
        try:
            raw = await self._redis.get(f"{self.root}:{meta.snapshot_id}:b:{borrower_id}")
        except redis.RedisError as exc:
            raise unavailable(exc, self.url) from exc
        if raw is None:
            values = np.array([meta.defaults.get(n, 0.0) for n in BORROWER_FEATURES], np.float32)
            fallback: str | None = "unknown_borrower"
        else:
            state = packed.decode(raw if isinstance(raw, bytes) else raw.encode("latin-1"))
            values = packed.features([state], np.array([when_us], dtype=np.int64))[0]
            fallback = None if state.has_profile else "no_profile"
        return OnlineLookup(
            borrower_id=borrower_id,
            as_of=when,
            snapshot_id=meta.snapshot_id,
            spec_hash=self.spec_hash,
            fallback=fallback,
            values=values,
        )

    async def apply(self, events: Sequence[Any]) -> tuple[list[str], str]:
        """Apply posted events atomically (one script); returns each one's status and the
        snapshot id. ``events`` are :class:`attune.online.events.ServicingEvent`-like.
        """
        import redis

        meta = await self.snapshot()
        statuses: list[str] = ["stale"] * len(events)
        args, sent = _apply_args(events, meta.cutoff_us)
        if not sent:
            return statuses, meta.snapshot_id
        try:
            result = await self._apply(
                keys=[f"{self.root}:current", f"{self.root}:next"],
                args=[self.root, str(meta.horizon_days * _DAY_S), *args],
            )
        except redis.RedisError as exc:
            raise unavailable(exc, self.url) from exc
        if result == [-1]:
            self._meta = None
            raise Unavailable("the online snapshot disappeared: materialize again")
        names = {0: "duplicate", 1: "applied", 2: "unknown_borrower"}
        for i, code in zip(sent, result, strict=True):
            statuses[i] = names[int(code)]
        return statuses, meta.snapshot_id


def _apply_args(events: Sequence[Any], cutoff_us: int) -> tuple[list[Any], list[int]]:
    """The scripts' 5 arguments per event not older than ``cutoff_us``, and their indices."""
    args: list[Any] = []
    sent: list[int] = []
    for i, event in enumerate(events):
        us = micros(event.ts)
        if us < cutoff_us:
            continue
        sent.append(i)
        args += [str(event.borrower_id), event.event_id, str(us), _record(event, us),
                 packed.no_profile()]  # fmt: skip
    return args, sent


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(event: Any, us: int) -> bytes:
    from attune.data.schema import CHANNELS, EVENT_TYPES

    kind = EVENT_TYPES.index(event.event_type)
    channel = CHANNELS.index(event.channel) if isinstance(event.channel, str) else -1
    amount = event.amount if event.amount is not None and event.amount > 0 else 0.0
    codes = packed.encode_codes(np.array([kind], np.int8), np.array([channel], np.int8))
    cents = np.array([round(amount * 100.0)], dtype=np.int64)
    return packed.records(np.array([us], np.int64), codes, cents)
