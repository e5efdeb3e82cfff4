// Deployment detail: live latency and state per worker, a live log tail, and a
// worker's runs (crash forensics).
//
// Latency and worker states come from live.js's socket ("hangar:sample" and
// "hangar:worker" events), not from a second one; so do the gateway's request
// numbers of the Requests panel ("hangar:traffic"). The 2 s htmx refresh of
// #deployment-live replaces the worker rows, so the newest values are kept
// here and written again after each swap. Logs and runs are read from the API
// (session-authenticated GETs) only while their panel is open.
const labels = JSON.parse(document.getElementById("deployment-labels")?.textContent || "{}");
const stateLabels = JSON.parse(document.getElementById("hangar-labels")?.textContent || "{}");
const LOG_POLL_MS = 2000;

function format(template, values) {
  return (template || "").replace(/%\((\w+)\)s/g, (_, key) => values[key]);
}

// ---- live rows -------------------------------------------------------------
const metrics = new Map(); // worker id -> WORKER_METRICS
const statuses = new Map(); // worker id -> WORKER_STATUS
let frameRequested = false;

function rowOf(workerId) {
  return document.querySelector(`#worker-table tr[data-worker="${workerId}"]`);
}

function setText(row, field, text) {
  const cell = row.querySelector(`[data-field="${field}"]`);
  if (cell && cell.textContent !== text) cell.textContent = text;
}

function number(value, digits, unit) {
  return value == null ? "–" : `${value.toFixed(digits)}${unit}`;
}

function stateClass(state) {
  if (state === "ready") return "ok";
  if (state === "failed" || state === "crashloop" || state === "unhealthy") return "failed";
  return "pending";
}

function paint() {
  frameRequested = false;
  for (const [id, m] of metrics) {
    const row = rowOf(id);
    if (!row) continue;
    setText(row, "p50", number(m.p50_ms, 1, " ms"));
    setText(row, "p99", number(m.p99_ms, 1, " ms"));
    setText(row, "rps", number(m.rps, 1, ""));
    row.dataset.latency = m.p50_ms == null ? "" : "live";
  }
  for (const [id, status] of statuses) {
    const row = rowOf(id);
    if (!row) continue;
    row.dataset.state = status.state;
    const state = row.querySelector('[data-field="worker-state"]');
    if (state) {
      state.textContent = stateLabels[status.state] || status.state;
      state.className = `state ${stateClass(status.state)}`;
    }
    setText(row, "restarts", String(status.restarts));
    setText(row, "pid", status.pid == null ? "–" : String(status.pid));
  }
}

function schedule() {
  if (!frameRequested) { frameRequested = true; requestAnimationFrame(paint); }
}

document.addEventListener("hangar:sample", (event) => {
  const workers = event.detail.sample?.workers;
  if (!workers || !workers.length) return;
  let mine = false;
  for (const m of workers) {
    if (rowOf(m.worker_id)) { metrics.set(String(m.worker_id), m); mine = true; }
  }
  if (mine) schedule();
});

document.addEventListener("hangar:worker", (event) => {
  const status = event.detail.worker;
  if (!status || !rowOf(status.worker_id)) return;
  statuses.set(String(status.worker_id), status);
  // A worker that is no longer serving has no latency.
  if (status.state !== "ready" && status.state !== "unhealthy") metrics.delete(String(status.worker_id));
  schedule();
});

// The refreshed rows come from the database; the socket's values are newer.
document.body.addEventListener("htmx:afterSettle", () => { statuses.clear(); schedule(); });

// ---- requests through the gateway ("hangar:traffic", every few seconds) -------
const trafficPanel = document.getElementById("traffic-panel");

document.addEventListener("hangar:traffic", (event) => {
  if (!trafficPanel || String(event.detail.deployment) !== trafficPanel.dataset.deployment) return;
  const t = event.detail.traffic;
  setText(trafficPanel, "requests_per_s", number(t.requests_per_s, 1, ""));
  setText(trafficPanel, "http_5xx_rate", number(t.http_5xx_rate == null ? null : t.http_5xx_rate * 100, 2, " %"));
  setText(trafficPanel, "latency_p50_ms", number(t.latency_p50_ms, 1, " ms"));
  setText(trafficPanel, "latency_p99_ms", number(t.latency_p99_ms, 1, " ms"));
  setText(trafficPanel, "ttft_p99_ms", number(t.ttft_p99_ms, 1, " ms"));
  setText(trafficPanel, "tokens_per_s", number(t.tokens_per_s, 1, ""));
  setText(trafficPanel, "in_flight", String(t.in_flight));
  setText(trafficPanel, "queue_length", String(t.queue_length == null ? 0 : t.queue_length));
  setText(trafficPanel, "queue_wait_p99_ms", number(t.queue_wait_p99_ms, 1, " ms"));
  trafficPanel.dataset.live = "yes";
});

// ---- panels ----------------------------------------------------------------
async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
    throw new Error(detail);
  }
  return response.json();
}

function showError(panel, error) {
  const el = panel.querySelector('[data-field="error"]');
  el.hidden = !error;
  el.textContent = error ? format(labels.failed, { detail: error.message }) : "";
}

