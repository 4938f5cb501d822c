"""The fenced examples of README.md and docs/*.md, for the tests that check or run them.

Every fence carries an info string that says what it is:

* ``bash``: commands a reader types. Each one is checked here (arguments parsed by the
  parser that will parse them, request bodies validated by the API's own models, files
  and make targets present); the README's walkthrough is also run for real by
  ``tests/integration/test_docs_examples.py`` and ``tests/integration/test_demo.py``.
* ``usage``: synopses with placeholders (``<version>``, ``[--opt]``, ``a | b``): every
  sub-command and every ``--flag`` named must exist.
* ``text`` (diagrams, layouts), ``python`` (API excerpts), ``json``, ``yaml``: not commands.

Commands that need something this repository's tests cannot have (``kubectl`` against
a real cluster, ``docker build``, ``ray job submit`` to a remote head, ``uv`` against the
package index) are checked by what they name: the manifests, files and job arguments.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"bash", "usage", "text", "python", "json", "yaml"}

_FENCE = re.compile(r"^ *```([^\n`]*)\n(.*?)^ *```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its info string and its text."""

    file: Path
    line: int
    kind: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """Its commands: continuation lines joined, comments and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        out: list[str] = []
        pending = ""
        for line in joined.splitlines():
            line = _strip_comment(line).strip() if not pending else line
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: a body that spans lines
                continue
            if pending.strip():
                out.append(pending.strip())
            pending = ""
        return out


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def blocks(files: list[Path] | None = None) -> list[Block]:
    found = []
    for path in files or DOC_FILES:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append(Block(path, line, match.group(1).strip(), match.group(2)))
    return found


def curl_requests(block: Block) -> list[tuple[str, str, str | None]]:
    """``(method, path, body)`` of each ``curl`` in a block (body None for a GET)."""
    out = []
    text = re.sub(r"\\\n\s*", " ", block.text)
    for command in re.split(r"\n(?=curl )", text):
        command = command.strip()
        if not command.startswith("curl "):
            continue
        argv = shlex.split(command)
        url = next(a for a in argv[1:] if "localhost" in a or "127.0.0.1" in a)
        path = "/" + url.split("/", 1)[1]
        body = argv[argv.index("-d") + 1] if "-d" in argv else None
        out.append(("POST" if body is not None else "GET", path, body))
    return out


def readme_blocks() -> list[Block]:
    return [b for b in blocks([ROOT / "README.md"]) if b.kind == "bash"]


def run_readme_requests(port: int) -> list[str]:
    """Run the README's ``curl`` blocks as written (port 8000 -> ``port``); their outputs."""
    import subprocess

    outputs = []
    for block in readme_blocks():
        if not curl_requests(block):
            continue
        script = block.text.replace("localhost:8000", f"localhost:{port}")
        for command in re.split(r"\n(?=curl )", script):
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True
            )
            outputs.append(done.stdout)
    return outputs
