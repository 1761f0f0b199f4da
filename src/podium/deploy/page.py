"""The page `podium serve` shows at ``/``: drop or pick images, see each with its top-k bars.

Self-contained (inline CSS and JavaScript, no CDN, no external fonts), so it
works offline and behind any firewall; it talks only to the server's own
``/predict``.
"""
from __future__ import annotations

import html

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>podium: __TITLE__</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2433; }
  main { max-width: 760px; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  .sub { color: #5b6475; margin: 0 0 1rem; }
  #drop { border: 2px dashed #9aa4b8; border-radius: 10px; padding: 2rem; text-align: center; background: #fff;
          cursor: pointer; }
  #drop.over { border-color: #2f6fed; background: #eef3ff; }
  #key { margin: .8rem 0; display: none; }
  #error { color: #b3261e; margin: .8rem 0; min-height: 1.2em; }
  .result { display: flex; gap: 1rem; align-items: flex-start; background: #fff; border-radius: 10px;
            padding: 1rem; margin: 1rem 0; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
  .result img { width: 180px; height: 180px; object-fit: contain; background: #eceef2; border-radius: 6px; }
  .bars { flex: 1; }
  .file { font-weight: 600; margin-bottom: .4rem; word-break: break-all; }
  .row { display: grid; grid-template-columns: 9rem 1fr 4.2rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .track { background: #e3e7ee; border-radius: 4px; height: 14px; }
  .fill { background: #2f6fed; border-radius: 4px; height: 14px; }
  .file + .row .fill { background: #1a9e5c; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  #status { color: #5b6475; margin: .8rem 0 0; min-height: 1.2em; }
  #drop[aria-busy="true"] { opacity: .6; cursor: progress; }
</style>
</head>
<body>
<main>
  <h1>podium &middot; __TITLE__</h1>
  <p class="sub">Drop images here or pick them; each is shown with its top __TOP_K__ most probable classes.</p>
  <div id="key"><label>API key <input id="apikey" type="password" autocomplete="off"></label></div>
  <div id="drop" tabindex="0">Drop images here, or click to choose
    <input id="picker" type="file" accept="image/*" multiple hidden>
  </div>
  <div id="status" aria-live="polite"></div>
  <div id="error" role="alert"></div>
  <div id="results"></div>
</main>
<script>
"use strict";
const KEY_REQUIRED = __KEY_REQUIRED__;
const drop = document.getElementById("drop");
const picker = document.getElementById("picker");
const results = document.getElementById("results");
const errorBox = document.getElementById("error");
const statusBox = document.getElementById("status");
const TOP_K = __TOP_K__;
if (KEY_REQUIRED) document.getElementById("key").style.display = "block";

function element(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function show(group, file, prediction) {
  const box = element("div", "result");
  const img = element("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  const bars = element("div", "bars");
  bars.appendChild(element("div", "file", file.name));
  for (const item of prediction.top) {
    const row = element("div", "row");
    row.appendChild(element("span", "label", item["class"]));
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = (100 * item.probability).toFixed(1) + "%";
    track.appendChild(fill);
    row.appendChild(track);
    row.appendChild(element("span", "pct", (100 * item.probability).toFixed(1) + "%"));
    bars.appendChild(row);
  }
  box.appendChild(img);
  box.appendChild(bars);
  group.appendChild(box);
}

async function predict(files) {
  errorBox.textContent = "";
  const images = Array.from(files).filter(f => f.size > 0);
  if (!images.length) { errorBox.textContent = "no file to send"; return; }
  const form = new FormData();
  for (const f of images) form.append("files", f, f.name);
  const headers = {};
  const key = document.getElementById("apikey").value;
  if (key) headers["X-API-Key"] = key;
  drop.setAttribute("aria-busy", "true");
  statusBox.textContent = "predicting " + images.length + (images.length === 1 ? " image" : " images") + "\u2026";
  try {
    const response = await fetch("predict?top_k=" + TOP_K, { method: "POST", body: form, headers });
    const body = await response.json();
    if (!response.ok) { errorBox.textContent = body.error || ("error " + response.status); return; }
    // the newest request on top, its files in the order they were picked
    const group = element("div", "request");
    body.predictions.forEach((p, i) => show(group, images[i], p));
    results.prepend(group);
  } catch (err) {
    errorBox.textContent = "the server did not answer: " + err;
  } finally {
    drop.removeAttribute("aria-busy");
    statusBox.textContent = "";
  }
}

drop.addEventListener("click", () => picker.click());
drop.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") picker.click(); });
picker.addEventListener("change", () => { predict(picker.files); picker.value = ""; });
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", e => predict(e.dataTransfer.files));
window.addEventListener("dragover", e => e.preventDefault());
window.addEventListener("drop", e => e.preventDefault());
</script>
</body>
</html>
"""


def page_html(title: str, *, api_key_required: bool = False, top_k: int = 5) -> str:
    """The page for a model named ``title`` (escaped); shows an API-key field when the server needs one.
    ``top_k`` is the number of classes it asks for and says it shows (the model's class count at most)."""
    return (PAGE.replace("__TITLE__", html.escape(title))
            .replace("__KEY_REQUIRED__", "true" if api_key_required else "false")
            .replace("__TOP_K__", str(int(top_k))))
