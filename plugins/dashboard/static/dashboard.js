// The ccproxy dashboard: reads GET <path>/events (Server-Sent Events, one JSON snapshot per push)
// with fetch, so that it can send the admin key as a header, and draws the snapshot. No framework.
"use strict";
const EVENTS = document.currentScript.src.replace(/dashboard\.js$/, "events");
const $ = (id) => document.getElementById(id);
let last = null;

const num = (n, digits = 0) => (n == null ? "–" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits }));
const secs = (s) => (s == null ? "–" : s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s");
const usd = (c) => (c == null ? "–" : "$" + Number(c).toFixed(c < 0.01 ? 5 : 2));
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function table(el, head, rows) {
  // Every value goes in as text: names come from clients.
  el.replaceChildren();
  const tr = el.insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
  for (const row of rows) {
    const r = el.insertRow();
    for (const cell of row) {
      const td = r.insertCell();
      if (cell && typeof cell === "object") { td.textContent = cell.text; td.className = cell.cls || ""; }
      else td.textContent = cell == null ? "" : String(cell);
    }
  }
}

function spark(el, values, color) {
  const max = Math.max(1, ...values);
  const w = 120 / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * w).toFixed(1)},${(46 - (v / max) * 44).toFixed(1)}`).join(" ");
  el.innerHTML = `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${points}"/>`;
}

function draw(s) {
  last = s;
  const scope = s.shared == null ? `worker ${s.worker}` : s.shared.error ? `worker ${s.worker} only: ${s.shared.error}`
    : `${s.shared.workers} worker${s.shared.workers === 1 ? "" : "s"} (seen by worker ${s.worker})`;
  $("status").textContent = `${scope} · up ${secs(s.uptime)} · ${num(s.totals.requests)} requests · updated ${clock(s.now)}`;
  $("rps").textContent = num(s.rps, 1);
  spark($("rps-chart"), s.series.requests, "var(--acc)");
  $("errors").textContent = num(s.totals.errors);
  spark($("err-chart"), s.series.errors, "var(--bad)");
  $("error-kinds").textContent = Object.entries(s.errors).map(([k, n]) => `${k} ${n}`).join(" · ");
  $("latency").textContent = `${secs(s.latency.p50)} / ${secs(s.latency.p99)}`;
  $("ttfb").textContent = `${secs(s.ttfb.p50)} / ${secs(s.ttfb.p99)}`;
  $("inflight").textContent = num(s.in_flight.count);
  table($("streams"), ["model", "provider", "key", "age"],
    s.in_flight.streams.map((f) => [f.model, f.provider, f.key, secs(f.age)]));
  $("cost").textContent = usd(s.totals.cost);
  $("tokens").textContent = `${num(s.totals.input_tokens)} in · ${num(s.totals.output_tokens)} out`;
  $("fallbacks").textContent = `${num(s.fallbacks.count)}` + (s.fallbacks.retries ? ` (+${s.fallbacks.retries} retries)` : "");
  table($("fallback-list"), ["time", "model", "from", "to", "why"],
    s.fallbacks.recent.slice().reverse().map((f) => [clock(f.time), f.model, f.from, f.to, f.why]));
  const totals = (rows) => rows.map((r) => [r.name, num(r.requests), r.errors ? { text: num(r.errors), cls: "bad" } : "0",
    num(r.input_tokens), num(r.output_tokens), usd(r.cost)]);
  const head = ["", "requests", "errors", "tokens in", "tokens out", "cost"];
  table($("by-model"), head, totals(s.by.model));
  table($("by-provider"), head, totals(s.by.provider));
  table($("by-key"), head, totals(s.by.key));
  $("budgets-card").hidden = !s.keys.length;
  const use = (w, f) => (w.limit == null ? f(w.used) : { text: `${f(w.used)} / ${f(w.limit)}`, cls: w.used >= w.limit ? "bad" : "" });
  table($("budgets"), ["key", "requests / min", "tokens / min", "spend", "resets in"],
    s.keys.map((k) => [k.name, use(k.requests, num), use(k.tokens, num), use(k.spend_usd, usd), secs(k.spend_usd.resets_in)]));
  drawRecent();
}

function drawRecent() {
  if (!last) return;
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const rows = last.recent.slice().reverse().map((r) => [clock(r.time), r.key, r.model, r.provider,
    { text: r.status == null ? "" : String(r.status), cls: r.status >= 400 ? "bad" : "ok" },
    { text: r.error || r.outcome, cls: r.error ? "bad" : "" },
    r.input_tokens == null ? "" : `${r.input_tokens} / ${r.output_tokens}`, usd(r.cost), secs(r.duration)])
    .filter((row) => words.every((w) => row.some((c) => String(c && typeof c === "object" ? c.text : c ?? "").toLowerCase().includes(w))));
  table($("recent"), ["time", "key", "model", "provider", "status", "outcome", "tokens in/out", "cost", "duration"], rows);
}

function askForKey(message) {
  $("login").classList.add("show");
  $("main").hidden = true;
  $("status").textContent = "admin key required";
  $("login-error").textContent = message;
}

async function connect() {
  const key = sessionStorage.getItem("ccproxy-admin-key");
  if (!key && document.body.dataset.keyed === "true") return askForKey("");
  const headers = key ? { authorization: "Bearer " + key } : {};
  let response;
  try {
    response = await fetch(EVENTS, { headers, cache: "no-store" });
  } catch (e) {
    $("status").textContent = "disconnected; retrying…";
    return setTimeout(connect, 2000);
  }
  if (response.status === 401 || response.status === 403) {
    await response.body?.cancel();
    return askForKey(key ? "that key was refused" : "");
  }
  $("login").classList.remove("show");
  $("main").hidden = false;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data) draw(JSON.parse(data));
    }
  }
  $("status").textContent = "disconnected; retrying…";
  setTimeout(connect, 2000);
}

$("filter").addEventListener("input", drawRecent);
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("ccproxy-admin-key", $("key").value);
  $("key").value = "";
  $("login-error").textContent = "";
  connect();
});
connect();
