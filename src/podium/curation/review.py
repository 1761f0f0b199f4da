"""The audit's offline review page: one card per issue, thumbnails, given vs suggested label and
confidence, and a keep / weight / relabel / drop choice per image or group.

Nothing is decided for the reader: every choice starts undecided, and only the
choices made are exported, as a ``label_fixes.csv`` for `task.label_fixes`
(the rows of the run's own fixes file come along, a new choice replacing an
earlier row for the same image and attribute). Choices survive a reload
(the browser's local storage) until exported. One self-contained file, the
page's only script inline: it opens from disk with no network.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from podium.reports.html import Page, Section, data_uri, esc, rgb_jpeg
from podium.tasks.fixes import ACTIONS, FIX_COLUMNS, LABEL, belief_weight, read_label_fixes

if TYPE_CHECKING:
    from podium.curation.audit import AuditData, View

THUMB = 96
MAX_GROUP_THUMBS = 7
SECTIONS = (("label", "Probably wrong labels"), ("group", "Groups: labels that belong to the whole group"),
            ("duplicate", "Duplicates with different labels or groups"), ("outlier", "Outliers"))

STYLE = """
main { padding-bottom: 72px; }
.toolbar { position: fixed; left: 0; right: 0; bottom: 0; z-index: 2; background: #fff; border-top: 2px solid var(--line);
           padding: 8px 28px; display: flex; gap: 12px; align-items: center; }
