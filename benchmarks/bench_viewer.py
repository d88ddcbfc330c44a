"""The viewer's time to a sharp screen: the old viewer.js against the new, in one run (issue 17).

Run from the repository root::

    .venv/bin/python benchmarks/bench_viewer.py [--baseline REV] [--rounds 3]
        [--sizes 8000x6000,40000x30000] [--viewport 1920x1080] [--pan-latency 150] [--no-write]

For each slide (the demo's 8000 x 6000 synthetic SVS and the 40k x 30k one, generated and
converted once into ``benchmarks/.data/`` like the other benchmarks), ``tileserver serve``
runs over HTTPS with authentication on; a pathologist logs in with a one-time loopback login
link, and headless Debian Chromium (the tests' launch) opens ``/view/ID`` with a fresh browser
cache per run. The old viewer is ``REV``'s ``viewer.js`` (default: the last commit before the
speed work) with an empty ``firstview.js`` (it had no first-view prefetch), the new one the
working tree's: both are served to the page over the same URLs (``serve_scripts``), so the
server, the page and OpenSeadragon are the same.
A first run (not counted) warms the server's caches; then rounds alternate which viewer goes
first. Each run, timed in the page:

1. navigation -> the first sharp screen (whole slide): every tile of the level the view needs
   on screen, drawn by OpenSeadragon (its image fully loaded, no animation running) or, in the
   new viewer, painted before OpenSeadragon runs (firstview.js: ``#osd[data-first-view]`` is
   "painted"); and, for information, navigation -> OpenSeadragon's own view sharp (the viewer
   answers the mouse and keys) and -> the page's scripts run (DOMContentLoaded; the browser
   cache is cold in every run, so the page and OpenSeadragon's script load first in each);
2. the 10x preset (key 4), then the 40x preset (key 6): key -> sharp; tiles requested, and
   those of a level finer than the one the magnification needs (the coarsest level with at most
   one pixel per screen pixel);
3. a fast pan at 40x under Chromium's network throttling (``--pan-latency`` ms a request):
   six quick drags across the slide, then last mouse-up -> sharp; tile requests sent,
   completed and cancelled (``net::ERR_ABORTED``).

"Sharp" is read from the OpenSeadragon instance (captured by a script the benchmark adds to
the page, for both viewers alike) and, for the painting before it, from the attribute
firstview.js sets once its last tile is drawn (tests/viewer/test_viewer_speed.py holds that the
painting is OpenSeadragon's picture). Reported: medians
over the rounds, new/old ratios; targets (issue 17): the first view and each preset <= 0.5x the
old time, no tile finer than displayed. Writes ``benchmarks/results/viewer.json`` and the
``viewer`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_server import convert_once, ensure_slide, git_state, parse_size
from https_ours import CLI, COLLECTION, bench_token, ours_https

from tileserver.bench import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
OUT = HERE / "results" / "viewer.json"
VIEWER_JS = ROOT / "tileserver" / "server" / "static" / "js" / "viewer.js"
BASELINE = "4ddef86"  # the last commit that changed viewer.js before the speed work
CHROMIUM = os.environ.get("TILESERVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [  # as tests/viewer/conftest.py launches it
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER = "viewer-bench"
OBJECTIVE = 40  # sample_data's slides: AppMag 40, 0.25 µm/px
PRESETS = {10: "4", 40: "6"}
TILE = re.compile(r"/deepzoom/[0-9a-f]{32}_files/(\d+)/\d+_\d+\.\w+$")
TARGET = 0.5
WAIT_MS = 30_000
SWEEP = 6  # drags in the fast pan  # a view that is not sharp by then counts as a failure

# Added to every page before its scripts: captures the OpenSeadragon viewer (the first
# OpenSeadragon.Viewer made; the overview map's Navigator calls the original), records the
# first frame at which the opened image is sharp, and waits for the next sharp frame.
PROBE = """
(() => {
  const bench = (window.__bench = { viewer: null, firstSharp: null, viewerSharp: null,
                                    scripts: null });
  document.addEventListener("DOMContentLoaded", () => {
    bench.scripts = performance.now(); // the page's scripts have run: the viewer's part begins
  });
  // Right after OpenSeadragon's script has run (a script's load event fires before the next
  // deferred script runs), whenever the viewer makes its viewer.
  document.addEventListener("load", (event) => {
    const src = (event.target && event.target.src) || "";
    if (!src.endsWith("/openseadragon.min.js") || typeof OpenSeadragon === "undefined") return;
    const Original = OpenSeadragon.Viewer;
    OpenSeadragon.Viewer = function (options) {
      OpenSeadragon.Viewer = Original;
      bench.viewer = new Original(options);
      return bench.viewer;
    };
  }, true);
  bench.state = () => {
    const v = bench.viewer;
    if (!v || v.world.getItemCount() === 0) return null;
    const item = v.world.getItemAt(0);
    return { zoom: v.viewport.getZoom(true), sharp: !v.isAnimating() && item.getFullyLoaded() };
  };
  // Checked from the second frame on: OpenSeadragon must have updated once after the action
  // (a jump changes the zoom at once, while "fully loaded" still describes the old view).
  bench.untilSharp = (since, changedFrom, limit) => new Promise((resolve) => {
    let frames = 0;
    const frame = () => {
      frames += 1;
      const s = bench.state();
      const moved = changedFrom === null || (s && Math.abs(s.zoom / changedFrom - 1) > 1e-9);
      if (frames >= 2 && s && s.sharp && moved) resolve(performance.now() - since);
      else if (performance.now() - since > limit) resolve(null);
      else requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });
  // Since navigation started: the first frame with the whole view sharp on screen, and the
  // first at which OpenSeadragon's own view is.
  const watch = () => {
    const s = bench.state();
    const osd = document.getElementById("osd");
    const painted = osd && osd.dataset.firstView === "painted";
    const now = performance.now();
    if (bench.firstSharp === null && ((s && s.sharp) || painted)) bench.firstSharp = now;
    if (s && s.sharp) bench.viewerSharp = now;
    else requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
})();
"""

# Presses a preset key in the page and times it there: key -> the next sharp frame at a new zoom.
PRESS = """([key, limit]) => {
  const before = window.__bench.state().zoom;
  const since = performance.now();
  document.dispatchEvent(new KeyboardEvent("keydown", { key, bubbles: true }));
  return window.__bench.untilSharp(since, before, limit);
}"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Requests:
    """Tile requests by phase: started, completed, cancelled, and their levels."""

    phase: str = "open"
    started: dict[str, list[int]] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    aborted: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", self._request)
        page.on("requestfinished", self._finished)
        page.on("requestfailed", self._failed)

    def _request(self, request: Any) -> None:
        found = TILE.search(request.url.split("?")[0])
        if found:
            self.started.setdefault(self.phase, []).append(int(found.group(1)))

    def _finished(self, request: Any) -> None:
        if TILE.search(request.url.split("?")[0]):
            self.completed[self.phase] = self.completed.get(self.phase, 0) + 1

    def _failed(self, request: Any) -> None:
        if not TILE.search(request.url.split("?")[0]):
            return
        if "ERR_ABORTED" in (request.failure or ""):
            self.aborted[self.phase] = self.aborted.get(self.phase, 0) + 1
        else:
            self.failed.append(f"{request.failure}: {request.url}")


def needed_level(max_level: int, power: float) -> int:
    """The coarsest DeepZoom level with at most one pixel per screen pixel at ``power``."""
    return max_level - math.floor(math.log2(OBJECTIVE / power) + 1e-9)


def one_run(
    browser: Any,
    base: str,
    storage: dict[str, Any],
    slide_id: str,
    scripts: dict[str, str],
    args: Any,
) -> dict[str, Any]:
    """One viewer on one slide in a fresh browser context (cold browser cache)."""
    width, height = args.viewport
    context = browser.new_context(
        base_url=base,
        ignore_https_errors=True,
        viewport={"width": width, "height": height},
        storage_state=storage,
    )
    context.set_default_timeout(WAIT_MS)
    try:
        context.add_init_script(PROBE)
        page = context.new_page()
        serve_scripts(page, scripts)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests = Requests()
        requests.attach(page)
        page.goto(f"/view/{slide_id}")
        deadline = time.monotonic() + WAIT_MS / 1000
        while page.evaluate("window.__bench.viewerSharp") is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"never sharp after opening: {errors or 'no page error'}")
            page.wait_for_timeout(20)
        first = float(page.evaluate("window.__bench.firstSharp"))
        viewer_sharp = float(page.evaluate("window.__bench.viewerSharp"))
        scripts = float(page.evaluate("window.__bench.scripts"))
        max_level = int(page.evaluate("window.__bench.viewer.world.getItemAt(0).source.maxLevel"))
        page.wait_for_timeout(300)  # stragglers counted with the opening
        run: dict[str, Any] = {
            "first_sharp_ms": round(first, 1),
            "viewer_sharp_ms": round(viewer_sharp, 1),
            "scripts_ms": round(scripts, 1),
            "presets": {},
        }
        for power, key in PRESETS.items():
            requests.phase = f"{power}x"
            took = page.evaluate(PRESS, [key, WAIT_MS])
            if took is None:
                raise RuntimeError(f"{power}x: never sharp within {WAIT_MS} ms")
            page.wait_for_timeout(300)
            levels = requests.started.get(requests.phase, [])
            needed = needed_level(max_level, power)
            run["presets"][f"{power}x"] = {
                "sharp_ms": round(float(took), 1),
                "tiles": len(levels),
                "finer_tiles": sum(1 for level in levels if level > needed),
                "level": needed,
            }
        run["pan"] = fast_pan(page, requests, args.pan_latency)
        if requests.failed or errors:
            raise RuntimeError(f"failures: {(requests.failed + errors)[:5]}")
        return run
    finally:
        context.close()


def serve_scripts(page: Any, scripts: dict[str, str]) -> None:
    """The page gets ``scripts[name]`` as /static/js/NAME. Through the DevTools protocol's
    Fetch domain with those URL patterns only, not ``page.route``: a route makes Playwright
    hold every request of the page (each tile too) for a round trip to its driver."""
    cdp = page.context.new_cdp_session(page)
    bodies = {name: base64.b64encode(text.encode()).decode() for name, text in scripts.items()}
    headers = [{"name": "Content-Type", "value": "text/javascript; charset=utf-8"}]

    def paused(event: dict[str, Any]) -> None:
        body = bodies[event["request"]["url"].rsplit("/", 1)[-1]]
        fulfil = {"requestId": event["requestId"], "responseCode": 200, "body": body}
        cdp.send("Fetch.fulfillRequest", {**fulfil, "responseHeaders": headers})

    cdp.on("Fetch.requestPaused", paused)
    patterns = [{"urlPattern": f"*/static/js/{name}"} for name in scripts]
    cdp.send("Fetch.enable", {"patterns": patterns})


def fast_pan(page: Any, requests: Requests, latency: float) -> dict[str, Any]:
    """Quick drags at 40x over a throttled network, then until sharp."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    throttle = {"offline": False, "latency": latency, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
    box = page.locator("#osd").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    dx, dy = box["width"] * 0.4, box["height"] * 0.25
    requests.phase = "pan"
    for _ in range(SWEEP):  # a sweep: right then down across the slide, a drag every ~0.1 s
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - dx, cy - dy, steps=4)
        page.mouse.up()
        page.wait_for_timeout(60)
    took = page.evaluate(
        "(limit) => window.__bench.untilSharp(performance.now(), null, limit)", WAIT_MS
    )
    if took is None:
        raise RuntimeError(f"pan: never sharp within {WAIT_MS} ms")
    page.wait_for_timeout(300)
    return {
        "sharp_ms": round(float(took), 1),
        "started": len(requests.started.get("pan", [])),
        "completed": requests.completed.get("pan", 0),
        "cancelled": requests.aborted.get("pan", 0),
        "latency_ms": latency,
    }


def cli(home: Path, *args: str) -> str:
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tileserver {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ensure_user(home: Path) -> None:
    """The benchmark's pathologist, granted the benchmark's collection (made once)."""
    listed = cli(home, "users", "list")
    if not any(line.split()[:1] == [USER] for line in listed.splitlines()):
        cli(home, "users", "add", USER, "--role", "pathologist")
    cli(home, "users", "grant", USER, COLLECTION)


def log_in(browser: Any, home: Path, base: str) -> dict[str, Any]:
    """A session from a one-time loopback login link, as Playwright storage state."""
    link = cli(home, "users", "login-link", USER, "--url", base).strip().splitlines()[-1]
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(link)
        page.wait_for_url(re.compile(r"://[^/]+/($|\?|#)"))
        state: dict[str, Any] = context.storage_state()
        return state
    finally:
        context.close()


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one viewer on one slide."""

    def pick(*path: str) -> list[float]:
        out = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            out.append(float(value))
        return out

    summary: dict[str, Any] = {
        "first_sharp_ms": median(pick("first_sharp_ms")),
        "viewer_sharp_ms": median(pick("viewer_sharp_ms")),
        "scripts_ms": median(pick("scripts_ms")),
    }
    for power in PRESETS:
        name = f"{power}x"
        summary[name] = {
            key: median(pick("presets", name, key)) for key in ("sharp_ms", "tiles", "finer_tiles")
        }
    summary["pan"] = {
        key: median(pick("pan", key)) for key in ("sharp_ms", "started", "completed", "cancelled")
    }
    return summary


def ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 2) if new is not None and old else None


