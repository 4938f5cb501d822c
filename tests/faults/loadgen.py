"""A small, bounded HTTP load generator for the fault suite (stdlib only, loopback only).

Run as a separate process so that the faults hit the server, not the client::

    python -m tests.faults.loadgen --url http://127.0.0.1:8000/faults \\
        --bodies bodies.json --out counts.json --stop-file stop --rate 20

It posts ``/v1/rank`` bodies (taken in turn from ``--bodies``, each with a fresh random
``borrower_id``) from ``--concurrency`` threads, each with its own keep-alive
connection, at about ``--rate`` requests per second in total, until ``--stop-file``
appears, ``--max-requests`` were sent or ``--max-seconds`` passed. It follows the
client contract of docs/reliability.md: a request that got no answer (connection
dropped) or a 500/502/503/504 is retried once, after ``Retry-After`` seconds when the
server sent one (at most 2 s), else after 0.2 s; 4xx answers are never retried.

``--out`` is rewritten (atomically) every 0.25 s and at the end with the counts::

    {"sent", "ok", "failed": {status: n}, "first_failed": {status: n}, "retried",
     "retried_ok", "models": {version: n}, "arms": {arm: n}, "retry_after": [s, ...],
     "decisions": [[sent_at, decision_id, arm], ...], "started_at", "finished_at", "done"}

``failed`` counts requests whose retry failed too (what a client finally sees);
``first_failed`` counts first attempts that failed, by status (-1: no answer).
``decisions`` holds the send time (Unix seconds), decision id and arm of every answered
request, so a test can compare what was served with what was logged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RETRYABLE = frozenset({500, 502, 503, 504, -1})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = self.ok = self.retried = self.retried_ok = 0
        self.failed: Counter[int] = Counter()
        self.first_failed: Counter[int] = Counter()
        self.models: Counter[str] = Counter()
        self.arms: Counter[str] = Counter()
        self.retry_after: list[float] = []
        self.decisions: list[tuple[float, str, str]] = []

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sent": self.sent,
                "ok": self.ok,
                "failed": {str(k): v for k, v in sorted(self.failed.items())},
                "first_failed": {str(k): v for k, v in sorted(self.first_failed.items())},
                "retried": self.retried,
                "retried_ok": self.retried_ok,
                "models": dict(self.models),
                "arms": dict(self.arms),
                "retry_after": list(self.retry_after),
                "decisions": [list(d) for d in self.decisions],
            }


class _Client:
    """One keep-alive connection; reconnects after any failure."""

    def __init__(self, host: str, port: int, prefix: str, timeout: float) -> None:
        self.host, self.port, self.prefix, self.timeout = host, port, prefix, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        """Status (-1 when no answer came), headers and body of one POST."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request(
                "POST", self.prefix + path, payload, {"Content-Type": "application/json"}
            )
            response = self.conn.getresponse()
            body = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            if headers.get("connection", "").lower() == "close":
                self.close()
            return response.status, headers, body
        except (OSError, http.client.HTTPException):
            self.close()
            return -1, {}, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _retry_delay(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(2.0, max(0.0, float(value)))
    except ValueError:
        return None


def _worker(
    args: argparse.Namespace,
    bodies: list[dict[str, Any]],
    counts: _Counts,
    stop: threading.Event,
    seed: int,
) -> None:
    url = urlsplit(args.url)
    client = _Client(url.hostname or "", url.port or 80, url.path.rstrip("/"), args.timeout)
    rng = random.Random(seed)
    interval = args.concurrency / args.rate
    next_at = time.monotonic() + rng.uniform(0, interval)
    i = seed
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_at = max(next_at + interval, time.monotonic())
        with counts.lock:
            if counts.sent >= args.max_requests:
                stop.set()
                break
            counts.sent += 1
        body = dict(bodies[i % len(bodies)], borrower_id=rng.randrange(0, 2**62))
        i += args.concurrency
        payload = json.dumps(body).encode()
        sent_at = time.time()
        status, response_headers, raw = client.post("/v1/rank", payload)
        retried = False
        if status in RETRYABLE:
            with counts.lock:
                counts.first_failed[status] += 1
                counts.retried += 1
            wait = _retry_delay(response_headers)
            if wait is not None:
                with counts.lock:
                    counts.retry_after.append(wait)
            stop.wait(0.2 if wait is None else wait)
            retried = True
            sent_at = time.time()
            status, response_headers, raw = client.post("/v1/rank", payload)
        with counts.lock:
            if status == 200:
                answer = json.loads(raw)
                counts.ok += 1
                counts.retried_ok += retried
                counts.models[answer["model_version"]] += 1
                counts.arms[answer["arm"]] += 1
                counts.decisions.append((sent_at, answer["decision_id"], answer["arm"]))
            else:
                counts.failed[status] += 1
    client.close()


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Send load as ``args`` say; returns the final counts (also written to ``args.out``)."""
    host = urlsplit(args.url).hostname
    if host not in _LOOPBACK:
        raise SystemExit(f"--url must point at loopback (127.0.0.1), not {host!r}")
    bodies = json.loads(Path(args.bodies).read_text())
    counts, stop = _Counts(), threading.Event()
    out, stop_file = Path(args.out), Path(args.stop_file)
    started = time.time()
    threads = [
        threading.Thread(target=_worker, args=(args, bodies, counts, stop, args.seed + n))
        for n in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set():
        if stop_file.exists() or time.monotonic() > deadline:
            stop.set()
            break
        _write(out, {**counts.snapshot(), "started_at": started, "done": False})
        stop.wait(0.25)
    for thread in threads:
        thread.join(timeout=args.timeout * 2 + 5)
    final = {**counts.snapshot(), "started_at": started, "finished_at": time.time(), "done": True}
    _write(out, final)
    return final


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="App base URL on loopback.")
    p.add_argument("--bodies", required=True, help="JSON file: a list of /v1/rank bodies.")
    p.add_argument("--out", required=True, help="Counts JSON, rewritten while running.")
    p.add_argument("--stop-file", required=True, help="Stop when this file exists.")
    p.add_argument("--rate", type=float, default=20.0, help="Requests per second, in total.")
    p.add_argument("--concurrency", type=int, default=2, help="Client threads (connections).")
    p.add_argument("--max-requests", type=int, default=5_000, help="Stop after this many.")
    p.add_argument("--max-seconds", type=float, default=120.0, help="Stop after this long.")
    p.add_argument("--timeout", type=float, default=15.0, help="Per-request timeout (s).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the borrower ids.")
    return p


if __name__ == "__main__":
    run(_parser().parse_args())
