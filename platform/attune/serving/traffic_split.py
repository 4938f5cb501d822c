"""Traffic assignment: sticky canary arms by salted hash, sampled shadow mirroring.

A borrower's arm is a pure function of ``(salt, borrower_id, canary_share)``: the
borrower id is hashed with the rollout salt into a point ``u`` of ``[0, 1)`` by
:func:`attune.experiments.assignment.bucket` (the one assignment hash of the project:
experiments, holdouts, exploration and batch campaigns use it too) and the borrower is
on the canary when ``u < canary_share``. So a borrower
keeps one arm for the whole life of a rollout (same salt), raising the share only adds
borrowers to the canary (never moves one back), and every replica agrees without
sharing state. A new rollout changes the salt to draw a fresh canary population.

Shadow mirroring is sampled per request (hash of the decision id with a derived salt),
so a share of 0.1 mirrors about one request in ten regardless of who asks.

Borrower ids that reach logs and metrics are hashed with a *different*, secret salt
(:func:`attune.experiments.assignment.hash_borrower`, ``ATTUNE_BORROWER_SALT``) so
that a log reader cannot recompute arm assignment from it, nor the borrower id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from attune.errors import ConfigError
from attune.experiments.assignment import bucket

Arm = Literal["champion", "canary"]
ARMS: tuple[Arm, ...] = ("champion", "canary")


def salt_fingerprint(salt: str) -> str:
    """What ``/v1/models`` serves for a rollout salt: equal for equal salts, not reversible."""
    return hashlib.sha256(f"attune-salt:{salt}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrafficSplit:
    """Shares of traffic for one rollout step (values in ``[0, 1]``).

    ``canary_share`` is the fraction of *borrowers* on the canary arm (sticky);
    ``shadow_share`` the fraction of *requests* mirrored to the shadow model.
    """

    salt: str
    canary_share: float = 0.0
    shadow_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("canary_share", "shadow_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(field=name, value=value, problem="must be within [0, 1]")
        if not self.salt:
            raise ConfigError(field="salt", value=self.salt, problem="must not be empty")

    def arm(self, borrower_id: str | int) -> Arm:
        """The sticky arm of ``borrower_id`` under this split."""
        if self.canary_share <= 0.0:
            return "champion"
        if bucket(borrower_id, self.salt) < self.canary_share:
            return "canary"
        return "champion"

    def mirror(self, request_key: str) -> bool:
        """Whether the request identified by ``request_key`` is mirrored to the shadow."""
        if self.shadow_share <= 0.0:
            return False
        if self.shadow_share >= 1.0:
            return True
        return bucket(request_key, f"shadow/{self.salt}") < self.shadow_share

    @property
    def fingerprint(self) -> str:
        """Names the salt without giving it away: equal on every replica of one rollout.

        ``/v1/models`` serves this, never the salt: whoever knows the salt can compute
        which borrowers are on the canary and aim crafted requests at it.
        """
        return salt_fingerprint(self.salt)
