"""attune's public surface: a sorted __all__, every name importable, no heavy import."""

from __future__ import annotations

import subprocess
import sys

import attune


def test_all_is_sorted_and_every_name_resolves() -> None:
    """__all__ is sorted and each exported name is an attribute of the package."""
    assert attune.__all__ == sorted(attune.__all__)
    for name in attune.__all__:
        assert getattr(attune, name) is not None, name


def test_import_attune_does_not_import_ray_or_xgboost() -> None:
    """`import attune` stays light: Ray and XGBoost load only when a stage needs them."""
    code = "import sys, attune; print(sorted(m for m in ('ray', 'xgboost') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_simulator_surface_is_sorted_resolves_and_stays_light() -> None:
    """attune.simulator exports a sorted __all__ of names that resolve, without Ray."""
    code = (
        "import sys, attune.simulator as s\n"
        "assert s.__all__ == sorted(s.__all__), s.__all__\n"
        "assert all(getattr(s, n) is not None for n in s.__all__)\n"
        "print(sorted(m for m in ('ray', 'xgboost') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
