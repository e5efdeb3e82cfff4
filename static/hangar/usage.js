// Usage page charts: one uPlot for tokens and one for requests, a line per group.
// The series are in the page (json_script "usage-series"), made by
// apps.gateway.reports.series: shared bucket times and one array per group.
(() => {
  const root = document.getElementById("usage-chart");
  const source = document.getElementById("usage-series");
  if (!root || !source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const COLORS = ["#2b5fd9", "#d9480f", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e64980", "#5c7cfa", "#868e96"];
  const times = data.times.map((t) => Date.parse(t) / 1000);
  const plots = [];
  for (const body of root.querySelectorAll(".chart-body")) {
    const measure = body.dataset.measure;
    const unit = root.dataset[`${measure}Label`] || measure;
    const series = [{}, ...data.lines.map((line, i) => ({
      label: line.group,
      stroke: COLORS[i % COLORS.length],
      width: 1.5,
      value: (u, v) => (v == null ? "–" : `${v.toLocaleString()} ${unit}`),
    }))];
    const plot = new uPlot({
      width: Math.max(300, body.clientWidth),
      height: 220,
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 70 }],
      legend: { live: true },
    }, [times, ...data.lines.map((line) => line[measure])], body);
    plots.push(plot);
  }
  new ResizeObserver(() => {
    for (const plot of plots) {
      const width = plot.root.parentElement.clientWidth;
      if (width && Math.abs(width - plot.width) > 4) plot.setSize({ width, height: 220 });
    }
  }).observe(root);
})();
