"""The dashboard in a real browser: 1,000 simulated nodes, 8,000 GPU tiles.

    make bench-ui
    python -m tests.bench.ui --nodes 1000 --seconds 10
    python -m tests.bench.ui --quick                        # smoke check, no docs

Everything is real and on this machine: a fresh PostgreSQL database
(`hangar_bench_ui`, dropped and migrated), Redis database 14 (flushed), one
Daphne serving console.asgi, the simulated agents of tests/bench/swarm.py (one
websocket per node, one sample per node per second, 8 GPUs each), and the
Debian Chromium driven by Playwright, logged in as a viewer.

The agents connect and say hello (which creates the GPU rows), then stream.
While they stream, the browser opens the dashboard and we measure:

- time to first render: the navigation's first contentful paint, and the time
  until all tiles are built and those on screen show values from the socket
  (live.js writes only tiles on screen);
- main-thread time per second of live updates: Chrome DevTools Protocol
  `Performance.getMetrics` (TaskDuration = all main-thread tasks; of which
  ScriptDuration, LayoutDuration, RecalcStyleDuration) read before and after a
  window of `--seconds`, divided by the window; with the samples the page
  received in that window.

Each view (`--views grid,full`) is measured on its own fresh page, one after
the other, against the same agents: `grid` is the dashboard as shipped, `full`
the same page with its subscription rewritten to every full sample (the stream
before apps/telemetry/grid.py), for comparison.

The target (issue 7) is under 100 ms of main-thread time per second. A full
run rewrites the section "Dashboard in the browser" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.bench.telemetry import (
    DOCS,
    NODES_PER_AGENT_PROCESS,
    ROOT,
    Client,
    Processes,
    _interrupt,
    create_fixtures,
    machine,
    prepare_environment,
    start_daphne,
    swarm,
)
from tests.support import processes

SECTION = "Dashboard in the browser"
TARGET_MS_PER_S = 100.0
CHROMIUM = os.environ.get("HANGAR_CHROMIUM", "/usr/bin/chromium")

COUNT_SAMPLES = """
window.__samples = 0;
window.__messages = 0;
document.addEventListener("hangar:sample", () => {
  window.__samples += 1; window.__messages += 1;
});
document.addEventListener("hangar:grid", (e) => {
  window.__samples += e.detail.nodes; window.__messages += 1;
});
"""
TILE_COUNTS = """() => {
  // Tiles on screen and how many of them show a live value (live.js writes
  // only tiles on screen; the others get their newest sample when scrolled to).
  const tiles = document.querySelectorAll("#gpu-grid .gpu-tile");
  let shown = 0, filled = 0;
  for (const tile of tiles) {
    const box = tile.getBoundingClientRect();
    if (box.bottom < 0 || box.top > innerHeight) continue;
    shown += 1;
    if (tile.dataset.seq) filled += 1;
  }
  return [tiles.length, shown, filled];
}"""


def metrics(cdp) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def measure(args: argparse.Namespace, env: dict, fixtures, workdir: Path) -> dict:
    import redis
    from playwright.sync_api import sync_playwright

    from apps.telemetry import live

    redis_client = redis.Redis.from_url(args.redis_url)
    redis_client.flushdb()
    views: dict[str, dict] = {}
    with Processes() as procs:
        (daphne,), port = start_daphne(env, workdir, procs, "ui")
        loaders = []
        count = math.ceil(args.nodes / NODES_PER_AGENT_PROCESS)
        for k in range(count):
            mine = [
                {"id": node_id, "credential": credential, "phase": i / args.nodes}
                for i, (node_id, credential) in enumerate(fixtures.nodes)
                if i % count == k
            ]
            path = workdir / f"agents-{k}.json"
            path.write_text(json.dumps(mine))
            path.chmod(0o600)
            loaders.append(
                Client(
                    swarm("agents", port=port, credentials=path, gpus=args.gpus),
                    env,
                    workdir / f"agents-{k}.log",
                )
            )
        procs.clients.extend(loaders)
        connect_timeout = 60 + args.nodes * 0.2
        connected = sum(
            loader.expect("the agents to connect", connect_timeout)["connected"]
            for loader in loaders
        )
        if connected != args.nodes:
            raise SystemExit(f"only {connected} of {args.nodes} agents connected")
        processes.wait_for(
            lambda: redis_client.hlen(live.LAST_SEEN) >= args.nodes,
            timeout=connect_timeout,
            what=f"the console to take {args.nodes} hellos",
            process=daphne,
        )
        # Stream for longer than the browser needs; the loaders are stopped after.
        start = time.time() + 1.0
        for loader in loaders:
            loader.tell({"start": start, "stop": start + 600})
        time.sleep(args.warmup)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            for view in args.views:
                views[view] = measure_page(args, browser, port, fixtures, view)
            browser.close()
        for loader in loaders:
            loader.tell({"exit": True})
    return views


def measure_page(args, browser, port: int, fixtures, view: str) -> dict:
    """One fresh page of the dashboard, its socket subscribed to `view`."""
    result: dict = {"nodes": args.nodes, "gpus": args.nodes * args.gpus, "view": view}
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{port}", viewport={"width": 1600, "height": 1000}
    )
    context.add_cookies(
        [{"name": "sessionid", "value": fixtures.session_key, "url": f"http://127.0.0.1:{port}"}]
    )
    page = context.new_page()
    page.add_init_script(COUNT_SAMPLES)
    if view != "grid":
        # The page as shipped asks for the grid; rewrite the subscription after
        # parsing, before live.js (a module script) runs.
        page.add_init_script(
            """document.addEventListener("readystatechange", () => {
              const grid = document.getElementById("gpu-grid");
              if (document.readyState === "interactive" && grid) {
                grid.dataset.subscribe = JSON.stringify({action: "subscribe", view: VIEW});
              }
            });""".replace("VIEW", json.dumps(view))
        )
    began = time.monotonic()
    page.goto("/", wait_until="load", timeout=120_000)
    deadline = time.monotonic() + 240
    while True:
        tiles, shown, filled = page.evaluate(TILE_COUNTS)
        if tiles >= result["gpus"] and shown and filled >= shown:
            break
        if time.monotonic() > deadline:
            state = page.evaluate("[document.body.dataset.live, window.__samples]")
            raise SystemExit(
                f"after 240 s: {tiles} tiles, {shown} on screen, {filled} live;"
                f" socket {state[0]}, {state[1]} samples received"
            )
        time.sleep(0.1)
    result["filled_s"] = time.monotonic() - began
    timing = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType("navigation")[0];
          const paint = performance.getEntriesByName("first-contentful-paint")[0];
          return {response: nav.responseEnd, dom: nav.domContentLoadedEventEnd,
                  load: nav.loadEventEnd, fcp: paint ? paint.startTime : null,
                  html: nav.transferSize};
        }"""
    )
    result.update(timing)
    result["tiles"] = page.locator("#gpu-grid .gpu-tile").count()

    page.wait_for_timeout(args.settle * 1000)
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
    before = metrics(cdp)
    samples_before, messages_before = page.evaluate("[window.__samples, window.__messages]")
    cpu_before = psutil.cpu_times()
    window_began = time.monotonic()
    page.wait_for_timeout(args.seconds * 1000)
    after = metrics(cdp)
    samples_after, messages_after = page.evaluate("[window.__samples, window.__messages]")
    window = time.monotonic() - window_began
    cpu_after = psutil.cpu_times()
    for name in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration"):
        result[name] = (after[name] - before[name]) * 1000 / window
    result["samples_per_s"] = (samples_after - samples_before) / window
    result["messages_per_s"] = (messages_after - messages_before) / window
    result["window_s"] = window
    busy = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system", "nice"))
    result["machine_cpu"] = 100 * busy / window
    context.close()
    return result


