"""The one exception tree of attune.

Every error attune raises on purpose derives from :class:`AttuneError` and keeps the
offending values as attributes, so callers (the CLI, the HTTP ingress, jobs) can
report them without parsing messages. Categories map to HTTP status codes::

    AttuneError                         (500)
    ├── InvalidInput                    (422)  bad data, config or request
    │   ├── SchemaError                        a table/file violates the history schema
    │   ├── ConfigError                        a config value is out of range
    │   ├── ArgumentError                      a function argument has a bad shape or value
    │   └── FeatureSpecMismatch                features do not match a feature spec
    ├── NotFound                        (404)
    │   ├── StoreNotFound                      bucket / key / path missing
    │   └── VersionNotFound / AliasNotFound    registry look-ups
    ├── Conflict                        (409)
    │   ├── VersionExists                      registry versions are immutable
    │   ├── ParityError                        ONNX export disagrees with native XGBoost
    │   └── GateRefused                        a promotion gate (fairness, OPE) said no
    ├── Unavailable                     (503)  a dependency is down after retries
    │   ├── StoreUnavailable
    │   └── ArtifactCorrupted                  a stored file does not match its manifest
    ├── Unauthorized                    (401)  no valid bearer token
    └── Forbidden                       (403)
        ├── StoreAccessDenied
        └── InsufficientScope                  a valid token without the route's scope
"""

from __future__ import annotations

from typing import Any

#: The realm of the serving API's bearer-token challenges (RFC 6750).
BEARER_REALM = "attune"


class AttuneError(Exception):
    """Base class of every deliberate attune error."""

    status_code: int = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form: error class, message and the offending values."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "details": {k: _jsonable(v) for k, v in self.details.items()},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


class InvalidInput(AttuneError):
    status_code = 422


class NotFound(AttuneError):
    status_code = 404


class Conflict(AttuneError):
    status_code = 409


class Unavailable(AttuneError):
    status_code = 503


class Forbidden(AttuneError):
    status_code = 403


class SchemaError(InvalidInput):
    """A history table violates its schema: names the file, column, row and problem."""

    def __init__(
        self, *, file: str, column: str | None, problem: str, row: int | None = None
    ) -> None:
        where = f"{file}"
        if column is not None:
            where += f", column {column!r}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {problem}", file=file, column=column, row=row, problem=problem)


class ConfigError(InvalidInput):
    def __init__(self, *, field: str, value: Any, problem: str) -> None:
        super().__init__(f"{field}={value!r}: {problem}", field=field, value=value, problem=problem)

    @classmethod
    def from_validation(cls, exc: Any, *, default_field: str = "(arguments)") -> ConfigError:
        """The first error of a pydantic ``ValidationError``, naming its field and value."""
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or default_field
        # pydantic prefixes a validator's own message with its error type.
        problem = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = first.get("input") if first["loc"] else None  # not the whole input object
        return cls(field=field, value=value, problem=problem)


class ArgumentError(InvalidInput):
    """An argument of a library function has a bad shape, type or value."""

    def __init__(self, *, argument: str, value: Any, problem: str) -> None:
        super().__init__(
            f"{argument}: {problem} (got {value!r})",
            argument=argument,
            value=value,
            problem=problem,
        )


class FeatureSpecMismatch(InvalidInput):
    def __init__(self, *, expected: Any, actual: Any, problem: str) -> None:
        super().__init__(
            f"feature spec mismatch: {problem} (expected {expected!r}, got {actual!r})",
            expected=expected,
            actual=actual,
            problem=problem,
        )


class StoreNotFound(NotFound):
    def __init__(self, *, uri: str, problem: str = "does not exist") -> None:
        super().__init__(f"{uri}: {problem}", uri=uri, problem=problem)


class VersionNotFound(NotFound):
    def __init__(self, *, registry: str, version: str) -> None:
        super().__init__(
            f"model version {version!r} not found in {registry}", registry=registry, version=version
        )


class AliasNotFound(NotFound):
    def __init__(self, *, registry: str, alias: str) -> None:
        super().__init__(f"alias {alias!r} not set in {registry}", registry=registry, alias=alias)


class VersionExists(Conflict):
    def __init__(self, *, registry: str, version: str) -> None:
        super().__init__(
            f"model version {version!r} already exists in {registry}; versions are immutable",
            registry=registry,
            version=version,
        )


class ParityError(Conflict):
    def __init__(self, *, max_abs_diff: float, order_agreement: float, tolerance: float) -> None:
        super().__init__(
            f"ONNX parity gate failed: max |onnx - native| = {max_abs_diff:.3g} "
            f"(tolerance {tolerance:g}), per-group order agreement {order_agreement:.1%}",
            max_abs_diff=max_abs_diff,
            order_agreement=order_agreement,
            tolerance=tolerance,
        )


class GateRefused(Conflict):
    def __init__(self, *, gate: str, version: str, reasons: list[str]) -> None:
        super().__init__(
            f"{gate} gate refused version {version!r}: " + "; ".join(reasons),
            gate=gate,
            version=version,
            reasons=reasons,
        )


class StoreUnavailable(Unavailable):
    def __init__(self, *, uri: str, attempts: int, cause: str) -> None:
        super().__init__(
            f"{uri}: store unavailable after {attempts} attempts: {cause}",
            uri=uri,
            attempts=attempts,
            cause=cause,
        )


class ArtifactCorrupted(Unavailable):
    """A stored artifact is missing, truncated or altered: it does not match its manifest."""

    def __init__(
        self, *, uri: str, problem: str, expected_sha256: str | None, actual_sha256: str | None
    ) -> None:
        super().__init__(
            f"{uri}: corrupted artifact: {problem} "
            f"(expected sha256 {expected_sha256}, got {actual_sha256})",
            uri=uri,
            problem=problem,
            expected_sha256=expected_sha256,
            actual_sha256=actual_sha256,
        )


class StoreAccessDenied(Forbidden):
    def __init__(self, *, uri: str) -> None:
        super().__init__(f"{uri}: access denied", uri=uri)


class InsufficientScope(Forbidden):
    """A valid token without the scope the route needs (HTTP 403)."""

    def __init__(self, *, scope: str) -> None:
        super().__init__(f"forbidden: this token lacks the {scope!r} scope", scope=scope)
        self.headers = {
            "WWW-Authenticate": f'Bearer realm="{BEARER_REALM}", error="insufficient_scope", '
            f'scope="{scope}"'
        }


class Unauthorized(AttuneError):
    """A protected route was called without a valid bearer token (HTTP 401)."""

    status_code = 401

    def __init__(self, *, problem: str) -> None:
        super().__init__(f"unauthorized: {problem}", problem=problem)
        error = "invalid_request" if "missing" in problem else "invalid_token"
        #: Response headers the ingress sends with the error (RFC 6750 section 3).
        self.headers = {"WWW-Authenticate": f'Bearer realm="{BEARER_REALM}", error="{error}"'}
