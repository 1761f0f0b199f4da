"""CLI commands for cross-validation, OOF measurements, ensembles and checkpoint averaging.

Registered through `register` (see ``podium.cli.COMMAND_MODULES``). The
``cv`` command takes a config file and overrides as free positionals (like
``train``), so its follow-ups are separate commands (``cv-gather``,
``cv-tta``, ``cv-biases``); ``podium cv gather RUN`` is accepted as a
spelling of ``podium cv-gather RUN``.
"""
from __future__ import annotations

from podium.cli.common import (
    add_command,
    console,
    duration,
    non_negative_int,
    notes,
    positive_int,
    split_config_and_overrides,
    table,
    tta_list,
)
from podium.errors import PodiumError, summarize_list

EXAMPLES = {
    "cv": "podium cv cfg.yaml train.epochs=5 --folds 5 --test data/test\n"
          "  podium cv cfg.yaml output.name=cv5 --folds 5 --fold 2   (one fold per process/machine)\n"
          "  (overrides go before the --options)",
    "cv-gather": "podium cv-gather runs/cv5 --test data/test     (also: podium cv gather runs/cv5)",
    "cv-tta": "podium cv-tta runs/cv --tta hflip,scale_1.1",
    "cv-biases": "podium cv-biases runs/cv",
    "ensemble": "podium ensemble runs/cv runs/cv-2 runs/cv-3 --method weighted --out runs/ens",
    "average-checkpoints": "podium average-checkpoints runs/cv/fold0 --last 3",
}


def register(sub) -> None:
    p = add_command(sub, "cv", "K-fold cross-validation: train every fold, gather out-of-fold predictions.", cmd_cv, EXAMPLES["cv"])
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config, then dotted.key=value overrides")
    p.add_argument("--folds", type=positive_int, help="number of folds (default: cv.folds)")
    p.add_argument("--fold", type=non_negative_int, help="train only this fold (0-based) into output.dir/output.name")
    p.add_argument("--test", metavar="DIR", help="unlabeled images the folds predict once all are done (averaged) into "
                                                 "a submission")
    p.add_argument("--save-epochs", action="store_true", help="keep every epoch's checkpoint (for average-checkpoints)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_command(sub, "cv-gather", "Collect a CV folder's folds: OOF table, CV score, averaged test predictions.",
                    cmd_cv_gather, EXAMPLES["cv-gather"])
    p.add_argument("run", help="CV folder, e.g. runs/cv")
    p.add_argument("--test", metavar="DIR", help="unlabeled images to predict with the folds averaged (test_probabilities"
                                                 ".parquet + submission.csv); default: the cv run's own --test")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_command(sub, "cv-tta", "Measure test-time augmentation on the out-of-fold images (F1 with vs without).",
                    cmd_cv_tta, EXAMPLES["cv-tta"])
    p.add_argument("run", help="CV folder, e.g. runs/cv")
    p.add_argument("--tta", required=True, help="comma-separated views, e.g. hflip,scale_1.1")
    p.add_argument("--tta-merge", default="mean", metavar="MERGE", help="how views are merged: mean or gmean")
    p.add_argument("--batch-size", type=positive_int, help="inference batch size (default: the runs')")

    p = add_command(sub, "cv-biases", "Fit per-class logit biases for macro F1 on a cv run's OOF or a run's validation predictions; report the nested gain.",
                    cmd_cv_biases, EXAMPLES["cv-biases"])
    p.add_argument("run", help="CV folder, e.g. runs/cv")
    p.add_argument("--splits", type=positive_int, default=5, help="folds of the nested gain estimate (default: 5)")

    p = add_command(sub, "ensemble", "Combine CV folders, runs or prediction tables; score members and ensemble on OOF.",
                    cmd_ensemble, EXAMPLES["ensemble"])
    p.add_argument("members", nargs="+", metavar="MEMBER", help="CV folder, run folder or .parquet predictions")
    p.add_argument("--method", default="soft", metavar="METHOD", help="voting method: hard, soft, weighted or rank")
    p.add_argument("--out", help="output folder (default: runs/ensemble, numbered when taken)")
    p.add_argument("--test-probs", nargs="+", metavar="PARQUET", help="test probabilities, one file per member")

    p = add_command(sub, "average-checkpoints", "Average the weights of several epochs of one run (needs epochs/).",
                    cmd_average_checkpoints, EXAMPLES["average-checkpoints"])
    p.add_argument("run", help="run folder (or a CV fold folder) with epochs/epochNNN.ckpt")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=positive_int, metavar="K", help="average the last K epochs")
    which.add_argument("--best", type=positive_int, metavar="K", help="average the K epochs with the best train.monitor")
    p.add_argument("--out", help="output .ckpt (default: RUN/averaged_lastK.ckpt)")
    p.add_argument("--no-eval", action="store_true", help="skip scoring the average on the run's validation split")