VIEW_TITLES = {"grid": "grid view (shipped)", "full": "full samples (before)"}


def table(views: dict[str, dict]) -> str:
    rows = [
        ("nodes / GPU tiles", lambda r: f"{r['nodes']:,} / {r['tiles']:,}"),
        ("dashboard HTML (transfer)", lambda r: f"{r['html'] / 1024:.0f} kB"),
        ("HTML received (responseEnd)", lambda r: f"{r['response']:.0f} ms"),
        ("DOMContentLoaded", lambda r: f"{r['dom']:.0f} ms"),
        ("first contentful paint", lambda r: f"{r['fcp']:.0f} ms" if r["fcp"] else "n/a"),
        ("load", lambda r: f"{r['load']:.0f} ms"),
        (
            "every tile built, those on screen showing live values",
            lambda r: f"{r['filled_s'] * 1000:.0f} ms",
        ),
        ("node updates received per second (window)", lambda r: f"{r['samples_per_s']:.0f}"),
        ("websocket messages with them per second", lambda r: f"{r['messages_per_s']:.1f}"),
        (
            "**main-thread time per second** (TaskDuration)",
            lambda r: f"**{r['TaskDuration']:.1f} ms**",
        ),
        ("of which script", lambda r: f"{r['ScriptDuration']:.1f} ms"),
        ("of which style recalculation", lambda r: f"{r['RecalcStyleDuration']:.1f} ms"),
        ("of which layout", lambda r: f"{r['LayoutDuration']:.1f} ms"),
        ("machine CPU during the window (all processes)", lambda r: f"{r['machine_cpu']:.0f} %"),
    ]
    titles = [VIEW_TITLES.get(view, view) for view in views]
    lines = ["| measure | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(views)]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in views.values()) + " |")
    return "\n".join(lines)


def verdict(views: dict[str, dict]) -> str:
    r = views.get("grid") or next(iter(views.values()))
    ok = r["TaskDuration"] < TARGET_MS_PER_S
    return (
        f"Target (issue 7): under {TARGET_MS_PER_S:.0f} ms of main-thread time per second of"
        f" live updates with {r['nodes']:,} nodes, as shipped ({r['view']} view): "
        + ("**met**" if ok else "**not met**")
        + f" ({r['TaskDuration']:.1f} ms/s)."
    )


def section(views: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    r = next(iter(views.values()))
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"The dashboard with {r['nodes']:,} simulated nodes ({r['tiles']:,} GPU tiles) in"
            " headless Chromium (Debian package, driven by Playwright), while the",
            "simulated agents of `tests/bench/swarm.py` send one sample per node per",
            "second through real agent websockets to one Daphne, and the page receives",
            "them on `/ws/telemetry/`. PostgreSQL, Redis, Daphne, agents and Chromium share",
            "the machine. Method: `tests/bench/ui.py`. Main-thread time is Chrome DevTools",
            "Protocol `Performance.getMetrics` (TaskDuration and its parts) read before and",
            f"after a {args.seconds:.0f} s window, per second of that window.",
            "",
            "Columns: the dashboard as shipped, subscribed to the grid view (compact",
            "tiles, only those that changed, at most every 0.5 s: apps/telemetry/grid.py),",
            "and, for comparison, the same page with its subscription rewritten to the",
            "full view (every sample as the agent sent it, as before the grid view),",
            "one after the other against the same agents and the same Daphne.",
            "",
            f"Machine: {machine()}.  ",
            f"Command: `{command}`.  ",
            f"Date: {time.strftime('%Y-%m-%d')}.",
            "",
            table(views),
            "",
            verdict(views),
            "",
        ]
    )


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace only our section (up to the next `## `); read right before writing,
    since other benchmarks write their own sections of the same file."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated.rstrip("\n") + "\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.ui", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs per node")
    parser.add_argument("--seconds", type=float, default=10, help="measured window")
    parser.add_argument("--warmup", type=float, default=5, help="streaming before the page opens")
    parser.add_argument("--settle", type=float, default=5, help="seconds after first render")
    parser.add_argument(
        "--views",
        type=lambda text: text.split(","),
        default=["grid", "full"],
        help="comma-separated: grid (shipped), full (every sample, for comparison)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 20 nodes, 3 s")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="hangar_bench_ui", help="dropped and recreated")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.seconds, args.warmup, args.settle, args.no_docs = 20, 3, 2, 1, True
    if not args.views or set(args.views) - set(VIEW_TITLES):
        parser.error(f"--views: a comma-separated list of {', '.join(VIEW_TITLES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = " ".join(["python -m tests.bench.ui", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-ui-"))
    try:
        print(f"preparing database {args.database} and Redis {args.redis_url} ...", flush=True)
        env = prepare_environment(args, workdir)
        fixtures = create_fixtures(args.nodes)
        print(f"{args.nodes} nodes: connecting, then the dashboard ...", flush=True)
        result = measure(args, env, fixtures, workdir)
    except KeyboardInterrupt:
        print(f"interrupted; every process started was stopped; logs in {workdir}", file=sys.stderr)
        return 130
    print(table(result))
    print(verdict(result))
    if not args.no_docs:
        write_docs(section(result, args, command))
        print(f"wrote the section {SECTION!r} of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