def verdict(target: str, old: float | None, new: float | None) -> str:
    if target == "ratio":
        r = ratio(new, old)
        return f"<= {TARGET}x: {'pass' if r is not None and r <= TARGET else 'fail'}"
    if target == "zero":
        return f"0: {'pass' if new == 0 else 'fail'}"
    return ""


def rows(slide: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One table row per measure: (label, path into the summary, target)."""
    measures: list[tuple[str, tuple[str, ...], str]] = [
        ("open -> sharp on screen (ms)", ("first_sharp_ms",), "ratio"),
        ("open -> OpenSeadragon's view sharp (ms)", ("viewer_sharp_ms",), ""),
        ("open -> page scripts run (ms)", ("scripts_ms",), ""),
    ]
    for power in PRESETS:
        name = f"{power}x"
        measures += [
            (f"{name} preset -> sharp (ms)", (name, "sharp_ms"), "ratio"),
            (f"{name} tiles requested", (name, "tiles"), ""),
            (f"{name} tiles finer than needed", (name, "finer_tiles"), "zero"),
        ]
    measures += [
        ("fast pan: last drag -> sharp (ms)", ("pan", "sharp_ms"), ""),
        ("fast pan: tile requests sent", ("pan", "started"), ""),
        ("fast pan: completed", ("pan", "completed"), ""),
        ("fast pan: cancelled (ERR_ABORTED)", ("pan", "cancelled"), ""),
    ]
    out = []
    for label, path, target in measures:
        a: Any = old
        b: Any = new
        for key in path:
            a, b = a[key], b[key]
        r = ratio(b, a)
        out.append(
            f"| {slide} | {label} | {a} | {b} | {'' if r is None else r} "
            f"| {verdict(target, a, b)} |"
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "## Viewer: time to a sharp screen, old viewer against new (`benchmarks/bench_viewer.py`)",
        "",
        f"Command: `{results['command']}`  ",
        f"Tree: {results['tree']}; old viewer: `{results['baseline']}`'s viewer.js "
        "and no first-view prefetch; "
        f"{results['rounds']} rounds (alternating which viewer goes first) after a warm-up run, "
        f"medians; viewport {results['viewport']}; Debian Chromium headless; the server over "
        "HTTPS with authentication on loopback; the pan under Chromium's throttling "
        f"({results['pan_latency_ms']:g} ms a request); {results['seconds']:g} s in all.",
        "",
        "| slide | measure | old | new | new/old | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for slide, by in results["slides"].items():
        lines += rows(slide, by["old"]["summary"], by["new"]["summary"])
    start, end = results["load"]["start"], results["load"]["end"]
    lines += [
        "",
        f"Machine: {results['machine']['CPU']}, {results['machine']['cores']} cores; load average "
        f"{start:.1f} at the start, {end:.1f} at the end (the browser, the server and whatever "
        "else runs share the cores). Per-run figures: `benchmarks/results/viewer.json`.",
        "",
        'Reading it: "open" starts with a cold browser cache (the page, its scripts and '
        "OpenSeadragon are fetched too, the same page for both viewers: only viewer.js differs,"
        " and the new one's firstview.js asks for the first view's tiles while the rest of the "
        "page loads and paints them where OpenSeadragon will draw them; OpenSeadragon starts "
        'once that painting is on screen); "page scripts run" is DOMContentLoaded (every script '
        "of the page has run). The new viewer opens the slide from the facts and descriptor the "
        "page carries, the old one asks the API first; the new one's first view fetches only the "
        "level it displays, the old one coarser levels too (a blurry picture first): sharp is "
        "the same for both, every tile of the level drawn. A preset's time is the key press to "
        "the first sharp frame (the new viewer jumps, the old one animates for 0.45 s); a "
        "preset already covered by the whole-slide view's tiles costs no request. \"Finer than "
        'needed": tiles of a level finer than the coarsest with at most one pixel per screen '
        "pixel (the old viewer fetched the next finer level on every preset landing on a "
        "pyramid level). After the tiles are asked for at once, the first view and the 40x "
        "preset wait on the server's tile latency through Chromium's 6 HTTP/1.1 connections (no"
        " HTTP/2 on aiohttp: docs/viewer.md). A cancelled request still in Chromium's queue "
        "costs nothing; one already on the wire closes its connection.",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help="the old viewer.js's revision")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="8000x6000,40000x30000", help="synthetic slides, WxH,...")
    p.add_argument("--viewport", type=parse_size, default=(1920, 1080), metavar="WxH")
    p.add_argument("--pan-latency", type=float, default=150.0, help="ms a request, for the pan")
    p.add_argument("--no-write", action="store_true", help="print, do not write results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    old_js = subprocess.run(
        ["git", "show", f"{args.baseline}:tileserver/server/static/js/viewer.js"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # The old viewer had no first-view prefetch: its page gets an empty firstview.js.
    scripts = {
        "old": {"viewer.js": old_js, "firstview.js": ""},
        "new": {"viewer.js": VIEWER_JS.read_text()},
    }
    results: dict[str, Any] = {
        "command": ".venv/bin/python benchmarks/bench_viewer.py "
        + shlex.join(argv or sys.argv[1:]),
        "tree": git_state(),
        "baseline": args.baseline,
        "rounds": args.rounds,
        "viewport": f"{args.viewport[0]}x{args.viewport[1]}",
        "pan_latency_ms": args.pan_latency,
        "machine": report.machine_facts(),
        "slides": {},
    }
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with chromium() as browser:
        for size in args.sizes.split(","):
            slide = ensure_slide(parse_size(size))
            stores, home, slide_id = convert_once(slide)
            token = bench_token(home, [slide_id], name="bench-viewer")
            ensure_user(home)
            runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            with ours_https(stores, home, slide_id, token) as server:
                base = server.url.split("/deepzoom/")[0]
                storage = log_in(browser, home, base)
                # Not counted: fills the server's caches, so neither viewer meets them cold.
                one_run(browser, base, storage, slide_id, scripts["new"], args)
                for round_ in range(args.rounds):
                    order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
                    for name in order:
                        run = one_run(browser, base, storage, slide_id, scripts[name], args)
                        runs[name].append(run)
                        p = run["presets"]
                        log(
                            f"{size} round {round_ + 1} {name}: open {run['first_sharp_ms']} ms, "
                            f"10x {p['10x']['sharp_ms']} ms ({p['10x']['tiles']} tiles, "
                            f"{p['10x']['finer_tiles']} finer), 40x {p['40x']['sharp_ms']} ms "
                            f"({p['40x']['tiles']} tiles), pan {run['pan']}"
                        )
            results["slides"][size] = {
                name: {"runs": runs[name], "summary": summarise(runs[name])} for name in runs
            }
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load"] = {"start": load_start, "end": os.getloadavg()[0]}
    text = markdown(results)
    print(text)
    if not args.no_write:
        report.write_json(results, OUT)
        RESULTS.write_text(report.replace_section(RESULTS.read_text(), "viewer", text))
        log(f"wrote {OUT.relative_to(ROOT)} and the viewer section of {RESULTS.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
