// Live telemetry over /ws/telemetry/: fills GPU tiles and node states, shows a
// banner while the socket is down, and reconnects with backoff.
//
// Built for thousands of tiles: tiles are looked up once into a Map, incoming
// samples only replace the pending one per node, and the DOM is written once
// per animation frame (a sample arriving 10x a second costs one write).
// Other modules (charts.js, deployment.js) listen to the "hangar:sample",
// "hangar:state" and "hangar:worker" events on document instead of opening a
// second socket.
const grid = document.getElementById("gpu-grid");
const banner = document.getElementById("live-banner");
const labels = JSON.parse(document.getElementById("hangar-labels")?.textContent || "{}");
// The subscription comes from the grid, or from any element with data-subscribe
// (deployment detail subscribes to its cluster for worker latency and states).
const subscriber = grid || document.querySelector("[data-subscribe]");
const subscription = subscriber ? JSON.parse(subscriber.dataset.subscribe || '{"action":"subscribe"}') : null;
const GiB = 1024 ** 3;
const MAX_DELAY = 8000;
let delay = 1000;

// Build the tiles from the page's compact JSON (one cloned <template> each).
const gridData = document.getElementById("gpu-grid-data");
const tileTemplate = document.getElementById("gpu-tile-template");
if (grid && gridData && tileTemplate) {
  const nodeUrl = grid.dataset.nodeUrl || "/nodes/";
  const fragment = document.createDocumentFragment();
  for (const node of JSON.parse(gridData.textContent)) {
    for (const [index, name] of node.gpus) {
      const tile = tileTemplate.content.firstElementChild.cloneNode(true);
      tile.dataset.node = node.id;
      tile.dataset.gpu = index;
      if (node.state === "online" || node.state === "degraded") tile.classList.remove("stale");
      const link = tile.querySelector(".gpu-head a");
      link.href = `${nodeUrl}${node.id}/`;
      link.title = `${node.name} · GPU ${index}`;
      tile.querySelector(".gpu-index").textContent = index;
      tile.querySelector(".node-name").textContent = node.name;
      tile.querySelector(".gpu-name").textContent = name || "–";
      if (!node.sim) tile.querySelector(".tag.sim").remove();
      fragment.appendChild(tile);
    }
  }
  grid.appendChild(fragment);
}

const tiles = new Map(); // "node:gpu" -> {tile, fields}
const tilesOfNode = new Map(); // node -> [entry]
for (const tile of document.querySelectorAll("#gpu-grid .gpu-tile")) {
  const entry = { tile, fields: {} };
  for (const el of tile.querySelectorAll("[data-metric]")) {
    entry.fields[el.dataset.metric] = { dd: el, text: el.querySelector(".v") || el, bar: el.querySelector(".meter > span") };
  }
  entry.fault = tile.querySelector(".gpu-fault");
  tiles.set(`${tile.dataset.node}:${tile.dataset.gpu}`, entry);
  if (!tilesOfNode.has(tile.dataset.node)) tilesOfNode.set(tile.dataset.node, []);
  tilesOfNode.get(tile.dataset.node).push(entry);
}

const pendingSamples = new Map();
const pendingStates = new Map();
// At most one write every FLUSH_MS: samples come once a second per node, spread
// over the second, so painting every frame would relayout 60 times a second for
// a few tiles each time (tests/bench/ui.py measured 640 ms/s of main thread at
// 200 nodes that way).
const FLUSH_MS = 250;
let frameRequested = false;
let lastFlush = 0;
function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  const wait = lastFlush + FLUSH_MS - performance.now();
  if (wait > 0) setTimeout(() => requestAnimationFrame(flush), wait);
  else requestAnimationFrame(flush);
}

function level(value, warn, bad) {
  if (value == null) return 0;
  return value >= bad ? 2 : value >= warn ? 1 : 0;
}

function setField(entry, metric, text, percent, severity) {
  const field = entry.fields[metric];
  if (!field) return;
  if (field.text.textContent !== text) field.text.textContent = text;
  if (field.bar && percent != null) {
    const width = `${Math.max(0, Math.min(100, percent)).toFixed(0)}%`;
    if (field.width !== width) { field.width = width; field.bar.style.width = width; }
  }
  field.dd.classList.toggle("warn", severity === 1);
  field.dd.classList.toggle("bad", severity === 2);
}

