"""podium's benchmarks, outside the installed package: ``python -m benchmarks [--quick]``.

`runner` holds the registry and the runner of the speed benchmarks B1-B6
(`speed`: B1-B5, `techniques`: B6); `defaults/`, `recipes/` and the other
folders are studies with their own RESULTS.md. Running from a clean clone
puts the repository's ``src`` on sys.path when podium is not installed.
"""
from __future__ import annotations

import sys
from pathlib import Path


def ensure_podium_importable() -> None:
    """Put the repository's ``src`` first on sys.path unless podium is already importable."""
    try:
        import podium  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


ensure_podium_importable()
