"""The `podium` command line: a thin layer over the public Python API.

`COMMAND_MODULES` is the one command table: each module registers its
commands with `common.add_command`. User errors (`PodiumError`) print one
message and exit 2; ``--debug`` shows the traceback. Library code never sees
argparse objects, and nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from podium.cli.common import EXIT_USER_ERROR
from podium.errors import EveryRankError, PodiumError, RunInterrupted

#: every command module, in the order ``podium --help`` lists their commands
COMMAND_MODULES = ("podium.cli.core", "podium.cli.cv", "podium.cli.auto", "podium.cli.tools", "podium.cli.curation", "podium.cli.tune",
                   "podium.cli.deploy", "podium.cli.runs")

EPILOG = ("examples:\n  podium demo\n  podium train cfg.yaml model.name=resnet18 train.epochs=3\n"
          "  podium predict runs/exp --data data/test --tta hflip")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podium", description="From a folder of images to a scored, leaderboard-ready submission.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own messages too")
    from podium import __version__

    parser.add_argument("--version", action="version", version=f"podium {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


@contextlib.contextmanager
def _command_scope(level: str):
    """The verbosity and warning filters of one command, restored when it returns: a command
    run in-process (tests, notebooks calling `main`) leaves no filters or environment behind."""
    from podium.quiet import verbosity

    saved = os.environ.get("PYTHONWARNINGS")
    with verbosity(level), warnings.catch_warnings():
        if level != "verbose":
            os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")  # DataLoader/DDP worker processes
            warnings.filterwarnings("ignore", category=UserWarning)  # libraries' advice (podium prints its own notes)
            warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = saved


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # overrides may come after options (`train cfg.yaml --quiet train.epochs=2`)
    if unknown and hasattr(args, "items") and all("=" in u and not u.startswith("-") for u in unknown):
        args.items += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = getattr(args, "debug", False)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    verbose = debug or getattr(args, "verbose", False)
    level = "verbose" if verbose else "quiet" if getattr(args, "quiet", False) else "normal"
    try:
        with _command_scope(level):
            return int(args.func(args) or 0)
    except PodiumError as exc:
        if debug:
            raise
        if _printed_here(exc):
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _printed_here(exc: PodiumError) -> bool:
    """Whether this process prints the error: all of them, except an error every DDP rank
    found alike, which rank 0 prints once."""
    if not isinstance(exc, EveryRankError):
        return True
    from podium.model.distributed import launched_rank

    return launched_rank() == 0
