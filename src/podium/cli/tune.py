"""`podium tune`: hyper-parameter search with Optuna over a config's `search:` section.

A thin layer over `podium.tuning.tune`; nothing here imports torch or Optuna
until the command runs.
"""
from __future__ import annotations

from podium.cli.common import add_command, add_config_items, console, positive_float, positive_int, split_config_and_overrides
from podium.errors import PodiumError

EXAMPLE = ("podium tune tune.yaml --trials 20                    (studies/<output.name>/, SQLite)\n"
           "  podium tune tune.yaml --trials 50 --study lr --storage postgresql://user:pw@db-host/optuna\n"
           "      (run the same command on every machine: 50 trials in total)\n"
           "  podium tune tune.yaml --trials 20 --folds 5 --pruner hyperband --timeout 3600")


def register(sub) -> None:
    p = add_command(sub, "tune", "Hyper-parameter search with Optuna: each trial a normal run; best config, "
                    "trials table and plots.", cmd_tune, EXAMPLE)
    add_config_items(p)
    p.add_argument("--trials", type=positive_int, required=True,
                   help="finished trials the study should hold in total, over every process and machine")
    p.add_argument("--study", help="study name and folder under --dir (default: output.name); an existing study "
                                   "is resumed and its trial numbering continues")
    p.add_argument("--dir", default="studies", help="parent folder of study folders (default: studies)")
    p.add_argument("--storage", help="an Optuna storage URL (postgresql://..., sqlite:///...) or a journal file "
                                     "path for shared file systems (default: SQLite in the study folder)")
    p.add_argument("--folds", type=positive_int, help="objective = CV macro F1 over K folds (each trial a cv run)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"], help="default: tpe (seeded)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"], help="default: median")
    p.add_argument("--prune-startup", type=positive_int, default=5, metavar="N",
                   help="median pruner: trials completed before any is pruned (default: 5)")
    p.add_argument("--seed", type=int, help="sampler seed (default: train.seed)")
    p.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="stop starting trials after this long")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="trials run at once on this machine, as worker processes (one GPU each when there are several)")
    p.add_argument("--heartbeat", type=positive_int, default=60, metavar="SECONDS",
                   help="RDB storages: a trial whose worker is silent for twice this long is failed and re-queued")
    p.add_argument("--quiet", action="store_true", help="no live table of trials")


def cmd_tune(args) -> int:
    from podium.tuning import tune

    config, overrides = split_config_and_overrides(args.items)
    if config is None:
        raise PodiumError("podium tune needs a config file with a `search:` section, e.g. podium tune tune.yaml --trials 20")
    out = console()
    result = tune(config, trials=args.trials, overrides=overrides, study=args.study, root=args.dir,
                  storage=args.storage, folds=args.folds, sampler=args.sampler, pruner=args.pruner,
                  seed=args.seed, timeout=args.timeout, jobs=args.jobs, heartbeat=args.heartbeat,
                  prune_startup=args.prune_startup, live=not args.quiet,
                  log=lambda message: out.print(message, markup=False))
    return 0 if result.best_trial is not None else 1
