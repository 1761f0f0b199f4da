"""Data-centric commands: audit labels (and review them), pseudo-label, distil."""
from __future__ import annotations

from podium.cli.common import (
    add_command,
    best_label,
    console,
    duration,
    notes,
    positive_float,
    positive_int,
    split_config_and_overrides,
    table,
    unit_float,
)

EXAMPLES = {
    "pseudo-label": "podium pseudo-label runs/cv --unlabeled data/test --rounds 2 --precision 0.9\n"
                    "  podium pseudo-label runs/exp --unlabeled pool.csv data.group_column=person --mode hard --folds 5",
    "distill": "podium distill runs/cv --model resnet18 train.epochs=10\n"
               "  podium distill runs/ens --model tv/mobilenet_v2 --unlabeled data/test --temperature 4 --alpha 0.7",
    "audit": "podium audit runs/cv            (a cv run: every image, out-of-fold)\n"
             "  podium audit runs/exp --out audit/   (a single run: its validation part only)",
}


def register(sub) -> None:
    p = add_command(sub, "pseudo-label", "Rounds of training on labelled + pseudo-labelled images: per-class "
                    "confidence thresholds chosen on out-of-fold predictions for a target precision; each round "
                    "a normal run or cv run.", cmd_pseudo_label, EXAMPLES["pseudo-label"])
    p.add_argument("model", help="a run, cv run or ensemble folder: labels the first round")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="optional YAML config and dotted.key=value overrides on top of the model's config")
    p.add_argument("--unlabeled", required=True, metavar="DIR|CSV", help="the unlabelled images")
    p.add_argument("--rounds", type=positive_int, default=1, help="rounds of labelling and training (default 1)")
    p.add_argument("--precision", type=unit_float, default=0.9,
                   help="per-class pseudo-label precision to keep on the out-of-fold predictions (default 0.9)")
    p.add_argument("--mode", choices=("soft", "hard"), default="soft",
                   help="train on the probabilities (soft) or on the most likely class (hard)")
    p.add_argument("--folds", type=positive_int,
                   help="train each round as a cv run with K folds (default: a cv model's own K; else single runs)")
    p.add_argument("--group-by-folder", action="store_true",
                   help="the unlabelled images of one folder are one group (e.g. one person)")
    p.add_argument("--balance", action="store_true",
                   help="cap each class's pseudo-labels to keep the labelled class proportions (a class none are "
                        "precise enough for limits the others, so rounds do not shift the balance against it; a "
                        "round left with nothing to add is not trained)")
    p.add_argument("--out", help="output folder (default: MODEL-pseudo beside the model)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_command(sub, "distill", "Train a student on a teacher's soft probabilities (a cv run's or ensemble's "
                    "out-of-fold predictions), blended with the true labels; the result is a normal run.",
                    cmd_distill, EXAMPLES["distill"])
    p.add_argument("teacher", help="a cv run or ensemble folder")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="optional YAML config and dotted.key=value overrides on top of the teacher's config")
    p.add_argument("--model", help="the student's model.name (default: the teacher's)")
    p.add_argument("--unlabeled", metavar="DIR|CSV", help="unlabelled images the teacher predicts for the student")
    p.add_argument("--temperature", type=positive_float, help="softmax temperature (default: distill.temperature, 2)")
    p.add_argument("--alpha", type=unit_float, help="weight of the soft targets, 0..1 (default: distill.alpha, 0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add_command(sub, "audit", "Find labels that are probably wrong (cleanlab on out-of-fold probabilities), "
                    "duplicates and outliers; write an offline review page that exports label_fixes.csv.",
                    cmd_audit, EXAMPLES["audit"])
    p.add_argument("run", help="a cv run (every image is judged) or a run (its validation part only)")
    p.add_argument("--out", help="output folder (default: RUN/audit, numbered when taken)")
    p.add_argument("--no-features", action="store_true",
                   help="skip the feature-space outliers (they run each fold's model over its images once)")
    p.add_argument("--max-review", type=positive_int, default=None, metavar="N",
                   help="cards per section of the review page, most suspicious first (default 300)")
    p.add_argument("--method", default=None,  # None: podium.curation.audit.DEFAULT_LABEL_METHOD
                   help="how labels are flagged: cleanlab's find_label_issues filter_by (default "
                        "low_normalized_margin; prune_by_noise_rate is cleanlab's own default; an unknown "
                        "name lists them all)")
    p.add_argument("--suggest", choices=("drop", "relabel", "weight"),
                   help="also write suggested_fixes.csv in the audit folder: every flagged image dropped, its "
                        "label set to the suggestion, or kept with a training weight = how much the folds believe "
                        "its label (not applied: train with task.label_fixes=... to use it; weight retrained best in "
                        "benchmarks/data_centric)")


