"""Write the lock file's entries for the packages a Ray image does not already have.

    python infra/image_requirements.py requirements/lock.txt > /tmp/attune-requirements.txt
    pip install --require-hashes --no-deps -r /tmp/attune-requirements.txt

The image keeps Ray's own pins: a package the base image installed (Ray and its
dependencies) stays at the image's version; every other package is installed at the
locked version with its hashes checked. ``pip check`` afterwards proves the mix is
consistent (infra/Dockerfile runs it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(lock: str) -> list[tuple[str, str]]:
    """``(canonical name, entry text)`` for every pinned entry of a pip lock file."""
    out: list[tuple[str, list[str]]] = []
    open_entry = False
    for line in lock.splitlines():
        match = _ENTRY.match(line)
        if match:
            out.append((canonical(match.group(1)), [line]))
            open_entry = True
        elif open_entry and line.startswith("    --hash="):
            out[-1][1].append(line)
        else:
            open_entry = False
    return [(name, "\n".join(lines)) for name, lines in out]


def missing(lock: str, installed: Iterable[str]) -> str:
    """The lock's entries whose package is not in ``installed``, as a requirements file."""
    have = {canonical(n) for n in installed}
    return "".join(f"{text}\n" for name, text in entries(lock) if name not in have)


def main(argv: list[str]) -> int:
    lock = Path(argv[1]).read_text()
    installed = (dist.metadata["Name"] for dist in metadata.distributions())
    sys.stdout.write(missing(lock, installed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
