"""The core loop: train, predict, evaluate, compose, config, demo."""
from __future__ import annotations

from pathlib import Path

from podium.cli.common import (
    add_command,
    add_config_items,
    add_group,
    add_prediction_options,
    best_label,
    console,
    duration,
    notes,
    positive_int,
    split_config_and_overrides,
    table,
    tta_list,
)
from podium.errors import PodiumError


def cmd_train(args) -> int:
    import podium

    out = console()
    if args.resume:
        run = podium.train(None, resume=args.resume, progress=not args.quiet, log=notes(out),
                           epochs=_resume_epochs(args.items))
    else:
        config, overrides = split_config_and_overrides(args.items)
        cfg = podium.load_config(config, overrides)
        run = podium.train(cfg, dry_run=args.dry_run, progress=not args.quiet, log=notes(out))
    s = run.summary
    if args.dry_run:
        table("dry run: one batch of train and validation ran", {
            "classes": len(s["classes"]), "train images": s["train_images"], "val images": s["val_images"]}, out)
        return 0
    if not s:  # a non-zero DDP rank: rank 0 reports
        return 0
    m = s["val_metrics"]
    table(f"trained {s['run_dir']}", {
        best_label(s): s["best_metric"],
        "val accuracy": m["acc"], "val macro F1": m["f1"], "val macro precision": m["precision"],
        "val macro recall": m["recall"], "val macro ROC-AUC": m["auroc"], "wall time": duration(s["wall_time_s"]),
        "skipped images": s["skipped_images"], "run folder": s["run_dir"],
    }, out)
    return 0


def _resume_epochs(items: list[str]) -> int | None:
    """``--resume RUN`` takes one override, ``train.epochs=M`` (to extend a run); the rest of
    the config is the run's own."""
    config, overrides = split_config_and_overrides(items)
    others = [o for o in overrides if o.partition("=")[0].strip() != "train.epochs"]
    if config is not None or others:
        raise PodiumError(f"--resume continues a run with its saved config; only train.epochs=M (to extend it) may "
                          f"be given, found {[config] if config else []}{others}. Drop them, or start a new run")
    if not overrides:
        return None
    import podium

    return podium.load_config(None, overrides[-1:]).train.epochs  # validated like any config value


def _prediction_kwargs(args) -> dict:
    return dict(out=args.out, checkpoint=args.checkpoint, batch_size=args.batch_size, tta=_tta_arg(args.tta),
                tta_merge=args.tta_merge, progress=not args.quiet)


def _tta_arg(value):
    """``--tta`` absent: the model's own views; ``--tta none``: none; else the listed views."""
    return "default" if value is None else tta_list(value)


def _model_arg(args) -> str:
    """The model to use: the positional MODEL or ``--model FILE`` (the older spelling), exactly one."""
    if (args.run is None) == (args.model is None):
        raise PodiumError("podium predict needs exactly one model: a run, cv run or ensemble folder, or an exported "
                          "file (podium predict runs/exp --data DIR, podium predict model.onnx --data DIR)"
                          + (f"; got both {args.run} and --model {args.model}" if args.run else "; got neither"))
    return args.run if args.run is not None else args.model


def cmd_predict(args) -> int:
    import podium

    table_ = podium.predict(_model_arg(args), args.data, biases=args.biases, trust=args.trust_model,
                            **_prediction_kwargs(args))
    a = table_.attrs
    table("predictions", {"images": len(table_), "probabilities": a["probabilities"], "submission": a["submission"],
                          "predicted classes": a["predicted_counts"]})
    return 0


def cmd_compose(args) -> int:
    import podium

    result = podium.compose(args.runs, args.data, **_prediction_kwargs(args))
    table("composed predictions", {"images": result.n_images, "probabilities": result.probabilities,
                                   "submission": result.submission})
    return 0


