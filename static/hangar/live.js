// Live telemetry over /ws/telemetry/: fills GPU tiles and node states, shows a
// banner while the socket is down, and reconnects with backoff.
const grid = document.getElementById("gpu-grid");
const banner = document.getElementById("live-banner");
const subscription = grid ? JSON.parse(grid.dataset.subscribe || '{"action":"subscribe"}') : null;
let delay = 1000;

const GiB = 1024 ** 3;
function tone(el, value, warn, bad) {
  el.classList.toggle("warn", value >= warn && value < bad);
  el.classList.toggle("bad", value >= bad);
}

function showSample(nodeId, sample) {
  if (!sample) return;
  for (const gpu of sample.gpus || []) {
    const tile = document.querySelector(`.gpu-tile[data-node="${nodeId}"][data-gpu="${gpu.index}"]`);
    if (!tile) continue;
    const set = (metric, text, value, warn, bad) => {
      const el = tile.querySelector(`[data-metric="${metric}"]`);
      if (!el) return;
      el.textContent = text;
      if (value !== undefined) tone(el, value, warn, bad);
    };
    if (gpu.temperature != null) set("temperature", `${Math.round(gpu.temperature)} °C`, gpu.temperature, 80, 88);
    if (gpu.utilization_gpu != null) set("utilization_gpu", `${Math.round(gpu.utilization_gpu)} %`);
    if (gpu.memory_used != null && gpu.memory_total) {
      const pct = (100 * gpu.memory_used) / gpu.memory_total;
      set("memory", `${(gpu.memory_used / GiB).toFixed(1)} / ${(gpu.memory_total / GiB).toFixed(0)} GiB`, pct, 90, 97);
    }
    if (gpu.power_draw != null) set("power_draw", `${Math.round(gpu.power_draw)} W`);
    tile.classList.toggle("faulted", Boolean(gpu.fault));
    tile.title = gpu.fault || "";
    tile.dataset.seq = sample.seq;
  }
}

function showState(nodeId, state) {
  for (const el of document.querySelectorAll(`[data-node="${nodeId}"] [data-field="state"], [data-node-state="${nodeId}"]`)) {
    el.textContent = state;
    el.className = `state ${state}`;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/telemetry/`);
  socket.onopen = () => {
    delay = 1000;
    banner.hidden = true;
    socket.send(JSON.stringify(subscription));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "sample") showSample(message.node, message.sample);
    else if (message.type === "node_state") showState(message.node, message.state);
    else if (message.type === "snapshot") {
      for (const node of message.nodes) { showSample(node.id, node.sample); showState(node.id, node.state); }
    }
  };
  socket.onclose = () => {
    banner.hidden = false;
    setTimeout(connect, delay + Math.random() * 500);
    delay = Math.min(delay * 2, 15000);
  };
}

if (subscription) connect();
