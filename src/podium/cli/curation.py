"""Data-centric commands: audit labels (and review them), pseudo-label, distil."""
from __future__ import annotations

from podium.cli.common import add_command, console, positive_int, table

EXAMPLES = {
    "audit": "podium audit runs/cv            (a cv run: every image, out-of-fold)\n"
             "  podium audit runs/exp --out audit/   (a single run: its validation part only)",
}


def register(sub) -> None:
    p = add_command(sub, "audit", "Find labels that are probably wrong (cleanlab on out-of-fold probabilities), "
                    "duplicates and outliers; write an offline review page that exports label_fixes.csv.",
                    cmd_audit, EXAMPLES["audit"])
    p.add_argument("run", help="a cv run (every image is judged) or a run (its validation part only)")
    p.add_argument("--out", help="output folder (default: RUN/audit, numbered when taken)")
    p.add_argument("--no-features", action="store_true",
                   help="skip the feature-space outliers (they run each fold's model over its images once)")
    p.add_argument("--max-review", type=positive_int, default=300, metavar="N",
                   help="cards per section of the review page, most suspicious first (default 300)")


def cmd_audit(args) -> int:
    import podium

    out = console()
    result = podium.audit(args.run, out=args.out, features=not args.no_features, max_review=args.max_review,
                          log=out.print)
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
    table(f"audit of {s['source']}", rows, out)
    return 0
