"""Server benchmark results: machine facts, Markdown tables with ratios, plots, sections.

``results`` is the ``benchmarks/results/server.json`` document: ``servers`` maps a server
name (``ours``, ``static``, ``baseline``, ``nginx``) to ``{"url", "note", "runs"}``, each run
being one pass as ``tileserver.bench.load.summarize`` reports it plus trace, concurrency, pass.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ORDER = ("ours", "static", "nginx", "baseline")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def machine_facts() -> dict[str, str]:
    def first(path: str, key: str) -> str | None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    mem = first("/proc/meminfo", "MemTotal")

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return {
        "CPU": first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} logical ({usable} usable)",
        "RAM": _fmt_bytes(int(mem.split()[0]) * 1024) if mem else "unknown",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "OpenSlide": f"openslide-python {version('openslide-python')}, "
        f"openslide-bin {version('openslide-bin')}",
        "Pillow": version("pillow"),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def load_now() -> str:
    """How busy the shared machine is: the 1-minute load average and, where Linux reports
    it, CPU pressure (share of the last 10 s some task waited for a core)."""
    text = f"load {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores, shared)"
    try:
        with open("/proc/pressure/cpu") as f:
            text += f", CPU pressure avg10 {f.readline().split()[1].split('=')[1]} %"
    except OSError:
        pass
    return text


def replace_section(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``.

    The markers are appended at the end when absent; everything else stays byte for byte.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"


def find_run(
    results: dict[str, Any], server: str, trace: str, concurrency: int, pass_: str
) -> dict[str, Any] | None:
    runs: list[dict[str, Any]] = results["servers"].get(server, {}).get("runs", [])
    for r in runs:
        if (r["trace"], r["concurrency"], r["pass"]) == (trace, concurrency, pass_):
            return r
    return None


def _servers(results: dict[str, Any]) -> list[str]:
    return sorted(results["servers"], key=lambda s: ORDER.index(s) if s in ORDER else 99)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _get(run: dict[str, Any] | None, *keys: str) -> float | None:
    value: Any = run
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value if isinstance(value, int | float) else None


def trace_table(results: dict[str, Any], trace: str) -> str:
    rows = [
        "| server | c | cold tiles/s | warm tiles/s | cold p50 / p99 ms | warm p50 / p99 ms | "
        "warm max ms | warm viewport p50 / p95 ms | client CPU (warm) | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in _servers(results):
        for c in results["settings"]["concurrency"]:
            cold = find_run(results, server, trace, c, "cold")
            warm = find_run(results, server, trace, c, "warm")
            if cold is None and warm is None:
                continue
            reqs = sum(int(_get(r, "requests") or 0) for r in (cold, warm))
            errs = sum(int(_get(r, "errors") or 0) for r in (cold, warm))
            rows.append(
                f"| {server} | {c} | {_num(_get(cold, 'tiles_per_s'))} | "
                f"{_num(_get(warm, 'tiles_per_s'))} | "
                f"{_num(_get(cold, 'latency_ms', 'p50'), 1)} / "
                f"{_num(_get(cold, 'latency_ms', 'p99'), 1)} | "
                f"{_num(_get(warm, 'latency_ms', 'p50'), 1)} / "
                f"{_num(_get(warm, 'latency_ms', 'p99'), 1)} | "
                f"{_num(_get(warm, 'latency_ms', 'max'), 1)} | "
                f"{_num(_get(warm, 'viewport_ms', 'p50'))} / "
                f"{_num(_get(warm, 'viewport_ms', 'p95'))} | "
                f"{_pct(_get(warm, 'client_cpu_fraction'))} | {reqs} | {errs} |"
            )
    return "\n".join(rows)


def ratio_table(results: dict[str, Any], subject: str = "ours", warm_ref: str = "static") -> str:
    """``subject``'s throughput over the comparators', per trace and concurrency."""
    rows = [
        f"| trace | c | {subject}/{warm_ref} warm tiles/s | {subject}/baseline cold tiles/s |",
        "|---|---:|---:|---:|",
    ]
    marked = False
    for trace in results["settings"]["traces"]:
        for c in results["settings"]["concurrency"]:
            tp = {
                (s, p): _get(find_run(results, s, trace, c, p), "tiles_per_s")
                for s in {subject, warm_ref, "baseline"}
                for p in ("cold", "warm")
            }
            first = _get(find_run(results, subject, trace, c, "cold"), "first_request_fraction")
            mark = " †" if first is not None and first < 0.99 else ""
            marked = marked or bool(mark)
            rows.append(
                f"| {trace} | {c} | {_ratio(tp[subject, 'warm'], tp[warm_ref, 'warm'])} | "
                f"{_ratio(tp[subject, 'cold'], tp['baseline', 'cold'])}{mark} |"
            )
    if marked:
        possessive = "'" if subject.endswith("s") else "'s"
        rows += [
            "",
            f"† {subject}{possessive} cold pass asked for tiles it had already served in this "
            "run (the server was not restarted between cells), so it was not fully cold.",
        ]
    return "\n".join(rows)


def p99_table(results: dict[str, Any], concurrency: int = 8) -> str:
    servers = _servers(results)
    rows = [
        "| trace | " + " | ".join(f"{s} cold / warm" for s in servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    for trace in results["settings"]["traces"]:
        cells = []
        for s in servers:
            cold, warm = (find_run(results, s, trace, concurrency, p) for p in ("cold", "warm"))
            cells.append(
                f"{_num(_get(cold, 'latency_ms', 'p99'), 1)} / "
                f"{_num(_get(warm, 'latency_ms', 'p99'), 1)}"
            )
        rows.append(f"| {trace} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown(results: dict[str, Any], images: Sequence[str] = ()) -> str:
    """The ``server`` section of RESULTS.md."""
    settings = results["settings"]
    slide = results["slide"]
    lines = [
        "## Tile serving (`benchmarks/bench_server.py`)",
        "",
        f"Slide: `{slide['file']}`, {slide['width']} x {slide['height']} "
        f"({_fmt_bytes(slide['bytes'])}). Traces: "
        + ", ".join(f"`{t}`" for t in settings["traces"])
        + f"; concurrency {', '.join(map(str, settings['concurrency']))}; each pass capped at "
        f"{settings['max_requests']} requests and {settings['max_seconds']:g} s. Cold = first "
        "pass on a freshly started server (comparators are restarted for every trace x "
        "concurrency cell; the OS page cache stays warm), warm = the same tiles again. "
        "Latencies are per request (send to last byte); viewport = time until every new tile "
        "of a 1920x1080 viewport has arrived. Concurrency c: c viewer tasks take the trace's "
        "viewports in order and issue each one's tiles at once, at most c requests in flight. "
        "Client and servers share this machine: 'client CPU' is the load client's CPU time "
        "over wall time; near 100 % the client, not the server, sets the pace.",
        "",
        "Reproduce:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        "Machine (last run):",
        "",
        *(f"- {k}: {v}" for k, v in results["machine"].items()),
        "",
        "Servers:",
        "",
        *(
            f"- `{s}`: {results['servers'][s].get('note', '')} ({results['servers'][s]['url']})"
            for s in _servers(results)
        ),
        "",
    ]
    lines += ["### Ours against the comparators", ""]
    if "ours" in results["servers"]:
        lines += [ratio_table(results, "ours"), ""]
    else:
        lines += [
            "_Ours: not measured in this run (no `--ours URL`)._ For scale, the static floor "
            "against the per-request baseline:",
            "",
            ratio_table(results, "static", warm_ref="baseline"),
            "",
        ]
    if 8 in settings["concurrency"]:
        lines += ["p99 latency (ms) at concurrency 8:", "", p99_table(results, 8), ""]
    for trace in settings["traces"]:
        lines += [f"### Trace `{trace}`", "", trace_table(results, trace), ""]
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines).rstrip() + "\n"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def plot(results: dict[str, Any], out_dir: Path, concurrency: int = 8) -> list[Path]:
    """Latency CDF per server (at ``concurrency``) and throughput vs concurrency, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    traces = results["settings"]["traces"]
    servers = _servers(results)
    colours = {s: f"C{i}" for i, s in enumerate(servers)}
    styles = {"cold": "-", "warm": "--"}
    paths = []

    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4.5), squeeze=False)
    for ax, trace in zip(axes[0], traces, strict=True):
        for s in servers:
            for p in ("cold", "warm"):
                run = find_run(results, s, trace, concurrency, p)
                if run and run.get("latency_cdf_ms"):
                    cdf = run["latency_cdf_ms"]
                    ys = [i / (len(cdf) - 1) for i in range(len(cdf))]
                    ax.plot(cdf, ys, styles[p], color=colours[s], label=f"{s} {p}")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{trace}: latency CDF at concurrency {concurrency}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "server-latency-cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4.5), squeeze=False)
    for ax, trace in zip(axes[0], traces, strict=True):
        for s in servers:
            for p in ("cold", "warm"):
                pts = [
                    (c, _get(find_run(results, s, trace, c, p), "tiles_per_s"))
                    for c in results["settings"]["concurrency"]
                ]
                pts = [(c, t) for c, t in pts if t is not None]
                if pts:
                    xs, tps = zip(*pts, strict=True)
                    ax.plot(xs, tps, styles[p], marker="o", color=colours[s], label=f"{s} {p}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("tiles/s (log)")
        ax.set_title(f"{trace}: throughput")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "server-throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
