"""The test suite's own guards: unit tests cannot use Ray, and waits stop on a fatal error."""

from __future__ import annotations

import pytest

from tests.conftest import WaitAborted, wait_for
from tests.unit.conftest import REFUSAL


@pytest.mark.parametrize(
    "use",
    ["init", "put", "remote", "data", "get_runtime_context_node"],
)
def test_a_unit_test_cannot_use_ray_even_when_a_cluster_could_be_running(use: str) -> None:
    """Not only ``ray.init``: the object store, tasks and Ray Data are refused too."""
    import ray

    with pytest.raises(RuntimeError, match=REFUSAL):
        if use == "init":
            ray.init()
        elif use == "put":
            ray.put(1)
        elif use == "remote":
            ray.remote(lambda: 1).remote()
        elif use == "data":
            ray.data.range(3).count()
        else:
            ray.get_runtime_context().get_node_id()


def test_wait_for_stops_at_once_when_the_condition_aborts() -> None:
    """A crashed helper surfaces on the first poll, not after the timeout."""
    calls = []

    def condition() -> bool:
        calls.append(1)
        raise WaitAborted("helper process exited")

    with pytest.raises(WaitAborted, match="helper process exited"):
        wait_for(condition, timeout=3600, interval=0.01, what="never")
    assert len(calls) == 1


def test_wait_for_still_retries_ordinary_errors_until_the_condition_holds() -> None:
    calls = []

    def condition() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not up yet")
        return True

    assert wait_for(condition, timeout=3600, interval=0.001) is True
    assert len(calls) == 3
