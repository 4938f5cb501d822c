"""The model registry: immutable versions and movable aliases (local or s3://)."""
