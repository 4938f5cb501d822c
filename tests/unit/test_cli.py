"""The CLI is scriptable: one exit status per error category, one message per failure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from attune import errors
from attune.cli import ExitCode, build_parser, exit_code, main, run

CATEGORY_CASES = [
    (errors.ConfigError(field="trials", value=0, problem="must be >= 1"), ExitCode.INVALID_INPUT),
    (errors.SchemaError(file="f.parquet", column="ts", problem="null"), ExitCode.INVALID_INPUT),
    (errors.StoreNotFound(uri="/nope"), ExitCode.NOT_FOUND),
    (errors.AliasNotFound(registry="/r", alias="champion"), ExitCode.NOT_FOUND),
    (errors.GateRefused(gate="fairness", version="v1", reasons=["x"]), ExitCode.REFUSED),
    (
        errors.ParityError(max_abs_diff=1.0, order_agreement=0.5, tolerance=1e-4),
        ExitCode.REFUSED,
    ),
    (errors.VersionExists(registry="/r", version="v1"), ExitCode.CONFLICT),
    (errors.StoreUnavailable(uri="s3://b", attempts=5, cause="timeout"), ExitCode.UNAVAILABLE),
    (
        errors.ArtifactCorrupted(uri="u", problem="p", expected_sha256="a", actual_sha256="b"),
        ExitCode.UNAVAILABLE,
    ),
    (errors.StoreAccessDenied(uri="s3://b"), ExitCode.FORBIDDEN),
    (errors.AttuneError("other"), ExitCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), CATEGORY_CASES, ids=lambda v: type(v).__name__)
def test_each_error_category_has_its_exit_status(
    error: errors.AttuneError, code: ExitCode, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise error

    assert exit_code(error) == code
    assert run(handler, argparse.Namespace()) == code
    err = capsys.readouterr().err
    assert err == f"attune: error: {error.message}\n"  # one line, once


def test_statuses_are_distinct_and_differ_from_usage() -> None:
    categories = {code for _, code in CATEGORY_CASES}
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert ExitCode.USAGE not in categories and ExitCode.OK not in categories


def test_the_drift_alert_status_is_the_check_failed_status() -> None:
    from attune.monitoring.commands import EXIT_DRIFT_ALERT

    assert EXIT_DRIFT_ALERT == ExitCode.CHECK_FAILED


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["registry", "list", "--no-such-flag"])
    assert info.value.code == ExitCode.USAGE


def test_json_errors_print_one_object_with_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--json-errors", "registry", "list", "--registry", str(missing)]) == 5
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert (error["error"], error["exit_code"], error["details"]["uri"]) == (
        "StoreNotFound",
        5,
        str(missing),
    )


def test_a_missing_registry_is_not_found_not_an_empty_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-registry"
    assert main(["registry", "list", "--registry", str(missing)]) == ExitCode.NOT_FOUND
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(missing) in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["preprocess", "--histories", "{missing}"],
        ["features", "materialize", "--histories", "{missing}"],
        ["tune", "--features", "{missing}"],
        ["monitor", "drift", "--registry", "{missing}"],
        ["experiment", "analyze", "--decisions", "{missing}", "--out", "{tmp}/out"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_a_missing_input_is_named_before_ray_starts(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ray.init raises in unit tests: reaching it would be an internal error, not NOT_FOUND."""
    missing = tmp_path / "typo"
    filled = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    assert main(["--json-errors", *filled]) == ExitCode.NOT_FOUND
    error = json.loads(capsys.readouterr().err)
    assert error["details"]["uri"] == str(missing)


def test_validation_errors_carry_no_pydantic_internals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "canary", "v1", "--percent", "150"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "percent" in err
    assert "pydantic" not in err and "Value error" not in err and "For further" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["registry", "list"],
        ["registry", "show", "champion"],
        ["tune"],
        ["monitor", "drift"],
        ["rollout", "promote"],
        ["preprocess"],
        ["features", "materialize"],
        ["experiment", "analyze", "--out", "x"],
    ],
)
def test_every_command_takes_store_and_defaults_its_paths(argv: list[str]) -> None:
    """--store is accepted everywhere a path defaults to the store layout."""
    args = build_parser().parse_args([*argv, "--store", "s3://b/p"])
    assert args.store == "s3://b/p"


@pytest.mark.parametrize("argv", [["rollout", "promote"], ["registry", "alias", "champion", "v1"]])
def test_by_defaults_to_the_current_user(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.by is None  # resolved by settings.current_user() when the step runs


def test_current_user_is_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from attune.settings import current_user

    monkeypatch.setenv("LOGNAME", "ana")
    monkeypatch.setenv("USER", "ana")
    assert current_user() == "ana"


def test_outcomes_refuses_the_public_salt_for_an_s3_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real decision logs are joined only with a secret salt, read from the environment."""
    from attune.settings import get_settings

    monkeypatch.delenv("ATTUNE_BORROWER_SALT", raising=False)
    get_settings.cache_clear()
    try:
        argv = ["--json-errors", "outcomes", "--store", "s3://bank/attune", "--history", "x"]
        assert main(argv) == ExitCode.INVALID_INPUT
    finally:
        get_settings.cache_clear()
    error = json.loads(capsys.readouterr().err)
    assert error["details"]["field"] == "ATTUNE_BORROWER_SALT"
    with pytest.raises(SystemExit):  # the salt is no longer an argument
        main(["outcomes", "--salt", "s", "--history", "x"])
