"""Wall-clock durations as people write them: ``90s``, ``30m``, ``2h``, ``1h30m``, ``45`` (seconds)
or Lightning's ``DD:HH:MM:SS``. One parser for `train.max_time` and `podium auto --time`, and one
formatter for people (`fmt_duration`: leaderboard, `podium runs`, tune's trials table, the CLI).

Torch-free: the CLI validates ``--time`` before anything heavy is imported.
"""
from __future__ import annotations

import math
import re
from typing import Any

from podium.errors import PodiumError

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|sec|s)", re.IGNORECASE)
EXAMPLES = "90s, 30m, 2h, 1h30m, 45 (seconds) or DD:HH:MM:SS"


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Seconds in ``text``; a bad or non-positive duration raises `PodiumError` naming ``what``."""
    seconds = _seconds(text)
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise PodiumError(f"{what}: {text!r} is not a positive duration; write it like {EXAMPLES}")
    return seconds


def _seconds(text: str | float | int) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    raw = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw)
    clock = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", raw)
    if clock:
        d, h, m, s = (int(g) for g in clock.groups())
        return d * 86400.0 + h * 3600.0 + m * 60.0 + s
    parts = _PART.findall(raw)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != raw:
        return None
    return sum(float(n) * _UNITS[u.lower()] for n, u in parts)


def lightning_duration(seconds: float) -> str:
    """``DD:HH:MM:SS`` (Lightning's `max_time` string), rounded up to the next whole second."""
    total = int(-(-seconds // 1))
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def fmt_duration(seconds: Any) -> str:
    """12.3 -> '12 s', 200 -> '3 min 20 s', 4000 -> '1 h 07 min'; '-' for anything not a finite number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(float(seconds)):
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
