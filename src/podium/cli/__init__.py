"""The `podium` command line: a thin layer over the public Python API.

`COMMAND_MODULES` is the one command table: each module registers its
commands with `common.add_command`. User errors (`PodiumError`) print one
message and exit 2; ``--debug`` shows the traceback. Library code never sees
argparse objects, and nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from podium.cli.common import EXIT_USER_ERROR
from podium.errors import PodiumError, RunInterrupted

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")  # inherited by DataLoader/DDP workers
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    if not debug:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except PodiumError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
