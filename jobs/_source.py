"""Run the submitted code, not the image's: put this tree's ``platform/`` first on the path.

``ray job submit --working-dir . -- python jobs/X.py`` starts ``jobs/X.py`` from the
uploaded working directory, where ``platform/`` holds the package but is not on
``sys.path``. Each job calls :func:`use_submitted_code` before it imports attune;
attune then ships the same package to every worker (``attune.runtime``).
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "platform"


def use_submitted_code() -> None:
    """Import attune from this tree's ``platform/`` (when it has one)."""
    if (SOURCE / "attune" / "__init__.py").is_file() and str(SOURCE) not in sys.path:
        sys.path.insert(0, str(SOURCE))
        for name in [m for m in sys.modules if m == "attune" or m.startswith("attune.")]:
            del sys.modules[name]  # imported from elsewhere before: import again from here
