"""The lock files pin every dependency with hashes, and install tooling uses them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "requirements/lock.txt", ROOT / "requirements/dev-lock.txt"]


def _declared(extra: str | None) -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    if extra:
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[\\[<>=;~! ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _image_requirements():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "image_requirements", ROOT / "infra/image_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("lock", "extra"), zip(LOCKS, [None, "dev"], strict=True))
def test_every_declared_dependency_is_pinned_with_hashes(lock: Path, extra: str | None) -> None:
    entries = dict(_image_requirements().entries(lock.read_text()))
    assert _declared(extra) <= set(entries), _declared(extra) - set(entries)
    for name, text in entries.items():
        assert "==" in text.splitlines()[0] and "--hash=sha256:" in text, name


def test_the_lock_keeps_the_ray_pin_of_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    (ray,) = re.findall(r'"ray\[[^\]]*\]==([^"]+)"', text)
    for lock in LOCKS:
        assert re.search(rf"^ray=={re.escape(ray)} ", lock.read_text(), re.M), lock.name


def test_makefile_and_image_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev-lock.txt" in makefile
    assert "--no-deps -e ." in makefile
    dockerfile = (ROOT / "infra/Dockerfile").read_text()
    assert "requirements/lock.txt" in dockerfile and "--require-hashes" in dockerfile


def test_the_image_installs_only_what_ray_s_image_lacks() -> None:
    module = _image_requirements()
    lock = (ROOT / "requirements/lock.txt").read_text()
    kept = module.missing(lock, ["ray", "NumPy", "pandas"])
    names = {name for name, _ in module.entries(kept)}
    assert names and not names & {"ray", "numpy", "pandas"}
    assert "xgboost" in names and "--hash=sha256:" in kept
    assert len(module.entries(kept)) == len(module.entries(lock)) - 3
