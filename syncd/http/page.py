"""The status page served at ``/``: one self-contained HTML document.

No external scripts, fonts, images or CDNs (devices are often offline): its style and script
are inline, allowed by a Content-Security-Policy that names their hashes and nothing else
(``connect-src 'self'`` for the two JSON routes). The script fetches ``status.json`` and
``history.json`` (relative URLs, so the page also works behind a tunnel or a path prefix)
every REFRESH_MS and redraws the tables and the SVG sparklines in place, without reloading.
Every text from the daemon goes into the page with ``textContent``, never as markup.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_MS = 5000

STYLE = """
:root { color-scheme: light dark; --muted: #777; --bad: #c62828; --warn: #b26a00; --ok: #2e7d32;
        --line: #1565c0; --rule: #8884; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0 1em 2em; max-width: 72em; }
header { display: flex; gap: 1em; align-items: baseline; border-bottom: 1px solid var(--rule); }
h1 { font-size: 1.4em; margin: .6em 0; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; font-family: ui-monospace, monospace; }
.muted, #state { color: var(--muted); } #state.error { color: var(--bad); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2em .6em .2em 0; border-bottom: 1px solid var(--rule); vertical-align: top;
         overflow-wrap: break-word; }
#summary { font-size: 1.05em; margin: .8em 0 0; }
#summary .bad { color: var(--bad); } #summary .warn { color: var(--warn); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.paused td { color: var(--warn); } td.failed.some { color: var(--bad); font-weight: bold; }
.sparks { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; min-width: 16em; flex: 1; } figcaption b { font-variant-numeric: tabular-nums; }
svg { width: 100%; height: 48px; border-bottom: 1px solid var(--rule); }
svg path { fill: none; stroke: var(--line); stroke-width: 1.5; vector-effect: non-scaling-stroke; }
ul { padding-left: 1.2em; } li { margin: .2em 0; } code { font-family: ui-monospace, monospace; }
li .reason { color: var(--bad); } li.note .reason, li.slow .reason { color: var(--warn); }
"""

SCRIPT = """
"use strict";
const REFRESH_MS = %(refresh)d, W = 300, H = 48;
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function cell(value, cls) { return el("td", cls ? {class: cls} : {}, value == null ? "\\u2013" : value); }
function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
}
function age(seconds) {
  if (seconds == null) return null;
  return seconds < 90 ? Math.round(seconds) + " s" : seconds < 5400 ? Math.round(seconds / 60) + " min"
    : (seconds / 3600).toFixed(1) + " h";
}
function when(iso) { return iso == null ? null : iso.replace("T", " "); }
async function getJSON(url) {
  const reply = await fetch(url, {cache: "no-store"});
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || reply.statusText);
  return body;
}
function rateText(t) {  // as syncd status words it: "unlimited", "configured limit 5/s", "1.3/s (why)"
  if (!t.rate_reason) return null;
  if (t.rate == null || t.rate_reason.startsWith("configured limit")) return t.rate_reason;
  return (+t.rate.toPrecision(6)) + "/s (" + t.rate_reason + ")";
}
function renderTargets(status) {
  const rows = status.targets.map((t) => {
    const state = t.paused ? "paused: " + t.paused : "ok";
    const row = el("tr", {"data-target": t.target, class: t.paused ? "paused" : ""},
      cell(t.target), cell(t.platform), cell(state, "state"),
      cell(rateText(t), "rate"),
      cell(when(t.last_success)), cell(t.last_error ? when(t.last_error_at) + ": " + t.last_error : null));
    return row;
  });
  $("targets").querySelector("tbody").replaceChildren(...rows);
}
function renderSummary(status) {
  let delivered = 0, pending = 0, failed = 0;
  for (const f of status.folders) for (const t of f.targets) {
    delivered += t.delivered; pending += t.pending; failed += t.failed;
  }
  const paused = status.targets.filter((t) => t.paused).length;
  $("summary").replaceChildren(delivered + " delivered \u00b7 " + pending + " pending \u00b7 ",
    el("span", {class: failed ? "bad" : ""}, failed + " failed"),
    ...(paused ? [" \u00b7 ", el("span", {class: "warn"}, paused + (paused > 1 ? " targets" : " target") + " paused")]
      : []));
}
function renderFolders(status) {
  const blocks = [], problems = [];
  for (const f of status.folders) {
    const deleted = f.deleted_after_upload ? ", " + f.deleted_after_upload + " deleted after upload" : "";
    blocks.push(el("h3", {}, f.folder), el("p", {class: "muted"},
      f.items + " items, " + f.settling + " settling" + deleted));
    const head = el("tr", {}, el("th", {}, "target"), ...["delivered", "pending", "in flight", "failed"].map(
      (h) => el("th", {class: "n"}, h)), el("th", {}, "oldest pending"));
    const rows = f.targets.map((t) => el("tr", {"data-folder": f.folder, "data-target": t.target},
      cell(t.target), cell(t.delivered, "n delivered"), cell(t.pending, "n pending"),
      cell(t.in_flight, "n in_flight"), cell(t.failed, "n failed" + (t.failed ? " some" : "")),
      cell(age(t.oldest_pending_seconds), "oldest")));
    blocks.push(el("table", {class: "counts"}, el("thead", {}, head), el("tbody", {}, ...rows)));
    for (const t of f.targets) {
      for (const item of t.failed_items) problems.push(el("li", {class: "failed", "data-key": item.key},
        el("code", {}, item.key), " \\u2192 " + t.target + ": ", el("span", {class: "reason"}, item.reason)));
      if (t.failed > t.failed_items.length) problems.push(el("li", {class: "more"},
        "\\u2026 and " + (t.failed - t.failed_items.length) + " more failed on " + t.target + " (syncd status --all)"));
      for (const item of t.not_representable) problems.push(el("li", {class: "note", "data-key": item.key},
        el("code", {}, item.key), " \\u2192 " + t.target + ": ", el("span", {class: "reason"}, item.note)));
    }
    for (const item of f.labels_failed) problems.push(el("li", {class: "labels", "data-key": item.key},
      el("code", {}, item.key), " delivered without its labels: ", el("span", {class: "reason"}, item.reason)));
    for (const item of f.not_settling) problems.push(el("li", {class: "slow", "data-key": item.key},
      el("code", {}, item.key), ": ", el("span", {class: "reason"}, item.note)));
  }
  $("folders").replaceChildren(...blocks);
  $("problems").replaceChildren(...(problems.length ? problems : [el("li", {class: "muted"}, "none")]));
}
function spark(id, points, format) {
  const figure = $(id), path = figure.querySelector("path");
  figure.querySelector(".now").textContent = points.length ? format(points[points.length - 1][1]) : "\\u2013";
  if (points.length < 2) { path.setAttribute("d", ""); return; }
  const t0 = points[0][0], span = Math.max(points[points.length - 1][0] - t0, 1e-9);
  const top = Math.max(...points.map((p) => p[1])) || 1;
  path.setAttribute("d", points.map((p, i) => (i ? "L" : "M") + ((p[0] - t0) / span * W).toFixed(1) + " "
    + (H - 2 - p[1] / top * (H - 4)).toFixed(1)).join(" "));
  figure.querySelector(".max").textContent = "max " + format(top);
}
function renderHistory(history) {
  const s = history.samples, rates = [], sent = [];
  for (let i = 1; i < s.length; i++) {
    const dt = s[i].at - s[i - 1].at;
    if (dt <= 0) continue;
    rates.push([s[i].at, Math.max(0, s[i].delivered - s[i - 1].delivered) / dt * 60]);
    sent.push([s[i].at, Math.max(0, s[i].bytes - s[i - 1].bytes) / dt]);
  }
  spark("spark-backlog", s.map((p) => [p.at, p.backlog]), (v) => String(Math.round(v)));
  spark("spark-throughput", rates, (v) => v.toFixed(v < 10 ? 1 : 0) + "/min");
  spark("spark-bytes", sent, (v) => bytes(v) + "/s");
  $("span").textContent = s.length > 1 ? "(" + age(s[s.length - 1].at - s[0].at) + " recorded)" : "";
}
async function refresh() {
  try {
    const [status, history] = await Promise.all([getJSON("status.json"), getJSON("history.json")]);
    renderSummary(status); renderTargets(status); renderFolders(status); renderHistory(history);
    $("state").className = ""; $("state").textContent = "as of " + status.generated_at;
  } catch (error) {
    $("state").className = "error";
    $("state").textContent = "cannot read the status: " + error.message + " (retrying)";
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
""" % {"refresh": REFRESH_MS}

BODY = """<header><h1>syncd</h1><span id="state">loading\u2026</span></header>
<main>
<p id="summary"></p>
<h2>Last hour <span id="span" class="muted"></span></h2>
<div class="sparks">
<figure id="spark-backlog"><figcaption>backlog <b class="now"></b> <span class="max muted"></span></figcaption>
<svg viewBox="0 0 300 48" preserveAspectRatio="none" role="img" aria-label="backlog"><path d=""/></svg></figure>
<figure id="spark-throughput"><figcaption>delivered <b class="now"></b> <span class="max muted"></span></figcaption>
<svg viewBox="0 0 300 48" preserveAspectRatio="none" role="img" aria-label="delivered per minute"><path d=""/></svg>
</figure>
<figure id="spark-bytes"><figcaption>sent <b class="now"></b> <span class="max muted"></span></figcaption>
<svg viewBox="0 0 300 48" preserveAspectRatio="none" role="img" aria-label="bytes sent per second"><path d=""/></svg>
</figure>
</div>
<h2>Targets</h2>
<table id="targets"><thead><tr><th>target</th><th>platform</th><th>state</th><th>rate</th><th>last success</th>
<th>last error</th></tr></thead><tbody></tbody></table>
<h2>Folders</h2>
<div id="folders"></div>
<h2>Failed items and notes</h2>
<ul id="problems"></ul>
<noscript>This page needs JavaScript to refresh itself; <a href="status.json">status.json</a> has the same figures.
</noscript>
</main>"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>syncd</title>
<style>{STYLE}</style>
</head>
<body>
{BODY}
<script>{SCRIPT}</script>
</body>
</html>
""".encode()

HEADERS = {
    "Content-Security-Policy": (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
                                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
}
