"""`podium tune` (hyper-parameter search with Optuna over a config's `search:` section) and
`podium lr-find` (Lightning's learning-rate finder, with its plot).

Thin layers over `podium.tuning.tune` and `podium.lr_find`; nothing here imports
torch, Lightning or Optuna until the command runs.
"""
from __future__ import annotations

from podium.cli.common import (
    add_command,
    add_config_items,
    console,
    positive_float,
    positive_int,
    split_config_and_overrides,
)
from podium.errors import PodiumError

EXAMPLE = ("podium tune tune.yaml --trials 20                    (studies/<output.name>/, SQLite)\n"
           "  podium tune tune.yaml --trials 50 --study lr --storage postgresql://user:pw@db-host/optuna\n"
           "      (run the same command on every machine: 50 trials in total)\n"
           "  podium tune tune.yaml --trials 20 --folds 5 --pruner hyperband --timeout 3600")


LR_FIND_EXAMPLE = ("podium lr-find cfg.yaml                      (runs/lr_find/<output.name>/lr_find.png)\n"
                   "  podium lr-find cfg.yaml model.name=resnet18 --steps 200 --batch-size-find   (GPU: batch size too)")


def register(sub) -> None:
    p = add_command(sub, "lr-find", "Learning-rate finder (Lightning's Tuner.lr_find): loss against a rising "
                    "learning rate, the suggested lr and the plot.", cmd_lr_find, LR_FIND_EXAMPLE)
    add_config_items(p)
    p.add_argument("--min-lr", type=positive_float, default=1e-6, help="first learning rate tried (default: 1e-6)")
    p.add_argument("--max-lr", type=positive_float, default=1.0, help="last learning rate tried (default: 1)")
    p.add_argument("--steps", type=positive_int, default=100, help="training steps, one learning rate each (default: 100)")
    p.add_argument("--batch-size-find", action="store_true",
                   help="first find the largest batch that fits (Tuner.scale_batch_size; GPU only)")
    p.add_argument("--out", help="output folder (default: <output.dir>/lr_find/<output.name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

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
    import podium

    config, overrides = split_config_and_overrides(args.items)
    if config is None:
        raise PodiumError("podium tune needs a config file with a `search:` section, e.g. podium tune tune.yaml --trials 20")
    out = console()
    result = podium.tune(config, trials=args.trials, overrides=overrides, study=args.study, root=args.dir,
                  storage=args.storage, folds=args.folds, sampler=args.sampler, pruner=args.pruner,
                  seed=args.seed, timeout=args.timeout, jobs=args.jobs, heartbeat=args.heartbeat,
                  prune_startup=args.prune_startup, live=not args.quiet,
                  log=lambda message: out.print(message, markup=False))
    return 0 if result.best_trial is not None else 1


def cmd_lr_find(args) -> int:
    import podium
    from podium.cli.common import table

    path, overrides = split_config_and_overrides(args.items)
    out = console()
    found = podium.lr_find(podium.config(path, *overrides), min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                    scale_batch=args.batch_size_find, out=args.out, progress=not args.quiet,
                    log=lambda message: out.print(message, markup=False))
    rows = {"suggested lr": f"{found.suggestion:.3g}" if found.suggestion else "none (curve too short or flat)",
            "configured train.lr": found.settings["configured_lr"], "batch size": f"{found.batch_size} ({found.batch_note})",
            "steps": len(found.curve), "plot": found.dir / "lr_find.png" if found.dir else "-"}
    table("learning-rate finder", rows, out)
    if found.suggestion:
        out.print(f"use it: podium train {path or ''} train.lr={found.suggestion:.3g}".replace("  ", " "), markup=False)
    return 0
