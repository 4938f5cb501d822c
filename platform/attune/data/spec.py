"""The feature spec: names, dtypes, order, version and content hash of model features.

It is written with every ranking dataset (``feature_spec.json``), copied into every
registered model, and is the only way training and serving learn the feature order.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from attune.data.schema import OPTION_IDS, TOUCHPOINTS, protected_names

FEATURE_SPEC_VERSION = "1"

#: Largest finite float32: model inputs are float32, so a larger number would become ±inf.
FLOAT32_MAX = 3.4028234663852886e38
#: A number as the HTTP API takes it: a JSON number (no strings like "1e300" or " 1 ", no
#: booleans), finite, within float32's range.
StrictFloat32 = Annotated[
    float, Strict(), Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
]

#: Borrower features computed from events strictly before the as-of time.
BORROWER_EVENT_FEATURES: tuple[str, ...] = (
    "pay_on_time_30",
    "pay_on_time_90",
    "pay_on_time_180",
    "pay_late_90",
    "pay_partial_90",
    "pay_missed_90",
    "pay_missed_180",
    "on_time_rate_180",
    "days_past_due",
    "days_since_last_payment",
    "autopay_on",
    "open_rate_sms_90",
    "open_rate_email_90",
    "open_rate_push_90",
    "click_rate_90",
    "contacts_7d",
    "contacts_30d",
    "days_since_last_contact",
    "inbound_contacts_90",
    "logins_30",
    "hardship_180",
    "plans_accepted_180",
    "plans_broken_180",
)
#: Borrower and loan features from the static tables (and payment counts to date).
BORROWER_STATIC_FEATURES: tuple[str, ...] = (
    "balance",
    "apr",
    "term_progress",
    "installment_to_income",
    "income_volatility",
)
BORROWER_FEATURES: tuple[str, ...] = BORROWER_EVENT_FEATURES + BORROWER_STATIC_FEATURES
#: Context of the touchpoint (one-hot) and the slate position (1..3; serving scores at 1).
CONTEXT_FEATURES: tuple[str, ...] = (*(f"touchpoint_{t}" for t in TOUCHPOINTS), "position")
#: The candidate option, one-hot in catalog order.
OPTION_FEATURES: tuple[str, ...] = tuple(f"opt_{o}" for o in OPTION_IDS)

FEATURE_NAMES: tuple[str, ...] = BORROWER_FEATURES + CONTEXT_FEATURES + OPTION_FEATURES


class FeatureSpec(BaseModel):
    """Names, dtypes and order of the model features, with a content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(default=FEATURE_SPEC_VERSION, description="Feature-code version.")
    names: tuple[str, ...] = Field(description="Feature names in model input order.")
    dtypes: tuple[Literal["float32"], ...] = Field(description="One dtype per feature.")
    options: tuple[str, ...] = Field(default=OPTION_IDS, description="Option catalog order.")
    hash: str = Field(default="", description="sha256 of version, names, dtypes, options.")

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if len(self.names) != len(self.dtypes):
            raise ValueError(
                f"names ({len(self.names)}) and dtypes ({len(self.dtypes)}) differ in length"
            )
        leaked = protected_names(self.names)
        if leaked:
            raise ValueError(f"protected attributes may not be features: {leaked}")
        expected = self.content_hash()
        if self.hash and self.hash != expected:
            raise ValueError(f"hash {self.hash!r} does not match content hash {expected!r}")
        if not self.hash:
            object.__setattr__(self, "hash", expected)
        return self

    def content_hash(self) -> str:
        payload = json.dumps(
            [self.version, list(self.names), list(self.dtypes), list(self.options)]
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSpec:
        return cls.model_validate_json(text)


def default_spec() -> FeatureSpec:
    """The spec of the features this version of attune computes."""
    return FeatureSpec(names=FEATURE_NAMES, dtypes=("float32",) * len(FEATURE_NAMES))
