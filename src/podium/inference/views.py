"""Which test-time views a model uses: the run's `predict.tta`, a request, or none."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podium.schema import PodiumConfig

FLIP_OPS = {"HorizontalFlip", "RandomHorizontalFlip"}


def resolve_tta(requested: Sequence[str] | None, cfg: PodiumConfig) -> list[str] | None:
    """The TTA views to run: the plain image plus the requested views.

    ``requested`` None means the run's ``predict.tta``; `auto` there means a
    horizontal flip exactly when training augmented with flips, so the flipped
    view is one the model has learnt; ``["none"]`` or [] means no TTA.
    """
    views: Any = cfg.predict.tta if requested is None else requested
    if views == "auto":
        a = cfg.augment
        flips = any(op.get("name") in FLIP_OPS for op in a.train_ops) if a.train_ops is not None else a.preset != "none"
        views = ["hflip"] if flips else []
    return requested_views(views)


def requested_views(views: Sequence[str] | None) -> list[str] | None:
    """The plain image plus the named views (``none``/``identity`` dropped); None without views."""
    named = [v for v in (views or []) if v not in ("none", "identity")]
    return ["identity", *named] if named else None
