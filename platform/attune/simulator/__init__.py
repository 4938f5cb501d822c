"""The simulator: servicing histories with a hidden ground truth, and its environment.

The public surface: :func:`generate` writes a history (:class:`GenerateConfig`);
:func:`load_ground_truth` reads its :class:`GroundTruth`, :func:`policy_values` prices a
ranking policy on it; :class:`SimulatorEnvironment` answers served slates with the
simulator's hidden behaviour. Modules starting with ``_`` are the simulation itself.
Everything is imported on first use, so ``import attune.simulator`` is light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "GenerateConfig": "attune.simulator.generator",
    "GroundTruth": "attune.simulator.ground_truth",
    "ServedSlate": "attune.simulator.environment",
    "SimulatorEnvironment": "attune.simulator.environment",
    "generate": "attune.simulator.generator",
    "load_ground_truth": "attune.simulator.ground_truth",
    "policy_values": "attune.simulator.ground_truth",
    "share_of_oracle_lift": "attune.simulator.ground_truth",
}

__all__ = [
    "GenerateConfig",
    "GroundTruth",
    "ServedSlate",
    "SimulatorEnvironment",
    "generate",
    "load_ground_truth",
    "policy_values",
    "share_of_oracle_lift",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attune.simulator' has no attribute {name!r}")
