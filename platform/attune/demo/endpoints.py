"""The served app as the learning loop drives it (:class:`attune.demo.loop.Endpoint`).

* :class:`HttpEndpoint`: the running Serve app over HTTP; rollouts go through the app's
  declarative config (the path ``attune rollout`` takes).
* :class:`LocalEndpoint`: the same :class:`attune.serving.service.RankingService`, decision
  log and event log in this process, for seeded benchmark runs without Ray.

Both write to the same store layout, so ``attune outcomes`` and the off-policy gate read
them the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.dataset as pads

from attune import storage
from attune.data.materialize import ONLINE_EVENTS_DIR
from attune.online.events import EventLog, ServicingEvent, events_frame
from attune.serving.api import RankRequest
from attune.serving.config import RolloutConfig
from attune.serving.decision_log import DecisionLog, ParquetSink

_EVENTS_PER_POST = 500


def _rows(uri: str) -> int:
    if not storage.list_uris(uri):
        return 0
    fs, path = storage.pyarrow_filesystem(uri)
    return int(
        pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").count_rows()
    )


class LocalEndpoint:
    """The ranking service in this process (no Ray, no HTTP), writing to ``store``."""

    def __init__(self, *, registry: Any, store: str, borrower_salt: str, seed: int = 0) -> None:
        from attune.serving.service import RankingService

        self.store = store
        self._log = DecisionLog(sink=ParquetSink(store), writer_id="loop", max_batch=10_000)
        self._events = EventLog(store, writer_id="loop", max_buffer=10_000_000)
        self._registry = registry
        self._salt = borrower_salt
        self._seed = seed
        self._service: RankingService | None = None

    def apply(self, rollout: RolloutConfig) -> None:
        from attune.serving.service import RankingService

        if self._service is None:
            self._service = RankingService(
                store=self._registry,
                rollout=rollout,
                decision_log=self._log,
                borrower_salt=self._salt,
                exploration_seed=self._seed,
            )
        else:
            self._service.apply(rollout)

    def rank(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._service is not None, "apply a rollout first"
        service = self._service

        async def all_of() -> list[dict[str, Any]]:
            answers = []
            for body in bodies:
                answer = await service.rank(RankRequest.model_validate(body))
                answers.append(answer.model_dump(mode="json"))
            service.run_background(max_jobs=10_000)
            return answers

        return asyncio.run(all_of())

    def post_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            parsed = [ServicingEvent.model_validate(e) for e in events]
            self._events.append(events_frame(parsed))

    def flush(self) -> None:
        self._log.flush()
        self._events.flush()


class HttpEndpoint:
    """The running app at ``base`` (``http://host:port``), deployed as ``app``."""

    def __init__(self, *, base: str, store: str, app: str, concurrency: int = 4) -> None:
        self.store, self.base, self.app, self.concurrency = store, base, app, concurrency
        self._decisions = storage.join(store, "decisions")
        self._events = storage.join(store, ONLINE_EVENTS_DIR)
        self._answered = _rows(self._decisions)  # what earlier traffic left in the store
        self._posted = _rows(self._events)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def apply(self, rollout: RolloutConfig) -> None:
        from attune.serving.rollout import update_rollout
        from attune.serving.traffic_split import salt_fingerprint

        update_rollout(self.app, lambda _: rollout)
        deadline = time.monotonic() + 120
        while self._call("GET", "/v1/models")["salt_fingerprint"] != salt_fingerprint(rollout.salt):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout {rollout.salt!r} did not reach the replicas")
            time.sleep(0.25)

    def rank(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(lambda b: self._call("POST", "/v1/rank", b), bodies))
        self._answered += len(answers)
        return answers

    def post_events(self, events: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(events), _EVENTS_PER_POST):
            batch = list(events[start : start + _EVENTS_PER_POST])
            self._call("POST", "/v1/events", {"events": batch})
        self._posted += len(events)

    def flush(self) -> None:
        """Wait (deadline 120 s) until the store holds every decision and event sent."""
        deadline = time.monotonic() + 120
        while _rows(self._decisions) < self._answered or _rows(self._events) < self._posted:
            if time.monotonic() > deadline:
                raise TimeoutError("the decision or event log did not reach the store")
            time.sleep(0.5)
