// Vigil collector dashboard: plain JavaScript, no dependencies, nothing loaded from elsewhere.
// Everything shown comes from the JSON API beside it (relative URLs, so it works behind a
// reverse proxy under any path) and is inserted as text, never as HTML: measurement inputs
// and reasons come from probes and must not be able to inject markup.
"use strict";

const REFRESH_MS = 30000;
const PAGE = 50;
let cursor = null;
let timer = null;

function $(id) { return document.getElementById(id); }

function filters() {
  const params = new URLSearchParams();
  for (const el of $("filters").elements) {
    if (!el.name || !el.value.trim()) continue;
    params.set(el.name, el.value.trim());
  }
  return params;
}

// The filters live in the page's URL, so a view can be bookmarked and shared.
const AGG_FILTERS = ["probe_cc", "probe_asn", "domain", "category_code", "test_name",
  "blocking", "since", "until"];
const STALE_MS = 15 * 60 * 1000;

function fromURL() {
  const params = new URLSearchParams(window.location.search);
  for (const el of $("filters").elements) {
    if (el.name && params.has(el.name)) el.value = params.get(el.name);
  }
}

function toURL() {
  const query = filters().toString();
  const url = query ? `?${query}` : window.location.pathname;
  window.history.replaceState(null, "", url);
  $("permalink").href = url;
}

function aggFilters() {
  const all = filters();
  const out = new URLSearchParams();
  for (const [k, v] of all) if (AGG_FILTERS.includes(k)) out.set(k, v);
  return out;
}

async function api(path, params) {
  const url = params && [...params].length ? `${path}?${params}` : path;
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const detail = body && body.detail ? body.detail : resp.statusText;
    const param = body && body.param ? `${body.param}: ` : "";
    throw new Error(`${param}${detail} (HTTP ${resp.status})`);
  }
  return body;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function clear(table) {
  const body = table.tBodies[0];
  while (body.firstChild) body.removeChild(body.firstChild);
  return body;
}

function empty(body, columns, text) {
  const tr = body.insertRow();
  const td = cell(tr, text, "muted");
  td.colSpan = columns;
}

function when(iso) {
  if (!iso) return "";
  return iso.replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "");
}

function showError(err) {
  const p = $("error");
  if (err) {
    p.textContent = String(err.message || err);
    p.hidden = false;
  } else {
    p.hidden = true;
  }
}

function countsTable(id, rows, total) {
  const body = clear($(id));
  if (!rows.length) { empty(body, 3, "nothing yet"); return; }
  const top = Math.max(...rows.map((r) => r.count), 1);
  for (const r of rows) {
    const tr = body.insertRow();
    cell(tr, r.key === "" ? "(none)" : r.key, `key status-${r.key}`);
    cell(tr, r.count, "num");
    const barCell = cell(tr, "", "bar");
    const bar = document.createElement("span");
    bar.style.width = `${Math.round((100 * r.count) / top)}%`;
    bar.title = total ? `${((100 * r.count) / total).toFixed(1)}%` : "";
    barCell.appendChild(bar);
  }
}

async function loadStats() {
  const data = await api("api/v1/stats", filters());
  $("total").textContent = `(${data.total} measurements)`;
  countsTable("count-verdict", data.counts.verdict, data.total);
  countsTable("count-country", data.counts.country, data.total);
  countsTable("count-network", data.counts.network, data.total);
  countsTable("count-domain", data.counts.domain, data.total);
}

function measurementRow(body, m) {
  const tr = body.insertRow();
  cell(tr, when(m.measurement_start_time));
  cell(tr, m.test_name);
  cell(tr, m.input, "input");
  cell(tr, m.probe_cc);
  cell(tr, m.probe_asn);
  cell(tr, m.status, `status-${m.status}`);
  cell(tr, m.blocking);
  cell(tr, m.reason);
  const td = cell(tr, "");
  const page = document.createElement("a");
  page.href = `measurement/${encodeURIComponent(m.measurement_id)}`;
  page.textContent = "read";
  page.className = "read";
  td.appendChild(page);
  td.appendChild(document.createTextNode(" · "));
  const link = document.createElement("a");
  link.href = `api/v1/measurements/${encodeURIComponent(m.measurement_id)}`;
  link.textContent = "JSON";
  td.appendChild(link);
}

async function loadMeasurements(append) {
  const params = filters();
  params.set("limit", String(PAGE));
  if (append && cursor) params.set("cursor", cursor);
  const data = await api("api/v1/measurements", params);
  const table = $("measurements");
  const body = append ? table.tBodies[0] : clear(table);
  if (!append && !data.results.length) empty(body, 9, "no measurements match");
  for (const m of data.results) measurementRow(body, m);
  cursor = data.next_cursor;
  $("more").hidden = !cursor;
}

async function loadOutages() {
  const data = await api("api/v1/outages", new URLSearchParams({ limit: "20" }));
  const body = clear($("outages"));
  if (!data.outages.length) {
    empty(body, 6, data.detector.running ? "no outages detected" : "detector not running here");
    return;
  }
  for (const e of data.outages) {
    const tr = body.insertRow();
    cell(tr, e.group);
    cell(tr, when(e.start));
    cell(tr, e.ongoing ? "ongoing" : when(e.end), e.ongoing ? "status-blocked" : "");
    cell(tr, e.affected.length, "num");
    cell(tr, `${e.min_share.toFixed(2)} / ${e.baseline_share.toFixed(2)}`, "num");
    cell(tr, e.confirmed_by.length, "num");
  }
}

