"""Online features: every borrower's state in a shared Redis-protocol store.

The interface every caller uses is :class:`OnlineStore`: the ranking ingress looks a
borrower up by id (features as of now, computed by the one feature kernel,
:func:`attune.data.features.feature_kernel`) and applies posted servicing events; the
implementation is :class:`~attune.online.redis_store.RedisOnlineStore`, read straight
from every ingress replica (no extra Serve hop on the ranking path).

Modules: :mod:`~attune.online.state` (a borrower's packed bytes),
:mod:`~attune.online.redis_store` (keyspace, scripts, reads and writes),
:mod:`~attune.online.snapshot` (Ray Data → the store, pointer switch),
:mod:`~attune.online.events` (the events API and the durable event log),
:mod:`~attune.online.ingest` (posting events, with a backlog while the store is down),
:mod:`~attune.online.server` (a local ``redis-server`` process),
:mod:`~attune.online.deployment` (the local server as a Serve deployment).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from attune.online.redis_store import OnlineLookup, SnapshotMeta


class OnlineStore(Protocol):
    """Online borrower state: look-ups by id and posted events (asyncio)."""

    async def lookup(
        self, borrower_id: int, *, spec_hash: str | None = None, as_of: datetime | None = None
    ) -> OnlineLookup:
        """Features as of ``as_of`` (default now); Unavailable when the store is down."""
        ...

    async def apply(self, events: list[Any]) -> tuple[list[str], str]:
        """Apply events idempotently; (status per event, snapshot id)."""
        ...

    async def snapshot(self) -> SnapshotMeta:
        """The served snapshot."""
        ...


__all__ = ["OnlineStore"]
