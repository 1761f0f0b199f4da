"""`podium auto`: plan, train and assemble a submission within a time budget."""
from __future__ import annotations

from podium.cli.common import add_command, console, table

EXAMPLE = ("podium auto data/train --test data/test --time 30m --preset medium\n"
           "  podium auto labels.csv --time 2h data.group_column=person   (the same command again resumes it)")


def register(sub) -> None:
    p = add_command(sub, "auto", "The best submission a time budget buys: measured plan, grouped cv members, "
                                 "TTA/ensemble/biases kept only where they pay.", cmd_auto, EXAMPLE)
    p.add_argument("data", help="labelled images: a folder of class folders or a CSV (path,label[,group])")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="dotted.key=value config overrides")
    p.add_argument("--time", required=True, metavar="DURATION", help="the budget, e.g. 30m, 2h, 1h30m or seconds")
    p.add_argument("--preset", default="medium", choices=["fast", "medium", "best"],
                   help="fast: one member, 5 or 4 folds; medium: up to 2 members; best: up to 3 diverse members. "
                        "A budget that buys about one run trains that one run (whatever the preset)")
    p.add_argument("--test", metavar="DIR", help="unlabelled images to predict into submission.csv")
    p.add_argument("--config", help="a YAML config the members start from")
    p.add_argument("--out", help="the auto folder (default: output.dir/auto-DATA); same folder + arguments resumes")
    p.add_argument("--models", help="comma-separated candidate backbones (default: the preset's, with weights here)")
    p.add_argument("--sizes", help="comma-separated candidate image sizes (default: the preset's)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export of the final model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_auto(args) -> int:
    import podium
    from podium.errors import PodiumError

    for item in args.items:
        if "=" not in item:
            raise PodiumError(f"unexpected argument {item!r}: give DATA once, then dotted.key=value overrides")
    sizes = None
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            raise PodiumError(f"--sizes {args.sizes!r}: expected whole numbers separated by commas, e.g. 64,96") from None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    out = console()
    r = podium.auto(args.data, time=args.time, preset=args.preset, test=args.test, out=args.out, config=args.config,
                    overrides=args.items, models=models, sizes=sizes, export=not args.no_export,
                    progress=not args.quiet, log=lambda *a: out.print(*a, markup=False))
    s = r.summary
    rows = {"plan": s["plan_text"], "final": f"{s['final']['kind']} {s['final']['name']}",
            "OOF macro F1": s["oof_macro_f1"], "ensemble": s["final"]["ensemble"],
            "biases": "kept" if s["biases"]["kept"] else "dropped",
            "time": f"{s['spent_s']:.0f}s of {s['budget_s']:.0f}s"}
    if s.get("submission"):
        rows["submission"] = s["submission"]
    rows["export"] = s["export"]
    rows["folder"] = str(r.dir)
    table("podium auto", rows, out)
    return 0