async function loadSlowdowns() {
  const data = await api("api/v1/slowdowns", new URLSearchParams({ limit: "20" }));
  const body = clear($("slowdowns"));
  if (!data.slowdowns.length) {
    empty(body, 5, data.detector.running ? "no slowdowns detected" : "detector not running here");
    return;
  }
  for (const e of data.slowdowns) {
    const tr = body.insertRow();
    cell(tr, e.group);
    cell(tr, when(e.start_time));
    cell(tr, e.ongoing ? "ongoing" : when(e.end_time), e.ongoing ? "status-throttled" : "");
    cell(tr, e.affected.length, "num");
    cell(tr, `${Math.round(100 * e.median_ratio)} %`, "num");
  }
}

async function loadRejections() {
  const data = await api("api/v1/rejections", new URLSearchParams({ recent: "0" }));
  $("rejected-total").textContent = `(${data.total})`;
  const rows = Object.entries(data.counts).map(([key, count]) => ({ key, count }));
  countsTable("rejections", rows, data.total);
}

function loadCharts() {
  for (const by of ["country", "network"]) {
    const params = aggFilters();
    params.set("by", by);
    $(`chart-${by}`).src = `charts/share.svg?${params}`;
  }
}

function percent(x) { return `${(100 * x).toFixed(0)}%`; }

async function loadMatrix() {
  const params = aggFilters();
  params.set("by", "domain,network");
  params.set("limit", "2000");
  const table = $("matrix");
  const head = table.tHead.rows[0];
  while (head.firstChild) head.removeChild(head.firstChild);
  const body = clear(table);
  let data;
  try {
    data = await api("api/v1/aggregation", params);
  } catch (err) {
    empty(body, 1, `matrix unavailable: ${err.message}`);
    return;
  }
  const networks = [...new Set(data.results.map((r) => r.network))].sort();
  const domains = [...new Set(data.results.map((r) => r.domain))].sort();
  const cells = new Map(data.results.map((r) => [`${r.domain} ${r.network}`, r]));
  const th = document.createElement("th");
  th.textContent = "Domain";
  head.appendChild(th);
  for (const n of networks) {
    const h = document.createElement("th");
    h.textContent = n;
    head.appendChild(h);
  }
  if (!domains.length) { empty(body, 1, "no measurements match"); return; }
  for (const d of domains) {
    const tr = body.insertRow();
    cell(tr, d || "(no input)", "key");
    for (const n of networks) {
      const r = cells.get(`${d} ${n}`);
      if (!r) { cell(tr, "", "muted"); continue; }
      const share = r.blocked_share + r.throttled_share;
      const techniques = Object.keys(r.techniques);
      const td = cell(tr, r.total ? `${percent(share)} ${techniques.join("+")}`.trim() : "");
      td.className = share >= 0.5 ? "cell-high" : share > 0 ? "cell-some" : "cell-none";
      td.title = `${d} on ${n}: ${Object.entries(r.counts).map(([k, v]) => `${k} ${v}`)
        .join(", ")} (of ${r.total})`;
      td.dataset.domain = d;
      td.dataset.network = n;
    }
  }
}

function health(p) {
  if (p.revoked_at) return "revoked";
  if (!p.last_seen) return "never seen";
  if (p.status === "offline") return "offline";
  const age = Date.now() - Date.parse(p.last_seen);
  return age > STALE_MS ? "silent" : "online";
}

async function loadProbes() {
  const data = await api("api/v1/probes", new URLSearchParams({ revoked: "false", limit: "50" }));
  $("probe-total").textContent = `(${data.total} enrolled)`;
  const body = clear($("probes"));
  if (!data.probes.length) { empty(body, 5, "no probes enrolled"); return; }
  for (const p of data.probes) {
    const tr = body.insertRow();
    cell(tr, p.probe_id, "mono");
    cell(tr, [p.probe_cc, p.probe_asn].filter(Boolean).join(" "));
    const h = health(p);
    cell(tr, h, `probe-${h.replace(" ", "-")}`);
    cell(tr, when(p.last_seen));
    cell(tr, p.measurements, "num");
  }
}

async function loadHealth() {
  const badge = $("health");
  try {
    const resp = await fetch("healthz", { headers: { Accept: "application/json" } });
    const body = await resp.json();
    badge.textContent = body.status;
    badge.className = `badge health-${body.status}`;
    badge.title = body.failure || (body.ingest.enabled
      ? `ingest ${body.ingest.connected ? "connected" : "not connected"}` : "ingest off");
  } catch (err) {
    badge.textContent = "unreachable";
    badge.className = "badge health-failing";
  }
}

function updateExportLink() {
  const params = filters();
  params.set("format", "jsonl");
  $("export").href = `api/v1/export?${params}`;
}

async function refresh() {
  toURL();
  updateExportLink();
  loadCharts();
  const results = await Promise.allSettled([
    loadStats(), loadMeasurements(false), loadMatrix(), loadOutages(), loadSlowdowns(),
    loadRejections(), loadProbes(), loadHealth(),
  ]);
  const failed = results.find((r) => r.status === "rejected");
  showError(failed ? failed.reason : null);
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = $("autorefresh").checked ? setInterval(refresh, REFRESH_MS) : null;
}

document.addEventListener("DOMContentLoaded", () => {
  fromURL();
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
  $("filters").addEventListener("reset", () => setTimeout(refresh, 0));
  window.addEventListener("popstate", () => { fromURL(); refresh(); });
  $("more").addEventListener("click", () => loadMeasurements(true).catch(showError));
  $("autorefresh").addEventListener("change", schedule);
  refresh();
  schedule();
});
