"""The ranking API's schema: pydantic request and response models (published as OpenAPI).

Malformed input never reaches a model: these models reject unknown fields, unknown
option ids and touchpoints, duplicate candidates, too many candidates, NaN/inf values,
feature vectors on only some candidates, and borrower features with missing or unknown
names, and numbers that are not plain JSON numbers within float32's range (strings such
as ``"1e300"``, booleans, ``1e300``: each would reach the model as ±inf or a guess);
FastAPI turns each into a 422 whose ``detail[].loc`` names the field. Checks that
need the served model (feature-vector length against its feature spec) run in the
ingress before scoring and answer 422 with the :mod:`attune.errors` body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    create_model,
    model_validator,
)

from attune.data.spec import BORROWER_FEATURES, StrictFloat32

#: Touchpoints a slate can be requested for (= attune.data.schema.TOUCHPOINTS; a unit test
#: keeps them equal). Literals so that the OpenAPI schema lists the allowed values.
Touchpoint = Literal["app", "email", "sms"]
#: Option ids of the catalog (= attune.data.schema.OPTION_IDS, in catalog order).
OptionId = Literal[
    "autopay_enroll",
    "due_date_change",
    "payment_plan",
    "hardship_deferral",
    "reminder_sms",
    "reminder_email",
    "reminder_push",
    "pay_now",
]
Arm = Literal["champion", "canary"]
FeatureSource = Literal["request", "borrower", "online"]

#: Most candidates one request may rank (the catalog size: candidates are unique).
MAX_CANDIDATES = 8
#: Longest per-candidate feature vector accepted before the spec-length check.
MAX_FEATURES = 512
#: Largest request body the ingress reads (bytes); larger bodies get 413.
MAX_BODY_BYTES = 64 * 1024

_STRICT = ConfigDict(extra="forbid")

#: Borrower state, one finite number per name of attune.data.spec.BORROWER_FEATURES.
BorrowerFeatures: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "BorrowerFeatures",
    __config__=_STRICT,
    __doc__="Borrower state as of now, one value per borrower feature of the feature spec.",
    **{
        name: (StrictFloat32, Field(description=f"Borrower feature {name!r}."))
        for name in BORROWER_FEATURES
    },
)


class Context(BaseModel):
    """Where the slate will be shown."""

    model_config = _STRICT

    touchpoint: Touchpoint = Field(description="Servicing touchpoint that shows the slate.")


_FeatureVector = Annotated[list[StrictFloat32], Field(min_length=1, max_length=MAX_FEATURES)]


class Candidate(BaseModel):
    """One option to rank, optionally with its full feature vector (spec order)."""

    model_config = _STRICT

    option_id: OptionId = Field(description="Option id from the catalog.")
    features: (
        Annotated[list[StrictFloat32], Field(min_length=1, max_length=MAX_FEATURES)] | None
    ) = Field(
        default=None,
        description="The candidate's model features in feature-spec order (scored as given).",
    )


class RankRequest(BaseModel):
    """Rank ``candidates`` for one borrower at one touchpoint.

    Features come from exactly one place: every candidate's ``features``, or the
    ``borrower`` state (candidate rows are then built by attune.data.features, the code
    that built the training data), or, when neither is given, the app's online feature
    view (a 422 where the app has none).
    """

    model_config = _STRICT

    borrower_id: StrictInt = Field(ge=0, lt=2**63, description="Borrower id (int64).")
    context: Context = Field(description="Touchpoint of the slate.")
    candidates: list[Candidate] = Field(
        min_length=1, max_length=MAX_CANDIDATES, description="Options to rank (unique ids)."
    )
    borrower: BorrowerFeatures | None = Field(
        default=None, description="Borrower state from which candidate features are computed."
    )
    explain: StrictBool = Field(default=False, description="Return reason codes per option.")

    @model_validator(mode="after")
    def _check_candidates(self) -> RankRequest:
        seen: set[str] = set()
        for i, candidate in enumerate(self.candidates):
            if candidate.option_id in seen:
                raise ValueError(
                    f"candidates[{i}].option_id {candidate.option_id!r} is listed twice"
                )
            seen.add(candidate.option_id)
        with_features = [c.features is not None for c in self.candidates]
        if any(with_features) and not all(with_features):
            missing = [i for i, has in enumerate(with_features) if not has]
            raise ValueError(
                f"candidates{missing}.features missing: give features for every candidate "
                "or for none"
            )
        if all(with_features) and self.borrower is not None:
            raise ValueError(
                "borrower and candidates[].features are exclusive: give one source of features"
            )
        return self

    @property
    def option_ids(self) -> tuple[str, ...]:
        return tuple(c.option_id for c in self.candidates)

    @property
    def feature_source(self) -> FeatureSource:
        if self.candidates[0].features is not None:
            return "request"
        return "borrower" if self.borrower is not None else "online"


class Reason(BaseModel):
    """One reason code: why the model scored the option as it did, with its contribution."""

    code: str = Field(description="Reason code from the reason catalog.")
    statement: str = Field(description="What the code says, in words, for this direction.")
    contribution: float = Field(description="Summed TreeSHAP contribution to the score.")


class RankedOption(BaseModel):
    """One option of the answer, best first."""

    option_id: OptionId = Field(description="Option id.")
    score: float = Field(description="Model score (higher ranks first).")
    rank: int = Field(ge=1, description="1-based position in the returned order.")
    propensity: float | None = Field(
        default=None, description="Probability the policy put it here (exploring policies)."
    )
    reasons: list[Reason] | None = Field(default=None, description="Reason codes (explain).")


class RankResponse(BaseModel):
    """The ranking of one request."""

    decision_id: str = Field(description="Id of this decision in the decision log.")
    model_version: str = Field(description="Registry version that scored the candidates.")
    arm: Arm = Field(description="Traffic arm that answered.")
    feature_source: FeatureSource = Field(description="Where the features came from.")
    feature_snapshot: str | None = Field(
        default=None, description="Online feature snapshot that served the borrower's features."
    )
    feature_fallback: bool | None = Field(
        default=None,
        description="Online features only: true when the borrower is unknown to the online "
        "view and population defaults (the snapshot's medians) were used.",
    )
    options: list[RankedOption] = Field(description="Candidates in ranked order.")


class ErrorBody(BaseModel):
    """Body of every error answered by attune itself (see attune.errors)."""

    error: str = Field(description="Error class.")
    message: str = Field(description="What went wrong, naming the field and value.")
    details: dict[str, Any] = Field(description="The offending values.")


class ArmStatus(BaseModel):
    """One model in service and what it has done in this replica."""

    role: Literal["champion", "canary", "shadow"] = Field(description="Role of the model.")
    version: str = Field(description="Registry version id.")
    feature_spec_hash: str = Field(description="Hash of the model's feature spec.")
    share: float = Field(description="Share of borrowers (canary) or requests (shadow).")
    calls: int = Field(description="Model calls in this replica.")
    errors: int = Field(description="Failed model calls in this replica.")


class Rollback(BaseModel):
    """A canary rolled back by the guardrails."""

    version: str = Field(description="Canary version that was rolled back.")
    reasons: list[str] = Field(description="Bounds it breached.")
    at: str = Field(description="UTC time of the rollback (ISO 8601).")


class ModelsResponse(BaseModel):
    """Models in service, traffic shares and counters of the replica that answered."""

    replica: str = Field(description="Replica that answered (counters are per replica).")
    models: list[ArmStatus] = Field(description="Models in service.")
    salt_fingerprint: str = Field(
        description="Fingerprint of the canary-assignment salt (equal on replicas serving "
        "the same rollout); the salt itself is never served."
    )
    rollbacks: list[Rollback] = Field(description="Guardrail rollbacks seen by this replica.")
    refused: list[str] = Field(description="Versions this replica refused to load, with why.")
    shadow_dropped: int = Field(description="Mirrored requests dropped (shadow queue full).")
    decisions_logged: int = Field(description="Decision-log records written by this replica.")
    decisions_dropped: int = Field(description="Decision-log records dropped (sink down).")
    decisions_buffered: int = Field(description="Decision-log records waiting to be written.")


class HealthResponse(BaseModel):
    """Liveness and what is being served."""

    status: Literal["ok"] = Field(description="Always 'ok' when the replica answers.")
    champion: str | None = Field(
        default=None, description="Champion version (only to a valid token when auth is on)."
    )
    canary: str | None = Field(
        default=None, description="Canary version, when one is in service (same rule)."
    )