function showSample(nodeId, sample) {
  for (const gpu of sample.gpus || []) {
    const entry = tiles.get(`${nodeId}:${gpu.index}`);
    if (!entry) continue;
    let worst = 0;
    if (gpu.temperature != null) {
      const s = level(gpu.temperature, 80, 88);
      worst = Math.max(worst, s);
      setField(entry, "temperature", `${Math.round(gpu.temperature)} °C`, (gpu.temperature / 100) * 100, s);
    }
    if (gpu.utilization_gpu != null) {
      setField(entry, "utilization_gpu", `${Math.round(gpu.utilization_gpu)} %`, gpu.utilization_gpu, 0);
    }
    if (gpu.memory_used != null && gpu.memory_total) {
      const pct = (100 * gpu.memory_used) / gpu.memory_total;
      const s = level(pct, 90, 97);
      worst = Math.max(worst, s);
      setField(entry, "memory", `${(gpu.memory_used / GiB).toFixed(1)} / ${(gpu.memory_total / GiB).toFixed(0)} GiB`, pct, s);
    }
    if (gpu.power_draw != null) {
      const pct = gpu.power_limit ? (100 * gpu.power_draw) / gpu.power_limit : null;
      setField(entry, "power_draw", `${Math.round(gpu.power_draw)} W`, pct, level(pct, 95, 100));
    }
    if (gpu.fault) worst = 2;
    const tile = entry.tile;
    tile.classList.toggle("ok", worst === 0);
    tile.classList.toggle("warn", worst === 1);
    tile.classList.toggle("bad", worst === 2);
    tile.classList.toggle("faulted", Boolean(gpu.fault));
    if (entry.fault) entry.fault.textContent = gpu.fault || "";
    tile.dataset.seq = sample.seq;
  }
}

function showState(nodeId, state) {
  const text = labels[state] || state;
  for (const el of document.querySelectorAll(`[data-node="${nodeId}"] [data-field="state"], [data-node-state="${nodeId}"]`)) {
    el.textContent = text;
    el.className = `state ${state}`;
    el.dataset.state = state;
  }
  for (const entry of tilesOfNode.get(String(nodeId)) || []) {
    entry.tile.classList.toggle("stale", state !== "online" && state !== "degraded");
  }
}

// Only tiles on screen are written: a node whose tiles are all off screen keeps
// its newest sample aside until one of them scrolls into view (with 8,000
// tiles, writing the off-screen ones was most of the main thread's time).
const onScreen = new Map(); // node -> tiles of it on screen
const deferred = new Map(); // node -> newest sample not yet shown
const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const item of entries) {
    const node = item.target.dataset.node;
    const count = (onScreen.get(node) || 0) + (item.isIntersecting ? 1 : -1);
    if (count > 0) onScreen.set(node, count); else onScreen.delete(node);
    if (item.isIntersecting && deferred.has(node)) {
      if (!pendingSamples.has(node)) pendingSamples.set(node, deferred.get(node));
      deferred.delete(node);
      schedule();
    }
  }
}, { rootMargin: "200px" }) : null;
if (observer) for (const entry of tiles.values()) observer.observe(entry.tile);

function flush(now) {
  frameRequested = false;
  lastFlush = now;
  for (const [node, sample] of pendingSamples) {
    if (!observer || onScreen.has(String(node))) showSample(node, sample);
    else deferred.set(String(node), sample);
  }
  for (const [node, state] of pendingStates) showState(node, state);
  pendingSamples.clear();
  pendingStates.clear();
}

function takeSample(node, sample) {
  if (!sample) return;
  pendingSamples.set(String(node), sample);
  document.dispatchEvent(new CustomEvent("hangar:sample", { detail: { node, sample } }));
  schedule();
}

function takeState(node, state) {
  pendingStates.set(node, state);
  document.dispatchEvent(new CustomEvent("hangar:state", { detail: { node, state } }));
  schedule();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/telemetry/`);
  socket.onopen = () => {
    delay = 1000;
    banner.hidden = true;
    document.body.dataset.live = "connected";
    socket.send(JSON.stringify(subscription));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "sample") takeSample(message.node, message.sample);
    else if (message.type === "node_state") takeState(message.node, message.state);
    else if (message.type === "worker") {
      document.dispatchEvent(new CustomEvent("hangar:worker", { detail: { node: message.node, worker: message.worker } }));
    }
    else if (message.type === "snapshot") {
      for (const node of message.nodes) { takeSample(node.id, node.sample); takeState(node.id, node.state); }
    }
  };
  socket.onclose = () => {
    banner.hidden = false;
    document.body.dataset.live = "disconnected";
    setTimeout(connect, delay + Math.random() * 300);
    delay = Math.min(delay * 2, MAX_DELAY);
  };
}

if (subscription) connect();
