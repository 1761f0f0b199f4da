"""User-facing errors.

A `PodiumError` is a mistake the user can fix (bad config, missing data, a
checkpoint that does not fit). The CLI prints its message alone and exits
non-zero; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class PodiumError(Exception):
    """An error in the user's input, reported without a traceback."""

    def __init__(self, message: str):
        # A single string argument keeps the class re-raisable by DataLoader
        # workers, which rebuild exceptions as ``type(msg)``, with a message of their own.
        message = _worker_original(type(self).__name__, message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class EveryRankError(PodiumError):
    """A user error that every DDP process finds alike (all compute it from the same data): each
    process stops, and the CLI prints it on rank 0 only instead of once per process."""


def _worker_original(name: str, message: str) -> str:
    """The original message of an error a DataLoader worker re-raised in the main process.

    torch rebuilds it as ``Caught BadImageError in DataLoader worker process 0.\nOriginal
    Traceback ...\npodium.data.images.BadImageError: cannot decode image x.jpg``: shown as it is,
    the user reads about a worker, not the file. The original follows the traceback's last line
    that starts with the class's name (the last: a chained cause comes first); any other message
    is returned unchanged.
    """
    if not message.startswith(f"Caught {name} in DataLoader worker"):
        return message
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", message, re.M))
    return message[found[-1].end():].rstrip("\n") if found else message


class RunInterrupted(Exception):
    """A run stopped by SIGINT or SIGTERM: recorded as interrupted (resumable); the CLI
    exits with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def __str__(self) -> str:
        return self.message


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Closest matches for a misspelled name (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> PodiumError:
    """Error for a name missing from a registry, with valid names and the closest match."""
    choices = sorted(choices)
    hint = closest(name, choices)
    msg = f"unknown {kind} {name!r}; valid: {', '.join(choices)}"
    if hint:
        msg += f". Did you mean {hint[0]!r}?"
    return PodiumError(msg)


def lookup(registry: dict, name: str, kind: str):
    """Fetch ``registry[name]`` or raise the standard unknown-name error."""
    try:
        return registry[name]
    except KeyError:
        raise unknown_name(kind, name, registry) from None


def summarize_list(items: list, first: int = 5) -> str:
    """'a, b, c (and 12 more)' - long lists stay readable in one message."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:first])
    rest = len(items) - first
    return shown + (f" (and {rest} more)" if rest > 0 else "")
