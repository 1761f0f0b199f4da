"""`podium runs`: the local leaderboard of run folders, and `podium runs compare`.

Thin layer over `podium.reports.leaderboard` (pandas only, no torch).
"""
from __future__ import annotations

import sys

from podium.cli.common import add_command, console
from podium.errors import PodiumError

#: terminal table: header -> how a cell is made from the row and its headline (CSV and JSON carry every column)
SHOWN = {
    "name": lambda r, w: str(r["name"]), "kind": lambda r, w: str(r["kind"]),
    "score": lambda r, w: _fmt(r.get("score")), "score kind": lambda r, w: str(r.get("score_kind") or "-"),
    "status": lambda r, w: w["status"],
    "date": lambda r, w: r["date"] or "-", "model": lambda r, w: w["model"], "size": lambda r, w: w["image size"],
    "epochs": lambda r, w: w["epochs"], "val F1": lambda r, w: w["val macro F1"], "acc": lambda r, w: w["accuracy"],
    "worst class F1": lambda r, w: w["worst class F1"], "CV/OOF F1": lambda r, w: _fmt(r.get("cv_f1")),
    "time": lambda r, w: w["wall time"],
}


def _fmt(value) -> str:
    from podium.reports.leaderboard import fmt_score

    return fmt_score(value)


def cmd_runs(args) -> int:
    if args.paths and args.paths[0] == "compare":
        return _compare(args.paths[1:], args.format)
    if len(args.paths) > 1:
        raise PodiumError(f"podium runs takes one folder, got {len(args.paths)}: {' '.join(args.paths)}. "
                          "To compare runs: podium runs compare RUN_A RUN_B")
    from pathlib import Path

    import podium

    root = args.paths[0] if args.paths else "runs"
    if not args.paths and Path("studies").is_dir():  # `podium tune`'s default folder: studies beside runs
        table = podium.runs(["runs", "studies"] if Path("runs").is_dir() else "studies", args.where)
        root = "runs and studies"
    else:
        table = podium.runs(root, args.where)
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        _print_leaderboard(table, root)
    return 0


def _print_leaderboard(table, root: str) -> None:
    from rich import box
    from rich.table import Table

    from podium.reports.leaderboard import headline

    kinds = [k for k in table["score_kind"].dropna().unique()]
    order = ("best score first within each score kind: " + ", ".join(kinds) + " scores are not comparable"
             if len(kinds) > 1 else "best score first")
    out = Table(title=f"{len(table)} run(s) under {root}, {order}", header_style="bold",
                box=box.SIMPLE_HEAD, pad_edge=False)
    for column in SHOWN:
        out.add_column(column, overflow="fold", no_wrap=column in ("name", "status"))
    for row in table.astype(object).where(table.notna(), None).to_dict("records"):
        words = headline(row)
        out.add_row(*(make(row, words) for make in SHOWN.values()))
    _wide_console().print(out)


def _wide_console():
    con = console()
    if not con.is_terminal:  # piped: print tables whole rather than folded to 80 columns
        con.width = max(con.width, 160)
    return con


def _compare(paths: list[str], fmt: str) -> int:
    import podium

    result = podium.compare_runs(paths)
    if fmt == "json":
        import json

        print(json.dumps({"runs": result.names, **{name: json.loads(getattr(result, name).to_json(orient="records"))
                                                    for name in ("config", "metrics", "per_class")}}, indent=2))
        return 0
    if fmt == "csv":
        raise PodiumError("podium runs compare prints three tables; use --format table or json")
    con = _wide_console()
    for title, frame in (("config keys that differ", result.config), ("metrics", result.metrics),
                         ("per-class F1", result.per_class)):
        con.print(_rich_table(title, frame))
    return 0


def _rich_table(title: str, frame):
    from rich.table import Table

    from podium.durations import fmt_duration
    from podium.reports.leaderboard import fmt_score

    out = Table(title=title if len(frame) else f"{title}: none", header_style="bold")
    for column in frame.columns:
        out.add_column(str(column), overflow="fold")
    for record in frame.to_dict("records"):
        cells = []
        for column, value in record.items():
            if record.get("metric") == "wall_time_s" and column != "metric":
                cells.append(fmt_duration(value))
            elif isinstance(value, float):
                cells.append(f"{value:+.3f}" if str(column).startswith("delta") else fmt_score(value))
            else:
                cells.append("-" if value is None else str(value))
        out.add_row(*cells)
    return out


def register(sub) -> None:
    p = add_command(
        sub, "runs", "The leaderboard of every run, cv run and ensemble under a folder (best score first); "
                     "`podium runs compare A B [C...]` shows the config keys that differ and the metrics side "
                     "by side, with per-class F1 deltas.",
        cmd_runs, "podium runs\n  podium runs runs/ --where model.name=resnet18 --format csv\n"
                  "  podium runs compare runs/exp runs/exp-2")
    p.add_argument("paths", nargs="*", metavar="DIR | compare RUN...",
                   help="the folder to scan (default: runs), or `compare` followed by two or more run folders")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="keep rows whose config key or column has this value (model.name=resnet18, "
                        "status=failed, kind=cv); repeat to combine")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="a table for people (default), or CSV / JSON of every column on stdout")
