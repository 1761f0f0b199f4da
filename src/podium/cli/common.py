"""What every CLI command module shares: registration, argument types, printing.

A command module exposes ``register(sub)`` and adds each command with
`add_command`, which sets the example epilog and ``--debug``. Only argparse,
rich and the standard library are imported here, so ``podium --help`` stays fast.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from podium.errors import PodiumError

EXIT_USER_ERROR = 2


def console():
    """Rich output for people: in a terminal at its width; in a file or pipe at full width (a
    table or path is never wrapped mid-word into the log)."""
    from rich.console import Console

    from podium.quiet import plain_output

    if plain_output():
        return Console(stderr=False, highlight=False, soft_wrap=True, width=1000, no_color=True)
    return Console(stderr=False, highlight=False, soft_wrap=True)


def notes(out):
    """Where a command's progress notes go: ``out.print``, or nowhere under ``--quiet`` (results
    and errors only)."""
    from podium.quiet import current

    return (lambda *a, **k: None) if current() == "quiet" else out.print


def add_command(sub, name: str, help_text: str, func: Callable, example: str) -> argparse.ArgumentParser:
    """One registration style for every command: description, example epilog, --debug."""
    p = sub.add_parser(name, help=help_text, description=help_text, epilog="example:\n  " + example,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks for errors")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show the libraries' own messages too (Lightning's banners, known warnings)")
    return p


def add_group(sub, name: str, help_text: str):
    """A command with its own sub-commands (`podium data synth-mask`)."""
    parent = sub.add_parser(name, help=help_text, description=help_text)
    parent.set_defaults(func=lambda a: (parent.print_help(), 1)[1])
    return parent.add_subparsers(dest=f"{name.replace('-', '_')}_command", metavar="SUBCOMMAND")


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, found {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, found {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (batch sizes, folds, trials)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0 (fold indices, seeds)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (timeouts, tolerances)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, found {text}")
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1] (weights, shares)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, found {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, found {value}")
    return value


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[cfg.yaml, a.b=1, ...]`` -> the config file (or None) and the dotted overrides."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise PodiumError(f"unexpected argument {item!r}: give one config file, then dotted.key=value overrides")
    return config, overrides


def tta_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def table(title: str, rows: dict, out=None) -> None:
    """A two-column rich table; floats are rounded to 4 places for people."""
    from rich.table import Table

    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("item")
    t.add_column("value", overflow="fold")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        t.add_row(str(key), str(value))
    (out or console()).print(t)


def duration(seconds) -> str:
    """Seconds for people ('12 s', '3 min 20 s'): podium.durations' one formatter."""
    from podium.durations import fmt_duration

    return fmt_duration(seconds)


def best_label(summary: dict) -> str:
    """'best val_f1 (epoch 2)': the best epoch numbered as the epoch lines above it count (from 1)."""
    from podium.quiet import shown_epoch

    epoch = summary.get("best_epoch")
    return f"best {summary['monitor']}" + ("" if epoch is None else f" (epoch {shown_epoch(epoch)})")


def add_config_items(p) -> None:
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config, then dotted.key=value overrides")


def add_prediction_options(p) -> None:
    p.add_argument("--out", help="output folder (default: a new folder beside the run's other outputs)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a .ckpt path (default: best)")
    p.add_argument("--batch-size", type=positive_int, help="inference batch size (default: the run's)")
    p.add_argument("--tta", help="test-time views added to the plain image, e.g. hflip,scale_0.9; `none` for "
                                 "none (default: the run's predict.tta; auto = hflip when training flipped)")
    p.add_argument("--tta-merge", metavar="MERGE",
                   help="how TTA views are merged: mean or gmean (default: the run's predict.tta_merge)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