const logPanel = document.getElementById("log-panel");
let logWorker = null;
let logTimer = null;

async function pollLog() {
  const worker = logWorker;
  if (worker == null) return;
  try {
    const answer = await getJson(`/api/v1/workers/${worker}/logs/?lines=200`);
    if (worker !== logWorker) return;
    const pre = logPanel.querySelector('[data-field="lines"]');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const text = answer.lines.join("\n");
    if (pre.textContent !== text) pre.textContent = text;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    logPanel.querySelector('[data-field="run"]').textContent = answer.run == null ? "" : format(labels.run, { n: answer.run });
    logPanel.dataset.run = answer.run ?? "";
    showError(logPanel, null);
  } catch (error) {
    if (worker === logWorker) showError(logPanel, error);
  }
  if (worker === logWorker) logTimer = setTimeout(pollLog, LOG_POLL_MS);
}

function openLog(button) {
  closeLog();
  logWorker = button.dataset.openLogs;
  logPanel.dataset.worker = logWorker;
  logPanel.querySelector('[data-field="title"]').textContent = button.dataset.title;
  logPanel.querySelector('[data-field="lines"]').textContent = labels.loading;
  logPanel.hidden = false;
  pollLog();
}

function closeLog() {
  logWorker = null;
  clearTimeout(logTimer);
  logPanel.hidden = true;
}

const runsPanel = document.getElementById("runs-panel");
let runsWorker = null;

function clock(seconds) {
  if (seconds == null) return "–";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function runRow(tbody, worker, run) {
  const row = tbody.insertRow();
  row.dataset.run = run.run;
  row.dataset.cause = run.cause || "";
  cell(row, String(run.run), "num");
  cell(row, clock(run.started));
  cell(row, run.ended == null ? labels.current : clock(run.ended));
  cell(row, duration(run.duration), "num");
  cell(row, run.exit_signal != null ? format(labels.signal, { n: run.exit_signal })
    : run.exit_code != null ? format(labels.code, { n: run.exit_code }) : "–");
  const cause = cell(row, "", "small");
  if (run.cause) {
    const tag = document.createElement("span");
    tag.className = `state ${run.cause === "stopped" ? "retired" : "failed"}`;
    tag.textContent = run.cause === "stopped" ? labels.stopped : run.cause;
    cause.appendChild(tag);
  }
  if (run.evidence) {
    const evidence = document.createElement("div");
    evidence.className = "mono";
    evidence.dataset.field = "evidence";
    evidence.textContent = run.evidence;
    cause.appendChild(evidence);
  }
  if (!run.cause && !run.evidence) cause.textContent = "–";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary small";
  button.textContent = labels.view_log;
  button.addEventListener("click", () => showRunLog(worker, run.run));
  row.insertCell().appendChild(button);
}

async function showRunLog(worker, run) {
  const title = runsPanel.querySelector('[data-field="log-title"]');
  const pre = runsPanel.querySelector('[data-field="log"]');
  title.textContent = format(labels.run_log, { n: run });
  title.hidden = false;
  pre.hidden = false;
  pre.textContent = labels.loading;
  delete pre.dataset.run;
  try {
    const response = await fetch(`/api/v1/workers/${worker}/runs/${run}/log/`, { credentials: "same-origin" });
    if (!response.ok) throw new Error((await response.text()) || response.statusText);
    const text = await response.text();
    if (worker !== runsWorker) return;
    pre.textContent = text;
    pre.dataset.run = run;
    showError(runsPanel, null);
  } catch (error) {
    showError(runsPanel, error);
  }
}

async function openRuns(button) {
  const worker = button.dataset.openRuns;
  runsWorker = worker;
  runsPanel.dataset.worker = worker;
  runsPanel.querySelector('[data-field="title"]').textContent = button.dataset.title;
  runsPanel.querySelector('[data-field="log-title"]').hidden = true;
  runsPanel.querySelector('[data-field="log"]').hidden = true;
  const tbody = runsPanel.querySelector("tbody");
  tbody.replaceChildren();
  cell(tbody.insertRow(), labels.loading, "muted").colSpan = 7;
  runsPanel.hidden = false;
  try {
    const answer = await getJson(`/api/v1/workers/${worker}/runs/`);
    if (worker !== runsWorker) return;
    tbody.replaceChildren();
    // Newest first: the run that just died is the one asked about.
    for (const run of [...answer.runs].reverse()) runRow(tbody, worker, run);
    if (!answer.runs.length) cell(tbody.insertRow(), labels.no_runs, "muted").colSpan = 7;
    showError(runsPanel, null);
  } catch (error) {
    tbody.replaceChildren();
    showError(runsPanel, error);
  }
}

// Delegated: the buttons are inside the rows htmx replaces.
document.addEventListener("click", (event) => {
  const target = event.target.closest("[data-open-logs], [data-open-runs], [data-close]");
  if (!target) return;
  if (target.dataset.openLogs) openLog(target);
  else if (target.dataset.openRuns) openRuns(target);
  else if (target.closest("#log-panel")) closeLog();
  else if (target.closest("#runs-panel")) { runsWorker = null; runsPanel.hidden = true; }
});
