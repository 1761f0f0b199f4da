"""The `podium` command line: a thin layer that parses arguments and calls the library.

User errors (`PodiumError`) print one message and exit 2; `--debug` shows the
traceback. Library code never sees argparse objects.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .errors import PodiumError

EXIT_USER_ERROR = 2


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False, soft_wrap=True)


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise PodiumError(f"unexpected argument {item!r}: give one config file, then dotted.key=value overrides")
    return config, overrides


def _table(title: str, rows: dict, console=None) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(str(key), str(value))
    (console or _console()).print(table)


# ------------------------------------------------------------------ commands

def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    console = _console()
    if args.resume:
        if args.items:
            raise PodiumError("--resume continues a run with its saved config: drop the config file and overrides")
        result = train(None, resume=args.resume, progress=not args.quiet, log=console.print)
    else:
        config, overrides = _split_config_and_overrides(args.items)
        cfg = load_config(config, overrides)
        result = train(cfg, dry_run=args.dry_run, progress=not args.quiet, log=console.print)
    if args.dry_run:
        _table("dry run: one batch of train and validation ran", {
            "classes": len(result.summary["classes"]), "train images": result.summary["train_images"],
            "val images": result.summary["val_images"]}, console)
        return 0
    if not result.summary:  # a non-zero DDP rank: rank 0 reports
        return 0
    s = result.summary
    m = s["val_metrics"]
    _table(f"trained {s['run_dir']}", {
        f"best {s['monitor']} (epoch {s['best_epoch']})": s["best_metric"],
        "val accuracy": m["acc"], "val macro F1": m["f1"], "val macro precision": m["precision"],
        "val macro recall": m["recall"], "val macro ROC-AUC": m["auroc"], "wall time (s)": s["wall_time_s"],
        "skipped images": s["skipped_images"], "run folder": s["run_dir"],
    }, console)
    return 0


def _tta_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def cmd_predict(args) -> int:
    from .predict import predict_run

    result = predict_run(args.run, args.data, out=args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                         tta=_tta_list(args.tta), tta_merge=args.tta_merge, progress=not args.quiet,
                         biases=args.biases)
    _table("predictions", {"images": result["n_images"], "probabilities": result["probabilities"],
                           "submission": result["submission"],
                           "predicted classes": result["predicted_counts"]})
    return 0


def cmd_compose(args) -> int:
    from .predict import compose_runs

    result = compose_runs(args.runs, args.data, out=args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                          tta=_tta_list(args.tta), tta_merge=args.tta_merge, progress=not args.quiet)
    _table("composed predictions", {"images": result["n_images"], "probabilities": result["probabilities"],
                                    "submission": result["submission"]})
    return 0


def cmd_evaluate(args) -> int:
    from .predict import evaluate_run

    result = evaluate_run(args.run, args.data, out=args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                          tta=_tta_list(args.tta), tta_merge=args.tta_merge, progress=not args.quiet,
                          biases=args.biases)
    m = result["metrics"]
    _table(f"evaluation on {args.data}", {
        "images": result["n_images"], "accuracy": m["acc"], "macro F1": m["f1"], "macro precision": m["precision"],
        "macro recall": m["recall"], "macro ROC-AUC": m["auroc"], "files": result["out_dir"]})
    return 0


def cmd_config_show(args) -> int:
    from .config import config_to_yaml, load_config

    config, overrides = _split_config_and_overrides(args.items)
    print(config_to_yaml(load_config(config, overrides)), end="")
    return 0


def cmd_config_reference(args) -> int:
    from .config import config_reference

    print(config_reference())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.workdir), epochs=args.epochs, progress=not args.quiet, console=_console())
    return 0


# ------------------------------------------------------------------ parser

EXAMPLES = {
    "train": "podium train cfg.yaml model.name=resnet18 train.epochs=3\n"
             "  podium train data.train=data/train model.pretrained_path=weights.pth\n"
             "  podium train --resume runs/exp",
    "predict": "podium predict runs/exp --data data/test --tta hflip",
    "evaluate": "podium evaluate runs/exp --data data/val",
    "compose": "podium compose runs/mask runs/gender runs/age --data data/mask",
    "config show": "podium config show cfg.yaml train.lr=0.003",
    "config reference": "podium config reference > CONFIG.md",
    "demo": "podium demo --workdir demo_data",
}


def _add(sub, name: str, help_text: str, func, example_key: str | None = None):
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog="example:\n  " + EXAMPLES[example_key or name],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks for errors")
    return p


def _add_prediction_options(p) -> None:
    p.add_argument("--out", help="output folder (default: a new folder beside the run's other outputs)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a .ckpt path (default: best)")
    p.add_argument("--batch-size", type=int, help="inference batch size (default: the run's)")
    p.add_argument("--tta", help="test-time views added to the plain image, e.g. hflip,scale_0.9; `none` for "
                                 "none (default: the run's predict.tta; auto = hflip when training flipped)")
    p.add_argument("--tta-merge", default="mean", choices=["mean", "gmean"], help="how TTA views are merged")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_inference_args(p) -> None:
    p.add_argument("run", help="run folder, e.g. runs/exp")
    p.add_argument("--data", required=True, help="folder of images or CSV (path column as in the run's config)")
    p.add_argument("--biases", help="logit_biases.json from `podium cv-biases` (per-class macro-F1 biases)")
    _add_prediction_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podium", description="From a folder of images to a scored, leaderboard-ready submission.",
        epilog="examples:\n  podium demo\n  " + EXAMPLES["train"] + "\n  " + EXAMPLES["predict"],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(sub, "train", "Train a model from a config file and dotted overrides.", cmd_train)
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config, then dotted.key=value overrides")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder from its last.ckpt")
    p.add_argument("--dry-run", action="store_true", help="build everything and run one batch; writes no run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _add(sub, "predict", "Predict probabilities and a submission CSV with a trained run.", cmd_predict)
    _add_inference_args(p)
    p = _add(sub, "evaluate", "Measure a trained run on a labelled folder or CSV.", cmd_evaluate)
    _add_inference_args(p)
    p = _add(sub, "compose", "Combine one-model-per-attribute runs into composite predictions and a submission.",
             cmd_compose)
    p.add_argument("runs", nargs="+", help="one run folder per attribute (task.mode=per_attribute)")
    p.add_argument("--data", required=True, help="folder of images, CSV, or the competition root")
    _add_prediction_options(p)

    config = sub.add_parser("config", help="Show the resolved config or the config reference.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    p = _add(config_sub, "show", "Print the resolved config (defaults + file + overrides).", cmd_config_show, "config show")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE")
    _add(config_sub, "reference", "Print every config key with its default and description.", cmd_config_reference,
         "config reference")
    config.set_defaults(func=lambda a: (config.print_help(), 1)[1])

    p = _add(sub, "demo", "Train, predict and evaluate on scikit-learn's handwritten digits (CPU, minutes).", cmd_demo)
    p.add_argument("--workdir", default="demo_data", help="folder for the demo images and runs (default: demo_data)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from .cli_extra import register_extra_commands

    register_extra_commands(sub, _add)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