def cmd_evaluate(args) -> int:
    import podium

    result = podium.evaluate(args.run, args.data, biases=args.biases, trust=args.trust_model, **_prediction_kwargs(args))
    m = result.metrics
    table(f"evaluation on {args.data}", {
        "images": len(result.predictions), "accuracy": m["acc"], "macro F1": m["f1"],
        "macro precision": m["precision"], "macro recall": m["recall"], "macro ROC-AUC": m["auroc"],
        "files": result.dir})
    return 0


def cmd_config_show(args) -> int:
    import podium

    config, overrides = split_config_and_overrides(args.items)
    print(podium.config_to_yaml(podium.config(config, *overrides)), end="")
    return 0


def cmd_config_reference(args) -> int:
    import podium

    print(podium.config_reference())
    return 0


def cmd_demo(args) -> int:
    import podium

    podium.run_demo(Path(args.workdir), epochs=args.epochs, progress=not args.quiet, console=console())
    return 0


TRAIN_EXAMPLE = ("podium train cfg.yaml model.name=resnet18 train.epochs=3\n"
                 "  podium train data.train=data/train model.pretrained_path=weights.pth\n"
                 "  podium train --resume runs/exp")
PREDICT_EXAMPLE = ("podium predict runs/exp --data data/test --tta hflip\n"
                   "  podium predict runs/cv5 --data data/test          (the folds averaged)\n"
                   "  podium predict runs/ensemble --data data/test\n"
                   "  podium predict runs/exp/exports/onnx/model.onnx --data data/test")


MODEL_HELP = ("a run, cv run or ensemble folder (e.g. runs/exp), or an exported model.onnx from `podium export` "
              "(a TorchScript .pt needs --trust-model)")


def _add_inference_args(p, exported: bool = False) -> None:
    p.add_argument("run", metavar="MODEL", nargs="?" if exported else None, help=MODEL_HELP)
    if exported:  # the older spelling for exported files
        p.add_argument("--model", metavar="FILE", help="an exported model file, instead of MODEL")
    p.add_argument("--data", required=True, help="folder of images or CSV (only the path column is needed to predict)")
    p.add_argument("--biases", help="logit_biases.json from `podium cv-biases` (per-class macro-F1 biases)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow a TorchScript .pt model: TorchScript is code that runs on load; only for files you made")
    add_prediction_options(p)


def register(sub) -> None:
    p = add_command(sub, "train", "Train a model from a config file and dotted overrides.", cmd_train, TRAIN_EXAMPLE)
    add_config_items(p)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder from its last.ckpt")
    p.add_argument("--dry-run", action="store_true", help="build everything and run one batch; writes no run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_command(sub, "predict", "Predict probabilities and a submission CSV with any trained model.", cmd_predict,
                    PREDICT_EXAMPLE)
    _add_inference_args(p, exported=True)
    p = add_command(sub, "evaluate", "Measure any trained model on a labelled folder or CSV.", cmd_evaluate,
                    "podium evaluate runs/exp --data data/val\n  podium evaluate runs/cv5 --data data/holdout")
    _add_inference_args(p)
    p = add_command(sub, "compose", "Combine one-model-per-attribute runs into composite predictions and a submission.",
                    cmd_compose, "podium compose runs/mask runs/gender runs/age --data data/mask")
    p.add_argument("runs", nargs="+", help="one run folder per attribute (task.mode=per_attribute)")
    p.add_argument("--data", required=True, help="folder of images, CSV, or the competition root")
    add_prediction_options(p)

    config = add_group(sub, "config", "Show the resolved config or the config reference.")
    p = add_command(config, "show", "Print the resolved config (defaults + file + overrides).", cmd_config_show,
                    "podium config show cfg.yaml train.lr=0.003")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE")
    add_command(config, "reference", "Print every config key with its default and description.",
                cmd_config_reference, "podium config reference > CONFIG.md")

    p = add_command(sub, "demo", "Train, predict and evaluate on scikit-learn's handwritten digits (CPU, minutes).",
                    cmd_demo, "podium demo --workdir demo_data")
    p.add_argument("--workdir", default="demo_data", help="folder for the demo images and runs (default: demo_data)")
    p.add_argument("--epochs", type=positive_int, default=6, help="training epochs (default: 6)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
