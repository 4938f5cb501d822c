"""Unit tests never use Ray: starting one, or talking to one that is already running.

``make test`` runs the unit and integration suites in one session, so the integration
suite's cluster may be alive while unit tests run: refusing ``ray.init`` alone would let a
unit test use that cluster through ``ray.get``, ``ray.put``, a remote call or Ray Data.
Every one of those goes through the worker's ``check_connected``, so that is refused too,
and so is the runtime context (which reads a connected worker's ids without it).
"""

from __future__ import annotations

import pytest

REFUSAL = "unit tests must not use Ray; move this test to tests/integration"


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    import ray._private.worker as worker

    def _refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(REFUSAL)

    monkeypatch.setattr(ray, "init", _refuse)
    monkeypatch.setattr(worker, "init", _refuse)
    monkeypatch.setattr(worker.global_worker, "check_connected", _refuse)
    # the runtime context reads a connected worker's ids without check_connected
    monkeypatch.setattr(ray, "get_runtime_context", _refuse)
    monkeypatch.setattr(ray.runtime_context, "get_runtime_context", _refuse)
