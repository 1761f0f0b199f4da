"""podium's benchmark suite, runnable from a clean clone: ``python -m benchmarks [--quick]``.

The implementation lives in the installed package (`podium.bench`, also behind
``podium bench``) so both entry points run the same code; this package only
makes ``src/`` importable when podium is not installed.
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
