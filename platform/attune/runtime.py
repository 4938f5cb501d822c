"""Joining Ray so that every worker runs the same attune code as the driver.

``ray job submit --working-dir . -- python jobs/X.py`` uploads the working directory,
but the package lives under ``platform/``, which is not on a worker's path: without
help a worker would import whatever attune its image has installed. A job driver
(``jobs/_source.py`` puts the submitted ``platform/`` first on its own path) therefore
ships the attune package it imported to every worker as a ``py_modules`` entry of its
``runtime_env``; Ray merges it with the job's own ``working_dir``. Outside a submitted
job nothing is shipped: a local Ray's workers import the driver's installation.

Worker output reaches the driver (``log_to_driver``), hence ``ray job logs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Set by Ray's job manager in the environment of a submitted job's driver.
_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_submitted_job() -> bool:
    """True in the driver of a job submitted with ``ray job submit``."""
    return _JOB_ENV in os.environ


def code_runtime_env() -> dict[str, Any]:
    """The ``runtime_env`` that gives workers this process's attune (empty outside a job)."""
    if not in_submitted_job():
        return {}
    import attune

    return {"py_modules": [str(Path(attune.__file__).resolve().parent)]}


def init_ray(address: str | None, **kwargs: Any) -> None:
    """``ray.init(address, ...)`` with :func:`code_runtime_env` merged into ``runtime_env``.

    No address: ``RAY_ADDRESS`` (set for a submitted job's driver), else a new local Ray
    ("local"), never one that someone else ``ray start``-ed on this host (what
    ``ray.init(None)`` would join).
    """
    import ray

    from attune.settings import get_settings

    runtime_env = {**code_runtime_env(), **(kwargs.pop("runtime_env", None) or {})}
    address = address or get_settings().ray_address or "local"
    ray.init(address=address, runtime_env=runtime_env or None, **kwargs)
