// Node detail charts: one uPlot per metric, one line per GPU. History comes from
// the rollup API (/api/v1/nodes/<id>/metrics/), then live samples from live.js
// ("hangar:sample" events) are appended while the page is open.
(() => {
  const root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  const nodeId = Number(root.dataset.node);
  const gpus = root.dataset.gpus.split(",").filter(Boolean).map(Number);
  const gpuLabel = root.dataset.gpuLabel || "GPU";
  const GiB = 1024 ** 3;
  const COLORS = ["#2b5fd9", "#d9480f", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e64980", "#5c7cfa"];
  const scale = { memory_used: (v) => v / GiB };
  const charts = [];
  let range = 900;

  for (const box of root.querySelectorAll(".chart")) {
    const metric = box.dataset.metric;
    const unit = box.dataset.unit;
    const body = box.querySelector(".chart-body");
    const series = [{}];
    gpus.forEach((index, i) => series.push({
      label: `${gpuLabel} ${index}`,
      stroke: COLORS[i % COLORS.length],
      width: 1.5,
      value: (u, v) => (v == null ? "–" : `${v.toFixed(metric === "memory_used" ? 1 : 0)} ${unit}`),
    }));
    const plot = new uPlot({
      width: Math.max(300, body.clientWidth),
      height: 200,
      series,
      // The x axis always spans the chosen window (now - range .. now), data or not.
      scales: { x: { time: true, range: () => [Date.now() / 1000 - range, Date.now() / 1000] } },
      axes: [{}, { values: (u, ticks) => ticks.map((t) => `${t} ${unit}`), size: 60 }],
      legend: { live: true },
    }, [[], ...gpus.map(() => [])], body);
    charts.push({ metric, plot, box, data: [[], ...gpus.map(() => [])] });
  }

  new ResizeObserver(() => {
    for (const chart of charts) {
      const width = chart.plot.root.parentElement.clientWidth;
      if (width && Math.abs(width - chart.plot.width) > 4) chart.plot.setSize({ width, height: 200 });
    }
  }).observe(root);

  async function history(metric, index, from) {
    const params = new URLSearchParams({ metric: `gpu.${index}.${metric}`, from: from.toISOString() });
    const response = await fetch(`/api/v1/nodes/${nodeId}/metrics/?${params}`, { credentials: "same-origin" });
    if (!response.ok) return [];
    const body = await response.json();
    return body.points.map((p) => [Date.parse(p.t) / 1000, p.mean]);
  }

  async function load() {
    const from = new Date(Date.now() - range * 1000);
    root.dataset.loading = "true";
    await Promise.all(charts.map(async (chart) => {
      const perGpu = await Promise.all(gpus.map((index) => history(chart.metric, index, from)));
      const times = [...new Set(perGpu.flatMap((points) => points.map((p) => p[0])))].sort((a, b) => a - b);
      const position = new Map(times.map((t, i) => [t, i]));
      const convert = scale[chart.metric] || ((v) => v);
      chart.data = [times, ...perGpu.map((points) => {
        const column = new Array(times.length).fill(null);
        for (const [t, v] of points) column[position.get(t)] = v == null ? null : convert(v);
        return column;
      })];
      chart.plot.setData(chart.data);
      chart.box.classList.toggle("empty", times.length === 0);
    }));
    root.dataset.loading = "false";
  }

  // Live samples: append (at most one redraw per animation frame per chart).
  let dirty = false;
  document.addEventListener("hangar:sample", (event) => {
    const { node, sample } = event.detail;
    if (node !== nodeId || !sample || range > 3600) return;
    const ts = sample.ts || Date.now() / 1000;
    for (const chart of charts) {
      const times = chart.data[0];
      if (times.length && ts <= times[times.length - 1]) continue;
      const convert = scale[chart.metric] || ((v) => v);
      times.push(ts);
      gpus.forEach((index, i) => {
        const gpu = (sample.gpus || []).find((g) => g.index === index);
        const value = gpu ? gpu[chart.metric] : null;
        chart.data[i + 1].push(value == null ? null : convert(value));
      });
      const cutoff = Date.now() / 1000 - range;
      while (times.length && times[0] < cutoff) { times.shift(); chart.data.slice(1).forEach((c) => c.shift()); }
    }
    for (const chart of charts) chart.box.classList.toggle("empty", chart.data[0].length === 0);
    if (!dirty) {
      dirty = true;
      requestAnimationFrame(() => { dirty = false; for (const chart of charts) chart.plot.setData(chart.data); });
    }
  });

  for (const button of document.querySelectorAll("#chart-ranges button")) {
    button.addEventListener("click", () => {
      range = Number(button.dataset.range);
      for (const other of document.querySelectorAll("#chart-ranges button")) other.setAttribute("aria-pressed", String(other === button));
      load();
    });
  }
  load();
})();
