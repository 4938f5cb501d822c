"""Deterministic, salted assignment of units (borrowers) to experiment arms.

The hash is the contract: ``bucket(unit_id, salt)`` is the first 53 bits of
``sha256(f"{salt}:{unit_id}")`` read as a fraction of 2**53, so it is uniform on
[0, 1), identical in every process, machine and Python version (no ``hash()``, no
random state), and published as test vectors in ``tests/unit/test_assignment.py``.
Changing it reshuffles every running experiment, so it never changes.

Layout of an :class:`AssignmentConfig`::

    global holdout      bucket(unit, f"{salt}:holdout") < holdout_share  -> no experiment at all
    layer L             u = bucket(unit, f"{salt}:{L}")   (so sha256 of "salt:L:unit")
      experiment E1     u in [0, t1)                      mutually exclusive within a layer
      experiment E2     u in [t1, t1 + t2)
      arm of E          bucket(unit, f"{salt}:{L}:{E}") against the cumulative arm weights

Layers hash with independent salts, so a unit's arm in one layer tells nothing about
its arm in another (experiments in different layers overlap without colliding).
Arms use their own hash rather than the layer slot: ramping an experiment's traffic up
keeps every enrolled unit in the arm it already had.

The module's other salted hash, :func:`hash_borrower`, is the borrower's pseudonym in
logs and metrics (keyed BLAKE2b with the secret ``ATTUNE_BORROWER_SALT``): one-way,
and unrelated to any arm, so a log reader cannot recompute assignments from it.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from attune.errors import ArgumentError

_MANTISSA_BITS = 53  # a float64 holds 53 bits exactly, so the bucket is never rounded up to 1.0
_SCALE = float(1 << _MANTISSA_BITS)


def hash_borrower(borrower_id: str | int, *, salt: str) -> str:
    """The borrower id as it may appear in logs and metrics: salted, one-way, 16 hex chars."""
    digest = hashlib.blake2b(
        str(borrower_id).encode(), key=salt.encode()[:64], digest_size=8, person=b"attune-log"
    )
    return digest.hexdigest()


def bucket(unit_id: str | int, salt: str) -> float:
    """A uniform, deterministic number in [0, 1) for ``unit_id`` under ``salt``.

    Cheap (one sha256 of a short string) and stable across processes and versions;
    ``bucket(u, s) < share`` is a sticky ``share`` split (the serving canary uses it).
    """
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _MANTISSA_BITS)) / _SCALE


def pick_weighted(u: float, weights: Sequence[float]) -> int:
    """The index ``i`` whose slice of [0, 1), sized by normalized ``weights``, holds ``u``."""
    total = float(sum(weights))
    edges = list(accumulate(w / total for w in weights))
    return min(bisect_right(edges, u), len(weights) - 1)


class ArmConfig(BaseModel):
    """One arm of an experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Arm name, e.g. 'control' or 'canary'.")
    weight: float = Field(gt=0, description="Relative share of the experiment's traffic.")


class ExperimentConfig(BaseModel):
    """An experiment: a slice of one layer's traffic split over weighted arms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Experiment name (unique in the plan).")
    layer: str = Field(default="default", min_length=1, description="Layer it runs in.")
    traffic: float = Field(
        default=1.0, gt=0, le=1, description="Share of the layer's units enrolled."
    )
    arms: tuple[ArmConfig, ...] = Field(min_length=1, description="Arms with weights.")

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: tuple[ArmConfig, ...]) -> tuple[ArmConfig, ...]:
        names = [a.name for a in arms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"arm names must be unique, repeated: {duplicates}")
        return arms


class AssignmentConfig(BaseModel):
    """A plan of layered experiments with a global holdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    salt: str = Field(min_length=1, description="Plan salt; changing it reshuffles everyone.")
    holdout_share: float = Field(
        default=0.0, ge=0, lt=1, description="Share of units held out of every experiment."
    )
    experiments: tuple[ExperimentConfig, ...] = Field(
        default=(), description="Experiments; those sharing a layer are mutually exclusive."
    )

    @model_validator(mode="after")
    def _check_layers(self) -> AssignmentConfig:
        names = [e.name for e in self.experiments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"experiment names must be unique, repeated: {duplicates}")
        totals: dict[str, float] = {}
        for experiment in self.experiments:
            totals[experiment.layer] = totals.get(experiment.layer, 0.0) + experiment.traffic
        for layer, total in totals.items():
            if total > 1 + 1e-12:
                shares = {e.name: e.traffic for e in self.experiments if e.layer == layer}
                raise ValueError(
                    f"layer {layer!r}: experiment traffic sums to {total:g} > 1 ({shares})"
                )
        return self


@dataclass(frozen=True)
class Assignment:
    """Where one unit landed in one layer; ``experiment``/``arm`` are None when in none."""

    unit_id: str
    layer: str
    experiment: str | None
    arm: str | None
    holdout: bool


class Assigner:
    """Assigns units to arms under an :class:`AssignmentConfig` (pure, deterministic)."""

    def __init__(self, config: AssignmentConfig) -> None:
        self.config = config
        self._layers: dict[str, list[tuple[float, float, ExperimentConfig]]] = {}
        for experiment in config.experiments:
            slots = self._layers.setdefault(experiment.layer, [])
            start = slots[-1][1] if slots else 0.0
            slots.append((start, start + experiment.traffic, experiment))

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self._layers)

    def in_holdout(self, unit_id: str | int) -> bool:
        """True when ``unit_id`` is in the global holdout (no experiment applies to it)."""
        share = self.config.holdout_share
        return share > 0 and bucket(unit_id, f"{self.config.salt}:holdout") < share

    def assign(self, unit_id: str | int, layer: str) -> Assignment:
        """The experiment and arm of ``unit_id`` in ``layer``.

        Raises :class:`ArgumentError` for a layer the plan does not have.
        """
        if layer not in self._layers:
            raise ArgumentError(argument="layer", value=layer, problem=f"not in {self.layers}")
        slots = self._layers[layer]
        unit = str(unit_id)
        if self.in_holdout(unit):
            return Assignment(unit_id=unit, layer=layer, experiment=None, arm=None, holdout=True)
        u = bucket(unit, f"{self.config.salt}:{layer}")
        for start, end, experiment in slots:
            if start <= u < end:
                v = bucket(unit, f"{self.config.salt}:{layer}:{experiment.name}")
                arm = experiment.arms[pick_weighted(v, [a.weight for a in experiment.arms])]
                return Assignment(
                    unit_id=unit,
                    layer=layer,
                    experiment=experiment.name,
                    arm=arm.name,
                    holdout=False,
                )
        return Assignment(unit_id=unit, layer=layer, experiment=None, arm=None, holdout=False)

    def assign_all(self, unit_id: str | int) -> dict[str, Assignment]:
        """The assignment of ``unit_id`` in every layer, keyed by layer."""
        return {layer: self.assign(unit_id, layer) for layer in self._layers}

    def arm(self, unit_id: str | int, experiment: str) -> str | None:
        """The arm of ``unit_id`` in ``experiment`` (None: held out or not enrolled).

        Raises :class:`ArgumentError` for an experiment the plan does not have.
        """
        for _, _, config in (s for slots in self._layers.values() for s in slots):
            if config.name == experiment:
                result = self.assign(unit_id, config.layer)
                return result.arm if result.experiment == experiment else None
        known = [e.name for e in self.config.experiments]
        raise ArgumentError(argument="experiment", value=experiment, problem=f"not in {known}")
