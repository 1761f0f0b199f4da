"""What a study leaves behind: trials table, best config, study.json, the plots page,
and the live table shown while it runs. All of it is read back from the storage,
so any worker (or a later call) writes the same files for the whole study."""
from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import pandas as pd

from podium.durations import fmt_duration
from podium.fileio import write_csv, write_json, write_text
from podium.schema import config_to_yaml, deep_merge, validate_config
from podium.tuning.results import TuneResult, redact, retry_callback_class
from podium.tuning.space import apply_values

TRIALS_FILE = "trials.csv"
BEST_FILE = "best_config.yaml"
SUMMARY_FILE = "study.json"
REPORT_FILE = "report.html"


def trials_frame(study, settings) -> pd.DataFrame:
    """One row per trial: number, state, value, params, duration, epochs run, run folder, error."""
    retried_from = retry_callback_class().retried_trial_number
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration else None
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "duration_s": None if duration is None else round(duration, 2),
               "epochs_run": t.user_attrs.get("epochs_run")}
        row.update({p.key: t.params.get(p.key) for p in settings.params})
        row.update({"run_dir": t.user_attrs.get("run_dir"), "retry_of": retried_from(t),
                    "error": t.user_attrs.get("error")})
        rows.append(row)
    columns = ["number", "state", "value", "duration_s", "epochs_run", *[p.key for p in settings.params],
               "run_dir", "retry_of", "error"]
    return pd.DataFrame(rows, columns=columns)


def best_config(study, settings):
    """The best trial's full config, with its output going to a normal run folder (not the study)."""
    base_cfg = validate_config(settings.base)
    raw = apply_values(settings.base, {p.key: study.best_trial.params[p.key] for p in settings.params})
    raw = deep_merge(raw, {"output": {"dir": base_cfg.output.dir, "name": f"{settings.study_name}-best"}})
    return validate_config(raw)


def write_outputs(study, settings):
    """trials.csv, best_config.yaml, study.json and report.html for the whole study."""
    from optuna.trial import TrialState

    out = settings.study_dir
    out.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, settings)
    trials_csv = write_csv(out / TRIALS_FILE, frame)
    counts = {s.name: int((frame["state"] == s.name).sum()) for s in TrialState if (frame["state"] == s.name).any()}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best_path = best = None
    if complete:
        best = study.best_trial
        header = (f"# best trial {best.number} of study {settings.study_name!r}: {settings.monitor} = {best.value:.6f}\n"
                  f"# params: {best.params}\n# retrain: podium train {out / BEST_FILE}\n")
        best_path = write_text(out / BEST_FILE, header + config_to_yaml(best_config(study, settings)))
    report = write_report(study, settings, frame)
    write_json(out / SUMMARY_FILE, {
        "study": settings.study_name, "storage": _public_url(settings.storage_url), "direction": settings.direction,
        "objective": settings.monitor, "folds": settings.folds, "trials_target": settings.trials,
        "sampler": settings.sampler, "pruner": settings.pruner, "seed": settings.seed, "counts": counts,
        "best_trial": best.number if best else None, "best_value": best.value if best else None,
        "best_params": best.params if best else {}, "epochs_run_total": _epochs_total(frame),
        "search": {p.key: _describe_param(p) for p in settings.params},
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return TuneResult(out, settings.study_name, _public_url(settings.storage_url), best.number if best else None,
                      best.value if best else None, dict(best.params) if best else {}, best_path, trials_csv,
                      report, counts)


def _public_url(url: str) -> str:
    return redact(url)


def _epochs_total(frame: pd.DataFrame) -> int:
    return int(pd.to_numeric(frame["epochs_run"], errors="coerce").fillna(0).sum())


def _describe_param(p) -> dict:
    if p.kind == "categorical":
        return {"choices": list(p.choices)}
    return {"type": p.kind, "low": p.low, "high": p.high, "log": p.log, **({"step": p.step} if p.step else {})}


# ---------------------------------------------------------------- plots page


def write_report(study, settings, frame: pd.DataFrame) -> Path:
    """One offline HTML page: Optuna's plotly figures with plotly.js embedded once."""
    from podium.reports.html import table_html

    sections, first = [], True
    for title, make in _plots():
        try:
            fig = make(study)
            if not fig.data:
                raise ValueError("no trial has data for this plot yet")
            body = fig.to_html(full_html=False, include_plotlyjs=first)
            first = False
        except Exception as exc:  # e.g. importances need two finished trials with different params
            body = f"<p class='note'>not available: {html.escape(str(exc))}</p>"
        if title == "Parameter importances":
            body = f"<p class='note'>{_importance_note(int((frame['state'] == 'COMPLETE').sum()))}</p>\n" + body
        sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    best = f"best trial {study.best_trial.number}: {study.best_value:.4f}" if any(
        frame["state"] == "COMPLETE") else "no completed trial yet"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>study {html.escape(settings.study_name)}</title>"
            "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:24px}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d9dee7;padding:3px 8px}"
            ".note{color:#5b6575}</style></head><body>"
            f"<h1>Study {html.escape(settings.study_name)}</h1><p class='note'>{html.escape(settings.monitor)} "
            f"({settings.direction}), {len(frame)} trials, {html.escape(best)}</p>"
            + "\n".join(sections) + "<h2>Trials</h2>" + table_html(frame) + "</body></html>")
    return write_text(settings.study_dir / REPORT_FILE, page)


def _importance_note(complete: int) -> str:
    """How much an importance plot can be trusted: fANOVA fits a forest to the completed trials,
    and with a handful of them the bars are mostly noise."""
    note = f"These importances rest on {complete} completed trial{'s' if complete != 1 else ''}"
    if complete < 20:
        return note + ": too few to rank parameters reliably (a few dozen trials are needed); read them as a hint."
    return note + "."


def _plots():
    from optuna import visualization as vis

    return [("Optimization history", vis.plot_optimization_history),
            ("Parameter importances", vis.plot_param_importances),
            ("Parallel coordinates", vis.plot_parallel_coordinate),
            ("Intermediate values (per epoch)", vis.plot_intermediate_values)]


# ---------------------------------------------------------------- live table


def trials_table(study, settings, last: int = 15):
    """A rich table of the latest trials with the best so far, for the live display."""
    from rich.table import Table

    frame = trials_frame(study, settings)
    done = frame[frame["state"] == "COMPLETE"]
    title = f"study {settings.study_name}: {int(frame['state'].isin(['COMPLETE', 'PRUNED']).sum())}/{settings.trials} finished"
    if len(done):
        best = done.loc[done["value"].idxmax() if settings.direction == "maximize" else done["value"].idxmin()]
        title += f", best trial {int(best['number'])} = {best['value']:.4f}"
    table = Table(title=title, header_style="bold")
    for column in ("#", "state", settings.monitor, "epochs", "wall time", *[p.key for p in settings.params], "note"):
        table.add_column(column, overflow="fold")
    for _, row in frame.tail(last).iterrows():
        cells = [str(row["number"]), row["state"], _fmt(row["value"]), _fmt(row["epochs_run"]),
                 fmt_duration(row["duration_s"])]
        note = _fmt(row["error"])[:80] or (f"retry of {int(row['retry_of'])}" if _fmt(row["retry_of"]) else "")
        table.add_row(*cells, *[_fmt(row[p.key]) for p in settings.params], note)
    return table


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
