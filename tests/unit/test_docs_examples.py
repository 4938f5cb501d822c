"""Every command and request in README.md and docs/ is checked (see tests/docs_examples.py).

A renamed flag, a request body the API refuses, a Serve config that does not validate
or a file that moved fails here; the README's walkthrough itself runs in
tests/integration/test_docs_examples.py.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from attune.cli import build_parser
from tests.docs_examples import KINDS, ROOT, Block, blocks, curl_requests

#: jobs/X.py -> the attune sub-command whose arguments it takes.
JOB_COMMANDS = {
    "jobs/generate.py": ["generate"],
    "jobs/preprocess.py": ["preprocess"],
    "jobs/materialize.py": ["features", "materialize"],
    "jobs/tune.py": ["tune"],
    "jobs/drift.py": ["monitor", "drift"],
    "jobs/rollout.py": ["rollout"],
    "jobs/outcomes.py": ["outcomes"],
    "jobs/rank_batch.py": ["rank-batch"],
}

ALL = blocks()
COMMAND_BLOCKS = [b for b in ALL if b.kind in ("bash", "usage")]


def test_every_fence_says_what_it_is() -> None:
    unmarked = [(b.where, b.kind) for b in ALL if b.kind not in KINDS]
    assert not unmarked, f"fences need one of {sorted(KINDS)}"


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def _parse_attune(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error
        raise AssertionError(f"{where}: `attune {' '.join(argv)}` does not parse") from exc


def _check_serve(argv: list[str], where: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    assert argv[1] in {"run", "deploy"}, where
    path = ROOT / argv[-1]
    assert path.is_file(), f"{where}: {argv[-1]} does not exist"
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def _check_ray_job(argv: list[str], where: str) -> None:
    assert argv[:3] == ["ray", "job", "submit"] and "--working-dir" in argv, where
    script, args = argv[argv.index("--") + 2], argv[argv.index("--") + 3 :]
    assert argv[argv.index("--") + 1] == "python" and script in JOB_COMMANDS, where
    if args and args[0] != "<same":  # "<same arguments>": the CLI synopsis above it
        _parse_attune([*JOB_COMMANDS[script], *args], where)


def _check_kubectl(argv: list[str], where: str) -> None:
    """Not run here (no cluster): the manifests it applies exist and parse."""
    targets = [argv[i + 1] for i, a in enumerate(argv) if a in ("-f", "-k")]
    assert targets, where
    for target in targets:
        path = ROOT / target
        files = [path / "kustomization.yaml"] if "-k" in argv else [path]
        for file in files:
            assert file.is_file(), f"{where}: {file} does not exist"
            assert list(yaml.safe_load_all(file.read_text())), where


def check_bash(block: Block) -> None:
    for command in block.commands():
        argv = shlex.split(command)
        program = argv[0]
        if program == "attune":
            _parse_attune(argv[1:], block.where)
        elif program == "serve":
            _check_serve(argv, block.where)
        elif program == "make":
            assert set(argv[1:]) <= _makefile_targets() | {a for a in argv if "=" in a}
        elif program == "ray":
            _check_ray_job(argv, block.where)
        elif program == "kubectl":
            _check_kubectl(argv, block.where)
        elif program == "curl" or argv[0].startswith(('{"', "{", '"')):
            continue  # checked with the request models below
        elif program.startswith(".venv/bin/"):
            paths = [a.split("::")[0] for a in argv[1:] if "/" in a]
            assert paths and all((ROOT / p).exists() for p in paths), block.where
        else:
            raise AssertionError(f"{block.where}: no check for `{program}`")


@pytest.mark.parametrize(
    "block", [b for b in COMMAND_BLOCKS if b.kind == "bash"], ids=lambda b: b.where
)
def test_bash_examples_are_valid_commands(block: Block) -> None:
    check_bash(block)


def _subcommand(argv: list[str]) -> tuple[list[str], object]:
    """The deepest sub-command parser named by ``argv`` and the words that named it."""
    import argparse

    parser = build_parser()
    words: list[str] = []
    for word in argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
        words.append(word)
    return words, parser


def _usage_lines(block: Block) -> list[str]:
    """Commands of a synopsis: an indented line continues the one above it."""
    lines: list[str] = []
    for line in re.sub(r"\\\n", " ", block.text).splitlines():
        if line[:1].isspace() and lines:
            lines[-1] += " " + line.strip()
        elif line.strip():
            lines.append(line.strip())
    return [
        c
        for c in (Block(block.file, block.line, "usage", ln).commands() for ln in lines)
        for c in c
    ]


def check_usage(block: Block) -> None:
    for command in _usage_lines(block):
        argv = shlex.split(command.replace("[", " ").replace("]", " "))
        if argv[0] == "attune":
            for alternative in _alternatives(argv[1:]):
                words, parser = _subcommand(alternative)
                assert words, f"{block.where}: `attune {' '.join(alternative)}`: no such command"
                options = set(parser._option_string_actions)  # type: ignore[attr-defined]
                flags = {a.split("=")[0] for a in alternative if a.startswith("--")}
                assert flags <= options, f"{block.where}: {sorted(flags - options)} unknown"
        elif argv[0] == "ray":
            _check_ray_job(argv, block.where)
        elif argv[0] == "uv":
            assert argv[1:3] == ["pip", "compile"] and (ROOT / argv[-1]).is_file(), block.where
        else:
            check_bash(Block(block.file, block.line, "bash", command))


def _alternatives(argv: list[str]) -> list[list[str]]:
    """``registry list | show X`` -> ``[registry list], [registry show X]``."""
    if "|" not in argv:
        return [argv]
    head, parts, current = [], [], []
    for word in argv:
        if word == "|":
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    words, _ = _subcommand(parts[0])
    head = words[:-1] if len(words) > 1 else words
    out = [parts[0]]
    for part in parts[1:]:
        if part and part[0] == "attune":
            out.append(part[1:])
        elif part and not part[0].startswith("-"):
            out.append([*head, *part])
    return out


@pytest.mark.parametrize(
    "block", [b for b in COMMAND_BLOCKS if b.kind == "usage"], ids=lambda b: b.where
)
def test_usage_synopses_name_real_commands_and_flags(block: Block) -> None:
    check_usage(block)


REQUESTS = [(b, r) for b in COMMAND_BLOCKS for r in curl_requests(b)]


@pytest.mark.parametrize(("block", "request_"), REQUESTS, ids=lambda v: getattr(v, "where", ""))
def test_http_examples_are_valid_requests(block: Block, request_: tuple[str, str, str]) -> None:
    """A documented request body passes the API's own request model (no 422)."""
    import json

    from attune.online.events import EventsRequest
    from attune.serving.api import RankRequest

    method, path, body = request_
    if method == "GET":
        assert re.fullmatch(r"/v1/(features/\d+|healthz|models)|/openapi.json", path), path
        return
    assert body is not None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = json.loads(body.replace("$(date -u +%FT%TZ)", now))
    model = {"/v1/rank": RankRequest, "/v1/events": EventsRequest}[path]
    model.model_validate(payload)


def test_the_readme_shows_a_ranking_request() -> None:
    paths = [
        path
        for b in COMMAND_BLOCKS
        if b.file.name == "README.md"
        for _, path, _ in curl_requests(b)
    ]
    assert "/v1/rank" in paths and "/v1/events" in paths


def test_the_checks_can_fail() -> None:
    bad = Block(Path(ROOT / "README.md"), 0, "bash", "attune tune --no-such-flag\n")
    with pytest.raises(AssertionError):
        check_bash(bad)
    with pytest.raises(AssertionError):
        check_usage(Block(bad.file, 0, "usage", "attune monitor drift --registery URI\n"))
    with pytest.raises(AssertionError):
        check_bash(Block(bad.file, 0, "bash", "serve run serve_configs/nope.yaml\n"))