# ------------------------------------------------------------------ commands


def cmd_cv(args) -> int:
    import podium

    if args.items and args.items[0] == "gather":
        if len(args.items) != 2 or any(v is not None for v in (args.folds, args.fold, args.test)):
            raise PodiumError("usage: podium cv gather RUN (or podium cv-gather RUN)")
        args.run = args.items[1]
        return cmd_cv_gather(args)
    config, overrides = split_config_and_overrides(args.items)
    cfg = podium.config(config, *overrides)
    out = console()
    result = podium.cross_validate(cfg, folds=args.folds, fold=args.fold, test=args.test, save_epochs=args.save_epochs,
                                   progress=not args.quiet, log=notes(out))
    if result.summary:
        _print_summary(result.summary, out)
    else:
        missing = result.missing_folds
        table("cross-validation", {"folder": result.dir, "folds still to train": summarize_list(missing),
                                   "next": f"podium cv --fold N for each, then podium cv-gather {result.dir}"}, out)
    return 0


def _print_summary(s: dict, out=None) -> None:
    rows = {"CV macro F1 (all OOF images)": s["cv_macro_f1"],
            "fold macro F1": f"{s['fold_macro_f1_mean']:.4f} +- {s['fold_macro_f1_std']:.4f}",
            "CV accuracy": s["cv_accuracy"], "images": s["n_images"], "folds": s["k"],
            "fold training time": duration(s.get("total_fold_time_s"))}
    for row in s["folds"]:
        rows[f"fold {row['fold']} macro F1"] = row["macro_f1"]
    if s.get("submission"):
        rows["submission (fold average)"] = s["submission"]
    rows["folder"] = s["run_dir"]
    table("cross-validation", rows, out)


def cmd_cv_gather(args) -> int:
    import podium

    out = console()
    _print_summary(podium.cv_gather(args.run, test=getattr(args, "test", None), progress=not getattr(args, "quiet", True),
                                    log=notes(out)).summary, out)
    return 0


def cmd_cv_tta(args) -> int:
    import podium

    r = podium.cv_tta(args.run, tta_list(args.tta) or [], args.tta_merge, batch_size=args.batch_size)
    table(f"TTA on out-of-fold images ({r['n_views']} views, {r['merge']})", {
        "macro F1 without TTA": r["macro_f1_plain"], "macro F1 with TTA": r["macro_f1_tta"], "gain": r["gain"],
        "accuracy without / with": f"{r['accuracy_plain']:.4f} / {r['accuracy_tta']:.4f}", "files": r["out_dir"]})
    return 0


def cmd_cv_biases(args) -> int:
    import podium

    r = podium.cv_biases(args.run, splits=args.splits)
    rows = {"macro F1 before (nested)": r["f1_before"], "macro F1 after (nested)": r["f1_after"], "gain": r["gain"],
            "gain > 0 in bootstrap resamples": f"{r['p_gain']:.0%} (recommended from {r['confidence']:.0%})",
            "recommended": r["recommended"], "biases": ", ".join(f"{c}={b:+.2f}" for c, b in zip(r["classes"], r["biases"]))}
    if r.get("biased_submission"):
        rows["biased submission"] = r["biased_submission"]
    table(f"macro-F1 logit biases fitted on {r['fitted_on']}", rows)
    return 0


def cmd_ensemble(args) -> int:
    import podium

    r = podium.ensemble(args.members, args.method, out=args.out, test_probs=args.test_probs).result
    out = console()
    if "scores" in r:
        from rich.table import Table

        t = Table(title=f"out-of-fold scores ({args.method})", header_style="bold")
        for col in ("name", "kind", "macro_f1", "accuracy", "log_loss", "weight"):
            t.add_column(col)
        for row in r["scores"].itertuples(index=False):
            t.add_row(row.name, row.kind, *(f"{v:.4f}" if v == v else "-" for v in
                                                (row.macro_f1, row.accuracy, row.log_loss, row.weight)))
        out.print(t)
    if r.get("verdict"):
        out.print(r["verdict"], markup=False)
    out.print(f"ensemble written to {r['out_dir']}" + (f" (submission: {r['submission']})" if r.get("submission") else ""))
    return 0


def cmd_average_checkpoints(args) -> int:
    import podium

    r = podium.average_checkpoints(args.run, last=args.last, best=args.best, out=args.out, evaluate=not args.no_eval)
    table("checkpoint average", {k.replace("_", " "): v for k, v in r.items()})
    return 0
