"""The simulator: servicing histories with a hidden ground truth, and its environment.

The public surface: :func:`generate` writes a history (:class:`GenerateConfig`);
:func:`load_ground_truth` reads its :class:`GroundTruth`, :func:`policy_values` prices a
ranking policy on it (:func:`share_of_oracle_lift` puts a value between random and
oracle); :class:`SimulatorEnvironment` answers :class:`ServedSlate` s with the
simulator's hidden behaviour. Modules starting with ``_`` are the simulation itself.
"""

from attune.simulator.environment import ServedSlate, SimulatorEnvironment
from attune.simulator.generator import GenerateConfig, generate
from attune.simulator.ground_truth import (
    GroundTruth,
    load_ground_truth,
    policy_values,
    share_of_oracle_lift,
)

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