def cmd_distill(args) -> int:
    import podium

    config, overrides = split_config_and_overrides(args.items)
    out = console()
    run = podium.distill(args.teacher, model=args.model, config=config, overrides=overrides, unlabeled=args.unlabeled,
                         temperature=args.temperature, alpha=args.alpha, progress=not args.quiet, log=notes(out))
    s = run.summary
    m = s["val_metrics"]
    teacher = s.get("soft_targets", {}).get("teacher", {})
    table(f"distilled {s['run_dir']}", {
        "teacher": teacher.get("path"), "temperature / alpha": f"{teacher.get('temperature')} / {teacher.get('alpha')}",
        "training images with soft targets": teacher.get("labelled_rows"),
        "unlabelled images": teacher.get("unlabeled_rows", 0),
        best_label(s): s["best_metric"], "val macro F1": m["f1"],
        "val accuracy": m["acc"], "wall time": duration(s["wall_time_s"]), "run folder": s["run_dir"]}, out)
    return 0


def cmd_pseudo_label(args) -> int:
    import podium

    config, overrides = split_config_and_overrides(args.items)
    out = console()
    result = podium.pseudo_label(args.model, args.unlabeled, rounds=args.rounds, precision=args.precision,
                                 mode=args.mode, folds=args.folds, config=config, overrides=overrides,
                                 group_by_folder=args.group_by_folder, balance=args.balance, out=args.out,
                                 progress=not args.quiet, log=notes(out))
    rows = {"unlabelled images": result.record["n_unlabeled"], "mode": result.record["mode"]}
    for entry in result.record["rounds"]:
        score = entry["score"]
        rows[f"round {entry['round']}"] = (f"{entry['n_pseudo']} pseudo-labelled, macro F1 "
                                           f"{'-' if score is None else f'{score:.4f}'} ({entry['model']})")
    if result.record.get("stopped"):
        rows["stopped"] = result.record["stopped"]
    rows["folder"] = str(result.dir)
    table("pseudo-labelling", rows, out)
    return 0


def cmd_audit(args) -> int:
    import pandas as pd

    import podium

    out = console()
    result = podium.audit(args.run, out=args.out, features=not args.no_features, max_review=args.max_review,
                          method=args.method, log=notes(out))
    s = result.summary
    rows = {"judged": s["note"]}
    for kind, n in s["counts"].items():
        rows[kind.replace("_", " ")] = n
    for attribute, n in s["label_issues_by_attribute"].items():
        rows[f"label issues: {attribute}"] = n
    if s["group_attributes"]:
        rows["judged per group"] = ", ".join(s["group_attributes"])
    rows.update({"issues": str(result.dir / "issues.csv"), "review page": str(result.review_page),
                 "next": "open the review page, choose, export label_fixes.csv, then train with "
                         "task.label_fixes=label_fixes.csv"})
    if args.suggest:
        path = result.write_suggested_fixes(args.suggest)
        rows["suggested fixes"] = f"{len(pd.read_csv(path))} {args.suggest} row(s): {path} (not applied)"
    table(f"audit of {s['source']}", rows, out)
    return 0