.toolbar button { font: inherit; padding: 4px 14px; border: 1px solid var(--accent); border-radius: 4px;
                  background: var(--accent); color: #fff; cursor: pointer; }
textarea#csv { width: 100%; height: 6em; font: 12px monospace; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px; font-size: 13px; }
.card.decided { border-color: var(--accent); background: #f3f7fd; }
.card img { width: 96px; height: 96px; object-fit: contain; border: 1px solid var(--line); margin: 0 4px 4px 0; }
.card .id { font-weight: 600; word-break: break-all; }
.card .labels { margin: 4px 0; }
.card .given { color: #a33; } .card .suggested { color: #1a7f37; }
.card select { width: 100%; margin-top: 4px; font: inherit; }
"""

SCRIPT = r"""
(function () {
  const info = JSON.parse(document.getElementById('audit-data').textContent);
  const selects = Array.from(document.querySelectorAll('select.choice'));
  const storeKey = 'podium-audit:' + info.key;
  const store = (() => { try { return window.localStorage; } catch (e) { return null; } })();
  function restore() {
    let saved = {};
    try { saved = JSON.parse((store && store.getItem(storeKey)) || '{}'); } catch (e) { saved = {}; }
    selects.forEach(s => { if (saved[s.dataset.key] !== undefined) { s.value = saved[s.dataset.key]; } });
  }
  function save() {
    if (!store) { return; }
    const saved = {};
    selects.forEach(s => { if (s.value) { saved[s.dataset.key] = s.value; } });
    try { store.setItem(storeKey, JSON.stringify(saved)); } catch (e) { /* storage full or blocked */ }
  }
  function decision(s) {
    const i = s.value.indexOf(':');
    const action = i < 0 ? s.value : s.value.slice(0, i);
    return {id: s.dataset.id, attribute: action === 'drop' || action === 'weight' ? '' : s.dataset.attribute,
            new_value: action === 'relabel' || action === 'weight' ? s.value.slice(i + 1) : '', action: action};
  }
  function clash(a, b) {
    if (a.id !== b.id) { return false; }
    if (a.action === 'drop' || b.action === 'drop') { return true; }
    if (a.action === 'weight' || b.action === 'weight') { return a.action === b.action; }
    return a.attribute === b.attribute || !a.attribute || !b.attribute || a.attribute === 'label' ||
           b.attribute === 'label';
  }
  function rows() {
    let out = info.baseline.slice();
    const replaced = [];
    selects.filter(s => s.value).forEach(s => {
      const d = decision(s);
      // two weight choices for one id (two attributes in doubt) multiply, as the audit's suggestions do
      const twin = out.find(r => r.page && r.action === 'weight' && d.action === 'weight' && r.id === d.id);
      if (twin) { twin.new_value = String(+(Number(twin.new_value) * Number(d.new_value)).toPrecision(2)); return; }
      out = out.filter(r => { const hit = clash(r, d); if (hit && r.page) { replaced.push(r.id); } return !hit; });
      d.page = true;
      out.push(d);
    });
    return {rows: out, replaced: replaced};
  }
  function field(v) {
    const text = String(v);
    return /[",\n\r]|^\s|\s$/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function csv(list) {
    return [info.columns.join(',')].concat(list.map(r => info.columns.map(c => field(r[c] || '')).join(','))).join('\n') + '\n';
  }
  function refresh() {
    const result = rows();
    const counts = {keep: 0, weight: 0, relabel: 0, drop: 0};
    selects.forEach(s => {
      s.closest('.card').classList.toggle('decided', selects.some(o => o.value && o.closest('.card') === s.closest('.card')));
      if (s.value) { counts[decision(s).action] += 1; }
    });
    document.getElementById('csv').value = csv(result.rows);
    document.getElementById('status').textContent =
      `${counts.keep} keep, ${counts.weight} weight, ${counts.relabel} relabel, ${counts.drop} drop chosen; ${result.rows.length} row(s) to export` +
      (info.baseline.length ? ` (${info.baseline.length} from ${info.fixes_file}, a new choice replacing the same image's row)` : '') +
      (result.replaced.length ? `; later choices replaced earlier ones for: ${[...new Set(result.replaced)].join(', ')}` : '');
    save();
  }
  document.getElementById('export').addEventListener('click', () => {
    refresh();
    const blob = new Blob([document.getElementById('csv').value], {type: 'text/csv'});
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'label_fixes.csv';
    document.body.appendChild(link);
    link.click();
    setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 2000);
  });
  selects.forEach(s => s.addEventListener('change', refresh));
  restore();
  refresh();
})();
"""

MAX_REVIEW = 300  # cards per section on review.html: the page stays light; issues.csv holds every one


def write_review_page(path: Path, data: AuditData, views: list[View], issues: pd.DataFrame, summary: dict, *,
                      max_review: int = MAX_REVIEW) -> Path:
    """review.html: the issues as cards (at most ``max_review`` per section, most suspicious first)."""
    baseline, fixes_file = _baseline_rows(data)
    page = Page("Label audit", data.note, style=STYLE, script=SCRIPT)
    _intro(page.section("How to review"), data, summary, fixes_file, max_review)
    page.sections[-1].raw('<div class="toolbar"><button id="export" type="button">Export label_fixes.csv</button>'
                          '<span id="status"></span></div><p class="note">What the export will write:</p>'
                          '<textarea id="csv" readonly aria-label="label_fixes.csv"></textarea>')
    classes = {v.name: v.classes for v in views}
    classes.setdefault(LABEL, list(data.classes))
    key = 0
    for kind, title in SECTIONS:
        chosen = issues[issues["kind"].str.startswith(kind)] if kind != "group" else \
            issues[issues["kind"].isin(["group_label", "group_disagrees"])]
        if kind == "label":
            chosen = chosen[chosen["kind"] == "label"]
        if chosen.empty:
            continue
        sec = page.section(f"{title} ({len(chosen)})")
        if len(chosen) > max_review:
            sec.note(f"showing the {max_review} most suspicious of {len(chosen)}; all are in issues.csv")
        cards = []
        for row in chosen.head(max_review).itertuples(index=False):
            card, key = _card(row, classes, key)
            cards.append(card)
        sec.raw('<div class="cards">' + "".join(cards) + "</div>")
    info = {"key": f"{data.dir.resolve()}|{summary.get('out_dir', '')}", "baseline": baseline,
            "fixes_file": fixes_file or "", "columns": [*FIX_COLUMNS, "action"]}
    page.sections[0].raw('<script type="application/json" id="audit-data">'
                         + json.dumps(info).replace("</", "<\\/") + "</script>")
    return page.write(path)


def _baseline_rows(data: AuditData) -> tuple[list[dict], str | None]:
    """The rows of the run's own fixes file: the next run needs them as well as the new choices."""
    fixes = data.cfg.task.label_fixes
    if not fixes or not Path(fixes).is_file():
        return [], fixes
    table = read_label_fixes(fixes)
    return [{c: str(r[c]) for c in [*FIX_COLUMNS, "action"]} for _, r in table.iterrows()], fixes


def _intro(sec: Section, data: AuditData, summary: dict, fixes_file: str | None, max_review: int) -> None:
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary["counts"].items()) or "no issues"
    sec.text(f"Found: {counts}.")
    if data.kind == "run":
        sec.warning("This audit saw only the run's validation images; the training images were not judged.")
    sec.text("Each card says what looks wrong and what the models suggest. Choose keep (the label is right), "
             "weight (keep the label but let it count less in training, as much as the folds believe it), "
             "relabel, or drop (leave the image or group out) where you are sure; leave the rest undecided. "
             "Export writes label_fixes.csv with exactly the choices made; train the next run with "
             "task.label_fixes=label_fixes.csv. Nothing changes before that, and choices stay in this browser "
             "until you export them.")
    if fixes_file:
        sec.note(f"The run was trained with task.label_fixes={fixes_file}: its rows are part of the export, and "
                 "a choice here replaces an earlier row for the same image (and attribute).")
    if summary.get("group_attributes"):
        sec.note("Judged per group (they never change within a group here): "
                 + ", ".join(summary["group_attributes"]) + ". A choice on a group card applies to all its images.")


def _card(row, classes: dict[str, list[str]], key: int) -> tuple[str, int]:
    paths = [p for p in str(row.path).split(";") if p] if isinstance(row.path, str) else []
    shown = paths[:MAX_GROUP_THUMBS]
    thumbs = "".join(f'<img src="{_thumb(p)}" alt="{esc(Path(p).name)}" title="{esc(p)}">' for p in shown)
    if len(paths) > len(shown):
        thumbs += f"<span>+{len(paths) - len(shown)} more</span>"
    body = [f'<div class="id">{esc(row.scope)} {esc(row.id)}</div>']
    if row.kind != "label":  # a label card says it all in its labels line
        body.append(f'<div class="detail">{esc(row.detail)}</div>')
    if row.kind in ("label", "group_label", "group_disagrees"):
        body.append(f'<div class="labels">{esc(row.attribute)}: <span class="given">{esc(row.given)}</span> &rarr; '
                    f'<span class="suggested">{esc(row.suggested)}</span> (p {float(row.p_suggested):.2f})</div>')
    attribute = str(row.attribute) if isinstance(row.attribute, str) and row.attribute else LABEL
    select, key = _select(row.id, attribute, classes.get(attribute, []), str(row.given), str(row.suggested or ""), key,
                          weight=_belief(row) if row.kind in ("label", "group_label") else None)
    controls = [select]
    if row.kind == "duplicate" and isinstance(row.other_id, str):
        thumbs += f'<img src="{_thumb(row.other_path)}" alt="{esc(Path(row.other_path).name)}" title="{esc(row.other_path)}">'
        other, key = _select(row.other_id, LABEL, classes.get(LABEL, []), str(row.suggested), str(row.given), key,
                             prefix=f"{row.other_id}: ")
        controls = [select.replace('<select ', f'<select title="{esc(row.id)}" ', 1), other]
        body.append(f'<div class="labels">{esc(row.id)}: {esc(row.given)}; {esc(row.other_id)}: {esc(row.suggested)}</div>')
    return f'<div class="card kind-{esc(row.kind)}"><div class="thumbs">{thumbs}</div>{"".join(body)}{"".join(controls)}</div>', key


def _belief(row) -> float | None:
    """The training weight the card offers (`belief_weight`, what `podium audit --suggest weight`
    writes), None where the card has no probabilities."""
    weight = float(belief_weight(float(row.p_given), float(row.p_suggested)))
    return weight if math.isfinite(weight) else None


def _select(ident: str, attribute: str, options: list[str], given: str, suggested: str, key: int,
            prefix: str = "", weight: float | None = None) -> tuple[str, int]:
    """An undecided choice: keep / keep with a training ``weight`` / relabel to another class (the
    suggestion first) / drop."""
    order = ([suggested] if suggested in options else []) + [c for c in options if c not in (suggested, given)]
    choices = [("", f"{prefix}undecided"), ("keep", f"{prefix}keep as labelled")]
    if weight is not None:
        choices.append((f"weight:{weight:.2g}", f"{prefix}keep, counted {weight:.2g}x in training"))
    choices += [(f"relabel:{c}", f"{prefix}relabel {attribute} to {c}") for c in order]
    choices.append(("drop", f"{prefix}drop (leave out)"))
    assert {c.partition(":")[0] for c, _ in choices if c} <= set(ACTIONS)
    opts = "".join(f'<option value="{esc(v)}">{esc(text)}</option>' for v, text in choices)
    select = (f'<select class="choice" data-key="{key}" data-id="{esc(ident)}" data-attribute="{esc(attribute)}">'
              f"{opts}</select>")
    return select, key + 1


def _thumb(path: str) -> str:
    from podium.reports.eda import thumbnail

    return data_uri(rgb_jpeg(thumbnail(str(path), THUMB)), "image/jpeg")
