// Live telemetry over /ws/telemetry/: fills GPU tiles and node states, shows a
// banner while the socket is down, and reconnects with backoff.
//
// Built for thousands of tiles: the dashboard subscribes to the "grid" view
// (compact tiles, only those that changed, at most twice a second: see
// apps/telemetry/grid.py); tiles are looked up once into a Map, incoming values
// only replace the waiting ones per GPU, and the DOM is written at most every
// FLUSH_MS in an animation frame, only for tiles on screen.
// Other modules (charts.js, deployment.js) listen to the "hangar:sample",
// "hangar:state", "hangar:worker" and "hangar:traffic" events on document instead of opening a
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

// Tiles waiting to be written, newest per GPU: node -> {seq, gpus: Map(index -> tile)}.
// A tile is [index, °C, util %, memory used MiB, memory total MiB, W, W limit, fault]
// (apps/telemetry/grid.py); full samples are turned into the same tiles.
const waiting = new Map();
const pendingStates = new Map();
// At most one write every FLUSH_MS: samples come once a second per node, spread
// over the second, so painting every frame would relayout 60 times a second for
// a few tiles each time (tests/bench/ui.py measured 640 ms/s of main thread at
// 200 nodes that way). The dashboard's grid view comes twice a second anyway.
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
  if (field.severity !== severity) {
    field.severity = severity;
    field.dd.classList.toggle("warn", severity === 1);
    field.dd.classList.toggle("bad", severity === 2);
  }
}

function tileOf(gpu) {
  const mib = (bytes) => (bytes == null ? null : Math.round(bytes / 1048576));
  const whole = (value) => (value == null ? null : Math.round(value));
  return [gpu.index, whole(gpu.temperature), whole(gpu.utilization_gpu), mib(gpu.memory_used),
    mib(gpu.memory_total), whole(gpu.power_draw), whole(gpu.power_limit), gpu.fault || null];
}

function showTile(entry, seq, tile) {
  const [, temperature, utilization, memoryUsed, memoryTotal, power, powerLimit, fault] = tile;
  let worst = 0;
  if (temperature != null) {
    const s = level(temperature, 80, 88);
    worst = Math.max(worst, s);
    setField(entry, "temperature", `${temperature} °C`, temperature, s);
  }
  if (utilization != null) setField(entry, "utilization_gpu", `${utilization} %`, utilization, 0);
  if (memoryUsed != null && memoryTotal) {
    const pct = (100 * memoryUsed) / memoryTotal;
    const s = level(pct, 90, 97);
    worst = Math.max(worst, s);
    setField(entry, "memory", `${(memoryUsed / 1024).toFixed(1)} / ${(memoryTotal / 1024).toFixed(0)} GiB`, pct, s);
  }
  if (power != null) {
    const pct = powerLimit ? (100 * power) / powerLimit : null;
    setField(entry, "power_draw", `${power} W`, pct, level(pct, 95, 100));
  }
  if (fault) worst = 2;
  if (entry.worst !== worst || entry.faultText !== (fault || "")) {
    const classes = entry.tile.classList;
    classes.toggle("ok", worst === 0);
    classes.toggle("warn", worst === 1);
    classes.toggle("bad", worst === 2);
    classes.toggle("faulted", Boolean(fault));
    if (entry.fault) entry.fault.textContent = fault || "";
    entry.worst = worst;
    entry.faultText = fault || "";
  }
  entry.tile.dataset.seq = seq;
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
// its newest tiles waiting until one of them scrolls into view (with 8,000
// tiles, writing the off-screen ones was most of the main thread's time).
// A set of tiles per node, not a count: the observer's first report says
// "not intersecting" for tiles that never were, which a count would subtract.
const onScreen = new Map(); // node -> Set of its tiles on screen
const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const item of entries) {
    const node = item.target.dataset.node;
    const shown = onScreen.get(node) || new Set();
    if (item.isIntersecting) shown.add(item.target); else shown.delete(item.target);
    if (shown.size) onScreen.set(node, shown); else onScreen.delete(node);
    if (item.isIntersecting && waiting.has(node)) schedule();
  }
}, { rootMargin: "200px" }) : null;
if (observer) for (const entry of tiles.values()) observer.observe(entry.tile);

function flush(now) {
  frameRequested = false;
  lastFlush = now;
  for (const [node, update] of waiting) {
    if (observer && !onScreen.has(node)) continue;
    for (const [index, tile] of update.gpus) {
      const entry = tiles.get(`${node}:${index}`);
      if (entry) showTile(entry, update.seq, tile);
    }
    waiting.delete(node);
  }
  for (const [node, state] of pendingStates) showState(node, state);
  pendingStates.clear();
}

function takeTiles(node, seq, gpuTiles) {
  if (!tilesOfNode.has(String(node))) return; // not on this page
  const key = String(node);
  let update = waiting.get(key);
  if (!update) waiting.set(key, (update = { seq, gpus: new Map() }));
  update.seq = seq;
  for (const tile of gpuTiles) update.gpus.set(tile[0], tile);
  schedule();
}

function takeSample(node, sample) {
  if (!sample) return;
  document.dispatchEvent(new CustomEvent("hangar:sample", { detail: { node, sample } }));
  takeTiles(node, sample.seq, (sample.gpus || []).map(tileOf));
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
    else if (message.type === "traffic") {
      document.dispatchEvent(new CustomEvent("hangar:traffic", { detail: { deployment: message.deployment, traffic: message.traffic } }));
    }
    else if (message.type === "grid") {
      for (const [node, seq, gpuTiles] of message.nodes) takeTiles(node, seq, gpuTiles);
      document.dispatchEvent(new CustomEvent("hangar:grid", { detail: { nodes: message.nodes.length } }));
    }
    else if (message.type === "snapshot") {
      for (const node of message.nodes) {
        if (node.tiles) takeTiles(node.id, node.seq, node.tiles);
        else takeSample(node.id, node.sample);
        takeState(node.id, node.state);
      }
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
